"""Fonts for rendering Chinese and English text (synthetic world, captions under sample grids).

The project's install provides WenQuanYi Micro Hei (Debian ``fonts-wqy-microhei``: CJK and
Latin glyphs) and DejaVu (``fonts-dejavu-core``: Latin). The catalogue below names a few
faces so that rendered words vary in style; the CJK face is required, the others fall back
to it (with a warning) where missing. Faces marked ``extended`` (e.g. the monospaced face in the
same WenQuanYi collection) are drawn only by the extended ArrayRecord world
(``fonts_for(lang, extended=True)``), so the default world keeps its fonts. ``SEEDREAM_CJK_FONT=/path/to/font.ttc`` overrides the
CJK face.
"""
import dataclasses
import functools
import logging
import os
from typing import Dict, Tuple

from PIL import ImageFont

_DEJAVU_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
                "/usr/local/share/fonts", "/Library/Fonts")


@dataclasses.dataclass(frozen=True)
class FontFace:
    """A named face: candidate files (first existing wins), the scripts it can render, the face
    index inside a collection (.ttc), and whether only the extended world uses it."""
    candidates: Tuple[str, ...]
    scripts: Tuple[str, ...]
    index: int = 0
    extended: bool = False


CJK = "wqy-microhei"
FONTS: Dict[str, FontFace] = {
    CJK: FontFace(("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                   "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
                   "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
                   "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"), ("zh", "en")),
    "wqy-microhei-mono": FontFace(("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                                   "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc"), ("zh", "en"), index=1, extended=True),
    "dejavu-sans-bold": FontFace(tuple(f"{d}/DejaVuSans-Bold.ttf" for d in _DEJAVU_DIRS), ("en",)),
    "dejavu-serif-bold": FontFace(tuple(f"{d}/DejaVuSerif-Bold.ttf" for d in _DEJAVU_DIRS), ("en",)),
    "dejavu-sans-mono-bold": FontFace(tuple(f"{d}/DejaVuSansMono-Bold.ttf" for d in _DEJAVU_DIRS), ("en",)),
}


@functools.lru_cache(maxsize=None)
def cjk_font_path() -> str:
    """Path of a font with Chinese and Latin glyphs; raises with install instructions if none."""
    override = os.environ.get("SEEDREAM_CJK_FONT")
    if override:
        if not os.path.exists(override):
            raise FileNotFoundError(f"SEEDREAM_CJK_FONT={override} does not exist")
        return override
    path = next((p for p in FONTS[CJK].candidates if os.path.exists(p)), None)
    if path is None:
        raise FileNotFoundError(
            "no CJK font found (looked for " + ", ".join(FONTS[CJK].candidates) + "): run "
            "`apt-get install fonts-wqy-microhei` (install.sh does) or set SEEDREAM_CJK_FONT=/path/to/cjk/font")
    return path


@functools.lru_cache(maxsize=None)
def font_path(name: str) -> str:
    """Path of the catalogued face ``name``; the CJK font where that face is not installed."""
    if name not in FONTS:
        raise KeyError(f"unknown font {name!r}; known: {sorted(FONTS)}")
    if name == CJK:
        return cjk_font_path()
    path = next((p for p in FONTS[name].candidates if os.path.exists(p)), None)
    if path is None:
        logging.warning("font %s not installed (apt-get install fonts-dejavu-core); using %s",
                        name, cjk_font_path())
        return cjk_font_path()
    return path


def _face_index(name: str) -> int:
    """Face index to open in ``font_path(name)`` (0 where the face fell back to the CJK font)."""
    face = FONTS[name]
    return face.index if font_path(name) in face.candidates else 0


def fonts_for(language: str, extended: bool = False) -> Tuple[str, ...]:
    """Names of the catalogued faces that render ``language`` ("zh" or "en"), in a fixed order;
    ``extended`` adds the faces only the extended world draws."""
    names = tuple(n for n, face in FONTS.items() if language in face.scripts and (extended or not face.extended))
    if not names:
        raise ValueError(f"no font renders language {language!r}; expected 'zh' or 'en'")
    return names


@functools.lru_cache(maxsize=256)
def load_font(name: str, size_px: int) -> ImageFont.FreeTypeFont:
    """The face ``name`` at ``size_px`` pixels (cached: loading a .ttc costs milliseconds)."""
    return ImageFont.truetype(font_path(name), int(size_px), index=_face_index(name))
