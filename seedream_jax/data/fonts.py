"""Font lookup for rendering Chinese / English text (synthetic world, sample-grid captions).

The project's install provides WenQuanYi Micro Hei (Debian ``fonts-wqy-microhei``) for CJK and
DejaVu (``fonts-dejavu-core``) for Latin; ``SEEDREAM_CJK_FONT`` / ``SEEDREAM_LATIN_FONT``
override the paths.
"""
import functools
import os

CJK_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
)
LATIN_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)


def _find(env: str, candidates) -> str | None:
    if os.environ.get(env):
        if not os.path.exists(os.environ[env]):
            raise FileNotFoundError(f"{env}={os.environ[env]} does not exist")
        return os.environ[env]
    return next((p for p in candidates if os.path.exists(p)), None)


@functools.lru_cache(maxsize=None)
def cjk_font_path() -> str:
    """A font with Chinese and Latin glyphs; raises with install instructions if there is none."""
    path = _find("SEEDREAM_CJK_FONT", CJK_CANDIDATES)
    if path is None:
        raise FileNotFoundError("no CJK font found: run `apt-get install fonts-wqy-microhei` (install.sh does) "
                                "or set SEEDREAM_CJK_FONT=/path/to/a/cjk/font.ttc")
    return path


@functools.lru_cache(maxsize=None)
def latin_font_path() -> str:
    """A bold Latin font (DejaVu Sans), falling back to the CJK font."""
    return _find("SEEDREAM_LATIN_FONT", LATIN_CANDIDATES) or cjk_font_path()
