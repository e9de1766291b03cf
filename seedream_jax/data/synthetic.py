"""The synthetic bilingual world: the embedded default training data.

Each image is a procedurally drawn scene: 1-4 coloured shapes on a 3x3 grid over a plain
background, optionally with a rendered Chinese or English word in a band of the grid. It is
described by matched Chinese and English captions (short and long) and stored with its
ground-truth scene spec, so that everything a model draws can later be checked exactly.
Scene ``i`` of a world is a pure function of ``(seed, i)``.

A scene may carry a ``Style`` (palette, lighting, texture, composition) that changes how it is
drawn, deterministically; without one (the default world) it is drawn plainly, and
``Style()`` (every attribute at its plain value) draws exactly the same pixels. Styles are
sampled by the ArrayRecord world (``data/synthetic_records.py``), not by ``sample_scene``.

Rendered text always appears quoted in the captions (English "...", Chinese “...”), which is
what routes it to the Glyph-ByT5 branch of the conditioner. The quoted word keeps its own
script in both languages: 'the text "你好"', '文字“HELLO”'.

On disk (``write_dataset``): ``images.npy`` (uint8 [N, S, S, 3], memory-mappable),
``records.jsonl`` (one ``{"captions", "spec"}`` per line) and ``meta.json`` (format version,
config, counts), written last so that a folder with ``meta.json`` is complete.
"""
import collections
import dataclasses
import json
import os
import re
import shutil
import zlib
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from seedream_jax.data import fonts, heldout

FORMAT_VERSION = 3  # 3: held-out (colour, shape) pairs (data/heldout.py) are never drawn

# name: (RGB, Chinese). Pairwise RGB distances >= 119 so colours stay unambiguous after a VAE.
COLOURS = {
    "red": ((220, 30, 30), "红色"), "green": ((30, 160, 50), "绿色"), "blue": ((30, 70, 220), "蓝色"),
    "yellow": ((245, 215, 30), "黄色"), "purple": ((170, 40, 170), "紫色"), "cyan": ((30, 200, 210), "青色"),
    "black": ((20, 20, 20), "黑色"), "white": ((245, 245, 245), "白色"),
}
BACKGROUNDS = {"light gray": ((200, 200, 200), "浅灰色"), "dark gray": ((100, 100, 100), "深灰色"),
               "beige": ((225, 210, 180), "米色")}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "五角星"}
SIZES = {"small": "小的", "large": "大的"}
TEXT_SIZES = {"small": "小号", "large": "大号"}
# 3x3 grid, row-major: name -> (English phrase, Chinese). Cell of POSITIONS[k] = divmod(index, 3).
POSITIONS = {
    "top-left": ("at the top left", "左上角"), "top": ("at the top", "上方"), "top-right": ("at the top right", "右上角"),
    "left": ("on the left", "左侧"), "center": ("in the center", "中间"), "right": ("on the right", "右侧"),
    "bottom-left": ("at the bottom left", "左下角"), "bottom": ("at the bottom", "下方"),
    "bottom-right": ("at the bottom right", "右下角"),
}
# Text occupies one band of the grid: a row (horizontal text) or a column (vertical Chinese).
TEXT_BANDS = {
    "horizontal": {"top": ("at the top", "顶部"), "middle": ("across the middle", "中部"),
                   "bottom": ("at the bottom", "底部")},
    "vertical": {"left": ("on the left", "左侧"), "center": ("down the middle", "中间"),
                 "right": ("on the right", "右侧")},
}
_ZH_TEMPLATE_WORDS = ("背景", "文字", "竖排", "左边", "上面")  # the fixed words of the Chinese templates
COUNTS_EN = {1: "a", 2: "two", 3: "three", 4: "four"}
COUNTS_ZH = {1: "一个", 2: "两个", 3: "三个", 4: "四个"}
WORDS = {
    "zh": ("你好", "中国", "山水", "大", "人", "天", "日月", "学习", "春天", "世界", "花", "龙", "和平", "快乐",
           "北京", "福", "水", "火", "风景", "你好世界", "欢迎光临", "一帆风顺", "明天", "朋友"),
    "en": ("HELLO", "CAT", "SUN", "TEA", "OPEN", "LOVE", "JAX", "ART", "SKY", "DOG", "MOON", "WAVE",
           "TREE", "BOOK", "RAIN", "HI", "GO", "FISH", "MILK", "BIRD"),
}
MAX_OBJECTS = 4
_SHAPE_HALF = {"small": 0.24, "large": 0.42}  # half extent as a fraction of the cell's shorter side
_TEXT_FILL = 0.8       # large text: glyph height as a fraction of the band's thickness
_TEXT_SMALL = 0.6      # small text: fraction of the large size
_TEXT_MARGIN = 0.92    # a word spans at most this fraction of the band's length


@dataclasses.dataclass
class ShapeObject:
    """One shape: ``shape`` in SHAPES, ``colour`` in COLOURS, ``size`` in SIZES, ``position`` in POSITIONS."""
    shape: str
    colour: str
    size: str
    position: str

    @property
    def cell(self) -> Tuple[int, int]:
        """(row, column) of the 3x3 grid, top-left = (0, 0)."""
        return divmod(list(POSITIONS).index(self.position), 3)


@dataclasses.dataclass
class TextItem:
    """A rendered word: ``language`` 'zh'/'en', ``orientation`` 'horizontal'/'vertical', ``position`` a
    band of TEXT_BANDS[orientation], ``size`` in TEXT_SIZES, ``font`` a name of ``fonts.FONTS``."""
    text: str
    language: str
    colour: str
    size: str
    orientation: str
    position: str
    font: str

    @property
    def band(self) -> int:
        """Index of the row (horizontal) or column (vertical) the word occupies."""
        return list(TEXT_BANDS[self.orientation]).index(self.position)

    def covers(self, position: str) -> bool:
        """Whether the grid cell ``position`` lies in this word's band."""
        row, col = divmod(list(POSITIONS).index(position), 3)
        return (row if self.orientation == "horizontal" else col) == self.band


# Style attribute -> value -> (English phrase, Chinese phrase); the first value of each is plain.
STYLES = {
    "palette": {"plain": ("plain colours", "原色"), "pastel": ("pastel colours", "柔和的粉彩色"),
                "muted": ("muted colours", "低饱和度的颜色")},
    "lighting": {"flat": ("flat lighting", "均匀光照"), "warm": ("warm lighting", "暖色光照"),
                 "cool": ("cool lighting", "冷色光照"), "vignette": ("a dark vignette", "四周暗角")},
    "texture": {"none": ("a smooth surface", "光滑表面"), "grain": ("a grainy texture", "颗粒质感"),
                "stripes": ("a striped background", "条纹背景")},
    "composition": {"plain": ("no frame", "无边框"), "framed": ("a frame around the picture", "画面带边框"),
                    "shadow": ("drop shadows under the shapes", "图形带投影")},
}
_PASTEL, _MUTED = 0.45, 0.4                   # blend toward white / mid grey
_LIGHT = {"warm": (1.06, 1.0, 0.86), "cool": (0.88, 0.98, 1.08)}
_VIGNETTE, _GRAIN, _STRIPE = 0.4, 10.0, 0.12  # corner darkening, noise amplitude (grey levels), stripe lift


@dataclasses.dataclass(frozen=True)
class Style:
    """How a scene is drawn: one value of each ``STYLES`` attribute; ``Style()`` draws plainly."""
    palette: str = "plain"
    lighting: str = "flat"
    texture: str = "none"
    composition: str = "plain"

    def validate(self) -> None:
        for name, table in STYLES.items():
            if getattr(self, name) not in table:
                raise ValueError(f"scene spec: unknown style {name} {getattr(self, name)!r}; expected one of "
                                 f"{sorted(table)}")

    @property
    def is_plain(self) -> bool:
        return self == Style()


@dataclasses.dataclass
class Scene:
    """Ground truth of one image: background name, 1-4 objects in distinct cells, optional word,
    optional ``Style`` (None: drawn plainly)."""
    background: str
    objects: List[ShapeObject]
    text: Optional[TextItem] = None
    style: Optional[Style] = None

    def to_dict(self) -> dict:
        """JSON-native dict (strings, lists, None); the ``style`` key only where a style is set."""
        d = dataclasses.asdict(self)
        if self.style is None:
            del d["style"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        """Inverse of ``to_dict``; raises ValueError naming what is wrong with a malformed spec."""
        try:
            scene = cls(d["background"], [ShapeObject(**o) for o in d["objects"]],
                        TextItem(**d["text"]) if d.get("text") else None,
                        Style(**d["style"]) if d.get("style") else None)
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed scene spec ({e}): {d!r}") from e
        scene.validate()
        return scene

    def validate(self) -> None:
        """Raise ValueError if a name is unknown, two objects share a cell or the word covers one."""
        names = [(self.background, BACKGROUNDS, "background")]
        for o in self.objects:
            names += [(o.shape, SHAPES, "shape"), (o.colour, COLOURS, "colour"), (o.size, SIZES, "size"),
                      (o.position, POSITIONS, "position")]
        t = self.text
        if t is not None:
            names += [(t.language, WORDS, "text language"), (t.colour, COLOURS, "text colour"),
                      (t.size, TEXT_SIZES, "text size"), (t.orientation, TEXT_BANDS, "text orientation"),
                      (t.font, fonts.FONTS, "font")]
        for value, table, what in names:
            if value not in table:
                raise ValueError(f"scene spec: unknown {what} {value!r}; expected one of {sorted(table)}")
        if t is not None and t.position not in TEXT_BANDS[t.orientation]:
            raise ValueError(f"scene spec: {t.orientation} text position {t.position!r}; expected one of "
                             f"{sorted(TEXT_BANDS[t.orientation])}")
        if self.style is not None:
            self.style.validate()
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"scene spec: {len(self.objects)} objects, expected 1-{MAX_OBJECTS}")
        if len({o.position for o in self.objects}) != len(self.objects):
            raise ValueError(f"scene spec: two objects share a cell: {[o.position for o in self.objects]}")
        if t is not None and any(t.covers(o.position) for o in self.objects):
            raise ValueError(f"scene spec: the {t.orientation} text band {t.position!r} overlaps an object")


@dataclasses.dataclass(frozen=True)
class SyntheticWorldConfig:
    """A world of ``num_images`` scenes rendered at ``image_size`` x ``image_size`` px.

    max_objects: 1-4 shapes per scene, drawn with ``object_count_weights`` (weights of 1, 2, ...
    objects; () = uniform). text_probability: chance of a rendered word, Chinese with
    zh_text_probability, written vertically (multi-character Chinese only) with
    vertical_text_probability. same_probability: chance that all objects of a multi-object
    scene share shape, colour and size (counting scenes: "three small red circles");
    group_probability: chance that a multi-object scene is instead two groups of identical
    objects ("two red circles and a blue square"). shuffle_objects: list the objects (hence
    name them in the captions) in random order instead of grid (row-major) order. seed.
    """
    num_images: int = 2000
    image_size: int = 64
    max_objects: int = 4
    text_probability: float = 0.4
    zh_text_probability: float = 0.5
    vertical_text_probability: float = 0.2
    same_probability: float = 0.3
    group_probability: float = 0.0
    object_count_weights: Tuple[float, ...] = ()
    shuffle_objects: bool = False
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {self.max_objects}")
        object.__setattr__(self, "object_count_weights", tuple(float(w) for w in self.object_count_weights))
        w = self.object_count_weights
        if w and (len(w) != self.max_objects or min(w) < 0 or sum(w) <= 0):
            raise ValueError(f"object_count_weights {w} must hold max_objects = {self.max_objects} "
                             "non-negative weights (of 1, 2, ... objects) with a positive sum")
        if self.same_probability + self.group_probability > 1:
            raise ValueError(f"same_probability + group_probability must be <= 1, got "
                             f"{self.same_probability} + {self.group_probability}")
        if self.num_images < 1 or self.image_size < 8:
            raise ValueError(f"need num_images >= 1 and image_size >= 8, got {self.num_images}, {self.image_size}")


# ----------------------------------------------------------------------------------- sampling

def visible_colours(background: str) -> List[str]:
    """Object/text colours with enough contrast (RGB distance > 100) against ``background``."""
    bg = np.array(BACKGROUNDS[background][0])
    return [c for c, (rgb, _) in COLOURS.items() if np.linalg.norm(np.array(rgb) - bg) > 100]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _sample_text(rng: np.random.Generator, cfg: SyntheticWorldConfig, colours: List[str]) -> TextItem:
    language = "zh" if rng.random() < cfg.zh_text_probability else "en"
    word = _pick(rng, WORDS[language])
    vertical = language == "zh" and len(word) > 1 and rng.random() < cfg.vertical_text_probability
    orientation = "vertical" if vertical else "horizontal"
    return TextItem(text=word, language=language, colour=_pick(rng, colours), size=_pick(rng, list(TEXT_SIZES)),
                    orientation=orientation, position=_pick(rng, list(TEXT_BANDS[orientation])),
                    font=_pick(rng, fonts.fonts_for(language)))


def sample_scene(rng: np.random.Generator, cfg: SyntheticWorldConfig) -> Scene:
    """Draw a random scene: background, 1..max_objects shapes in distinct cells, maybe a word
    in a band that no shape occupies. No object has a held-out (colour, shape) pair."""
    background = _pick(rng, list(BACKGROUNDS))
    colours = visible_colours(background)
    text = _sample_text(rng, cfg, colours) if rng.random() < cfg.text_probability else None
    free = [p for p in POSITIONS if text is None or not text.covers(p)]
    most = min(cfg.max_objects, len(free))
    if cfg.object_count_weights:
        w = np.asarray(cfg.object_count_weights[:most])
        n = 1 + int(rng.choice(most, p=w / w.sum())) if w.sum() > 0 else 1
    else:
        n = int(rng.integers(1, most + 1))
    cells = sorted(rng.choice(len(free), size=n, replace=False))
    layout = "mixed"
    if n > 1:
        u = rng.random()
        layout = "same" if u < cfg.same_probability else (
            "groups" if u < cfg.same_probability + cfg.group_probability else "mixed")
    # kind k of each object: all one kind ("same"), two kinds ("groups"), or a new kind each
    kinds = {"same": [0] * n, "mixed": list(range(n))}.get(layout)
    if kinds is None:
        first = 1 + int(rng.integers(n - 1))  # objects of the first kind, 1..n-1
        kinds = [int(k) for k in rng.permutation([0] * first + [1] * (n - first))]
    drawn = {}
    for k in sorted(set(kinds)):
        while True:
            shape, colour, size = _pick(rng, list(SHAPES)), _pick(rng, colours), _pick(rng, list(SIZES))
            while heldout.is_heldout(colour, shape):  # reserved for evaluation
                shape, colour = _pick(rng, list(SHAPES)), _pick(rng, colours)
            if layout != "groups" or all((colour, shape) != d[:2] and colour != d[0] for d in drawn.values()):
                break
        drawn[k] = (colour, shape, size)
    objects = [ShapeObject(drawn[k][1], drawn[k][0], drawn[k][2], free[i]) for k, i in zip(kinds, cells)]
    if cfg.shuffle_objects:
        objects = [objects[i] for i in rng.permutation(n)]
    return Scene(background, objects, text)


def scene_at(cfg: SyntheticWorldConfig, index: int) -> Scene:
    """Scene ``index`` of the world ``cfg`` (a pure function of ``(cfg, cfg.seed, index)``)."""
    return sample_scene(np.random.default_rng([cfg.seed, index]), cfg)


# ---------------------------------------------------------------------------------- rendering

def render_scene(scene: Scene, size: Union[int, Tuple[int, int]] = 64, supersample: int = 4) -> np.ndarray:
    """Draw ``scene`` at ``size`` (int or (height, width) px) -> uint8 [H, W, 3].

    Drawn at ``supersample`` times the size and box-filtered down (anti-aliasing). The 3x3
    grid stretches with the aspect ratio; shapes keep their proportions. A ``scene.style``
    recolours (palette), adds a frame, stripes or shadows while drawing, then grain and
    lighting to the pixels; all deterministic (grain is seeded by the scene spec).
    """
    h, w = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    s = supersample
    style = scene.style or Style()
    background = BACKGROUNDS[scene.background][0]
    img = Image.new("RGB", (w * s, h * s), background)
    draw = ImageDraw.Draw(img)
    _draw_backdrop(draw, style, background, w * s, h * s)
    for obj in scene.objects:
        cx, cy, half = object_geometry(obj, h * s, w * s)
        if style.composition == "shadow":
            off = half * 0.18
            _draw_shape(draw, obj.shape, cx + off, cy + off, half, _shade(background, 0.6))
        _draw_shape(draw, obj.shape, cx, cy, half, _recolour(COLOURS[obj.colour][0], style))
    if scene.text is not None:
        _draw_text(draw, scene.text, w * s, h * s, _recolour(COLOURS[scene.text.colour][0], style))
    out = np.asarray(img.reduce(s) if s > 1 else img)
    return out if style.is_plain else _light(out, scene, style)


def text_box(scene: Scene, size: Union[int, Tuple[int, int]] = 64, pad: int = 1,
             supersample: int = 2) -> Tuple[int, int, int, int]:
    """Pixel box (y0, x0, y1, x1), end-exclusive, of the word ``scene.text`` as ``render_scene``
    draws it at ``size``, grown by ``pad`` px and clipped to the image: the word is rendered alone
    on the plain background (``supersample`` times the size; 2 keeps the box within a pixel of
    the 4x rendering at half its cost) and the box bounds every pixel it changed."""
    if scene.text is None:
        raise ValueError("text_box: the scene has no text")
    h, w = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    alone = render_scene(dataclasses.replace(scene, objects=[], style=None), (h, w), supersample)
    ys, xs = np.nonzero(np.any(alone != np.array(BACKGROUNDS[scene.background][0], np.uint8), axis=-1))
    if len(ys) == 0:
        raise ValueError(f"text_box: the word {scene.text.text!r} draws no pixel at {h}x{w}")
    return (max(int(ys.min()) - pad, 0), max(int(xs.min()) - pad, 0),
            min(int(ys.max()) + 1 + pad, h), min(int(xs.max()) + 1 + pad, w))


def object_geometry(obj: ShapeObject, height: float, width: float) -> Tuple[float, float, float]:
    """Where ``obj`` is drawn in an image of ``height`` x ``width`` px: (centre x, centre y, half
    extent), in pixels; the half extent is ``_SHAPE_HALF[size]`` of the cell's shorter side."""
    row, col = obj.cell
    cell_h, cell_w = height / 3.0, width / 3.0
    return (col + 0.5) * cell_w, (row + 0.5) * cell_h, min(cell_h, cell_w) * _SHAPE_HALF[obj.size]


def _shade(rgb, factor: float) -> Tuple[int, int, int]:
    return tuple(int(round(c * factor)) for c in rgb)


def _recolour(rgb, style: Style) -> Tuple[int, int, int]:
    """Object/text colour under the style's palette: pastel blends toward white, muted toward grey."""
    target, amount = {"pastel": (255.0, _PASTEL), "muted": (128.0, _MUTED)}.get(style.palette, (0.0, 0.0))
    return tuple(int(round(c + (target - c) * amount)) for c in rgb)


def _draw_backdrop(draw: ImageDraw.ImageDraw, style: Style, background, width: int, height: int) -> None:
    """Stripes (texture) and a frame (composition) drawn on the background, under the shapes."""
    if style.texture == "stripes":
        lighter = tuple(int(round(c + (255 - c) * _STRIPE)) for c in background)
        step = max(4, min(width, height) // 8)
        for x in range(-height, width, 2 * step):
            draw.polygon([(x, 0), (x + step, 0), (x + step + height, height), (x + height, height)], fill=lighter)
    if style.composition == "framed":
        border = max(1, round(min(width, height) * 0.04))
        draw.rectangle([0, 0, width - 1, height - 1], outline=_shade(background, 0.55), width=border)


def _light(pixels: np.ndarray, scene: Scene, style: Style) -> np.ndarray:
    """Grain (texture) and lighting applied to drawn uint8 [H, W, 3] pixels."""
    x = pixels.astype(np.float32)
    h, w = x.shape[:2]
    if style.texture == "grain":
        seed = zlib.crc32(json.dumps(scene.to_dict(), sort_keys=True).encode("utf-8"))
        x += np.random.default_rng(seed).uniform(-_GRAIN, _GRAIN, size=(h, w, 1)).astype(np.float32)
    if style.lighting in _LIGHT:
        x *= np.asarray(_LIGHT[style.lighting], np.float32)
    elif style.lighting == "vignette":
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        x *= (1.0 - _VIGNETTE * (yy ** 2 + xx ** 2) / 2.0)[..., None].astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _star(cx: float, cy: float, half: float) -> List[Tuple[float, float]]:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, half, half * 0.45)
    return [(cx + r * np.cos(a), cy - r * np.sin(a)) for r, a in zip(radii, angles)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float, rgb) -> None:
    if shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=rgb)
    elif shape == "square":
        k = half * 0.85
        draw.rectangle([cx - k, cy - k, cx + k, cy + k], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half * 0.75), (cx + half, cy + half * 0.75)], fill=rgb)
    elif shape == "star":
        draw.polygon(_star(cx, cy + half * 0.08, half * 1.05), fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_text(draw: ImageDraw.ImageDraw, item: TextItem, width: int, height: int, fill) -> None:
    """Write the word centred in its band, as large as the band allows (then scaled for 'small')."""
    horizontal = item.orientation == "horizontal"
    thickness = (height if horizontal else width) / 3.0
    length = width if horizontal else height
    centre = (item.band + 0.5) * thickness
    px = thickness * _TEXT_FILL
    font = fonts.load_font(item.font, max(1, round(px)))
    extent = font.getlength(item.text) if horizontal else px * len(item.text)
    px = min(px, px * _TEXT_MARGIN * length / max(extent, 1.0)) * (_TEXT_SMALL if item.size == "small" else 1.0)
    px = max(1, round(px))
    font = fonts.load_font(item.font, px)
    stroke = round(px * 0.03)
    if horizontal:
        draw.text((width / 2, centre), item.text, fill=fill, font=font, anchor="mm",
                  stroke_width=stroke, stroke_fill=fill)
        return
    top = height / 2 - px * len(item.text) / 2
    for i, ch in enumerate(item.text):
        draw.text((centre, top + (i + 0.5) * px), ch, fill=fill, font=font, anchor="mm",
                  stroke_width=stroke, stroke_fill=fill)


# ----------------------------------------------------------------------------------- captions

def _join_en(parts: List[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _join_zh(parts: List[str]) -> str:
    return parts[0] if len(parts) == 1 else "、".join(parts[:-1]) + "和" + parts[-1]


def _groups(objects: List[ShapeObject]) -> List[Tuple[ShapeObject, int]]:
    """Identical objects (shape, colour, size) counted, in order of first appearance."""
    counts = collections.Counter((o.shape, o.colour, o.size) for o in objects)
    seen, out = set(), []
    for o in objects:
        key = (o.shape, o.colour, o.size)
        if key not in seen:
            seen.add(key)
            out.append((o, counts[key]))
    return out


def _object_en(o: ShapeObject, n: int = 1) -> str:
    return f"{COUNTS_EN[n]} {o.size} {o.colour} {o.shape}" + ("s" if n > 1 else "")


def _object_zh(o: ShapeObject, n: int = 1) -> str:
    return f"{COUNTS_ZH[n]}{SIZES[o.size]}{COLOURS[o.colour][1]}{SHAPES[o.shape]}"


def _relation(objects: List[ShapeObject]) -> Optional[Tuple[str, str]]:
    """For two distinguishable objects, which is left of (or else above) the other: (en, zh)."""
    if len(objects) != 2:
        return None
    a, b = objects
    if (a.shape, a.colour, a.size) == (b.shape, b.colour, b.size):
        return None
    with_size = (a.shape, a.colour) == (b.shape, b.colour)

    def names(o):
        size_en, size_zh = (f"{o.size} ", SIZES[o.size]) if with_size else ("", "")
        return f"the {size_en}{o.colour} {o.shape}", f"{size_zh}{COLOURS[o.colour][1]}{SHAPES[o.shape]}"
    (ra, ca), (rb, cb) = a.cell, b.cell
    if ca != cb:
        (first_en, first_zh), (second_en, second_zh) = (names(a), names(b)) if ca < cb else (names(b), names(a))
        return (f"{first_en[0].upper()}{first_en[1:]} is to the left of {second_en}.",
                f"{first_zh}在{second_zh}的左边。")
    (first_en, first_zh), (second_en, second_zh) = (names(a), names(b)) if ra < rb else (names(b), names(a))
    return f"{first_en[0].upper()}{first_en[1:]} is above {second_en}.", f"{first_zh}在{second_zh}的上面。"


def captions(scene: Scene) -> Dict[str, Dict[str, str]]:
    """Matched captions ``{"en": {"short", "long"}, "zh": {"short", "long"}}``.

    Short: what is there (identical objects counted) and the quoted word. Long: background,
    each object with its size and position, the word's colour, size and place, and for two
    objects their relation.
    """
    groups, t = _groups(scene.objects), scene.text
    en_short = [_object_en(o, n) for o, n in groups]
    zh_short = [_object_zh(o, n) for o, n in groups]
    if t is not None:
        en_short.append(f'the text "{t.text}"')
        zh_short.append(f"文字“{t.text}”")
    en_long = (f"On a {scene.background} background: "
               + _join_en([f"{_object_en(o)} {POSITIONS[o.position][0]}" for o in scene.objects]) + ".")
    zh_long = (f"{BACKGROUNDS[scene.background][1]}背景上，"
               + "，".join(f"{POSITIONS[o.position][1]}有{_object_zh(o)}" for o in scene.objects) + "。")
    if t is not None:
        band_en, band_zh = TEXT_BANDS[t.orientation][t.position]
        vertical = t.orientation == "vertical"
        glyphs = "characters" if t.language == "zh" else "letters"
        en_long += (f' The text "{t.text}" is written {"vertically " if vertical else ""}'
                    f"in {t.size} {t.colour} {glyphs} {band_en}.")
        zh_long += f"{band_zh}有{TEXT_SIZES[t.size]}{COLOURS[t.colour][1]}的{'竖排' if vertical else ''}文字“{t.text}”。"
    relation = _relation(scene.objects)
    if relation is not None:
        en_long += " " + relation[0]
        zh_long += relation[1]
    return {"en": {"short": _join_en(en_short), "long": en_long}, "zh": {"short": _join_zh(zh_short), "long": zh_long}}


# Font name -> (English description, Chinese description), for text-rendering captions.
FONT_NAMES = {
    "wqy-microhei": ("a sans-serif font", "黑体"), "wqy-microhei-mono": ("a monospaced sans-serif font", "等宽黑体"),
    "dejavu-sans-bold": ("a bold sans-serif font", "粗体无衬线字体"), "dejavu-serif-bold": ("a bold serif font", "粗体衬线字体"),
    "dejavu-sans-mono-bold": ("a bold monospaced font", "粗体等宽字体"),
}


def all_captions(scene: Scene) -> Dict[str, Dict[str, str]]:
    """``captions(scene)`` plus the types ``text`` (where the scene has a word: the quoted word,
    its layout, size, colour and font) and ``style`` (where it has a style: the short caption and
    every style attribute), in both languages; the caption types of ``records.CAPTION_TYPES``."""
    out = captions(scene)
    t = scene.text
    if t is not None:
        band_en, band_zh = TEXT_BANDS[t.orientation][t.position]
        font_en, font_zh = FONT_NAMES[t.font]
        vertical = t.orientation == "vertical"
        glyphs = "characters" if t.language == "zh" else "letters"
        out["en"]["text"] = (f'the text "{t.text}" in {t.size} {t.colour} {glyphs}, written '
                             f'{"vertically" if vertical else "horizontally"} {band_en} in {font_en}')
        out["zh"]["text"] = (f"{band_zh}用{font_zh}{'竖排' if vertical else '横排'}书写的"
                             f"{TEXT_SIZES[t.size]}{COLOURS[t.colour][1]}文字“{t.text}”")
    if scene.style is not None:
        phrases = [STYLES[name][getattr(scene.style, name)] for name in STYLES]
        out["en"]["style"] = out["en"]["short"] + ", in " + _join_en([en for en, _ in phrases])
        out["zh"]["style"] = out["zh"]["short"] + "，" + "，".join(zh for _, zh in phrases)
    return out


_QUOTED_WORD = re.compile('"[^"]*"|“[^”]*”')  # a word in English or Chinese quote marks
_CJK = re.compile("[\u3400-\u9fff\uf900-\ufaff]")  # CJK ideographs (extension A, unified, compatibility)


def caption_language(prompt: str) -> str:
    """'zh' when ``prompt`` holds a CJK ideograph outside its quoted words (English "..." and Chinese
    “...” quotes both set aside; an unclosed quote is not one), else 'en': the language of a world
    caption, whatever the script of the word it quotes ('a red circle and the text "你好"' is
    English, '文字“HELLO”' Chinese)."""
    if not isinstance(prompt, str):
        raise TypeError(f"caption_language: prompt must be a str, got {type(prompt).__name__} {prompt!r}")
    return "zh" if _CJK.search(_QUOTED_WORD.sub("", prompt)) else "en"


def zh_caption_words() -> List[str]:
    """The multi-character Chinese words the captions are built from (colour, background, shape,
    size, position and count names, template words), longest first: whole pieces for a tokenizer
    trained on this world (``train_sentencepiece(..., user_defined_symbols=...)``)."""
    names = [zh for _, zh in COLOURS.values()] + [zh for _, zh in BACKGROUNDS.values()]
    names += [*SHAPES.values(), *SIZES.values(), *TEXT_SIZES.values(), *COUNTS_ZH.values()]
    names += [zh for _, zh in POSITIONS.values()] + [zh for band in TEXT_BANDS.values() for _, zh in band.values()]
    names += list(_ZH_TEMPLATE_WORDS)
    return sorted({w for w in names if len(w) > 1}, key=lambda w: (-len(w), w))


def caption_texts(records: Iterable[dict]) -> List[str]:
    """Every caption of ``records`` (both languages, short and long), e.g. to train a tokenizer."""
    return [c for r in records for by_type in r["captions"].values() for c in by_type.values()]


# ------------------------------------------------------------------------------ dataset on disk

def generate(cfg: SyntheticWorldConfig) -> Iterator[dict]:
    """Yield ``{"image": uint8 [S, S, 3], "captions": ..., "spec": scene dict}`` for scenes 0..N-1."""
    for i in range(cfg.num_images):
        scene = scene_at(cfg, i)
        yield {"image": render_scene(scene, cfg.image_size), "captions": captions(scene), "spec": scene.to_dict()}


def _identity(cfg: SyntheticWorldConfig) -> dict:
    """What meta.json records of the world, as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps({"format_version": FORMAT_VERSION, "config": dataclasses.asdict(cfg)}))


def _counts(specs: List[dict]) -> dict:
    texts = [s["text"] for s in specs if s["text"]]
    return {"images": len(specs),
            "objects_per_image": dict(sorted(collections.Counter(str(len(s["objects"])) for s in specs).items())),
            "text": {"total": len(texts), "zh": sum(t["language"] == "zh" for t in texts),
                     "en": sum(t["language"] == "en" for t in texts),
                     "vertical": sum(t["orientation"] == "vertical" for t in texts)}}


def write_dataset(cfg: SyntheticWorldConfig, out_dir: str) -> bool:
    """Write ``images.npy``, ``records.jsonl`` and ``meta.json`` to ``out_dir``.

    Returns False (writing nothing) when a dataset of the same format version and config is
    already there, True after writing. Raises FileExistsError if ``out_dir`` holds a different
    dataset or other files. Built in ``<out_dir>.partial`` and renamed, so an interrupted run
    never leaves a folder that looks complete.
    """
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            old = json.load(f)
        if {k: old.get(k) for k in ("format_version", "config")} == _identity(cfg):
            return False
        raise FileExistsError(f"{out_dir} holds a synthetic dataset made with format {old.get('format_version')} "
                              f"and config {old.get('config')}, not {_identity(cfg)}; choose another data.dir "
                              "or delete it")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"{out_dir} is not empty and has no meta.json; refusing to write a dataset over it")
    tmp = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    size = cfg.image_size
    images = np.lib.format.open_memmap(os.path.join(tmp, "images.npy"), mode="w+", dtype=np.uint8,
                                       shape=(cfg.num_images, size, size, 3))
    specs = []
    with open(os.path.join(tmp, "records.jsonl"), "w", encoding="utf-8") as f:
        for i, rec in enumerate(generate(cfg)):
            images[i] = rec["image"]
            specs.append(rec["spec"])
            f.write(json.dumps({"captions": rec["captions"], "spec": rec["spec"]}, ensure_ascii=False) + "\n")
    images.flush()
    del images
    meta = {**_identity(cfg), "image_shape": [size, size, 3], "counts": _counts(specs),
            "fonts": {name: os.path.basename(fonts.font_path(name)) for name in fonts.FONTS}}
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked above)
    os.replace(tmp, out_dir)
    return True


def load_dataset(out_dir: str) -> Tuple[np.ndarray, List[dict]]:
    """(images uint8 [N, H, W, 3] memory-mapped read-only, records ``[{"captions", "spec"}]``)."""
    for name in ("meta.json", "images.npy", "records.jsonl"):
        if not os.path.exists(os.path.join(out_dir, name)):
            raise FileNotFoundError(f"synthetic dataset {out_dir}: missing {name} (the 'data' stage or "
                                    "tools/make_synthetic.py writes it)")
    with open(os.path.join(out_dir, "meta.json"), encoding="utf-8") as f:
        version = json.load(f).get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"synthetic dataset {out_dir} has format version {version}, this code reads "
                         f"{FORMAT_VERSION}; delete the folder and rebuild it")
    images = np.load(os.path.join(out_dir, "images.npy"), mmap_mode="r")
    with open(os.path.join(out_dir, "records.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    if len(records) != len(images):
        raise ValueError(f"synthetic dataset {out_dir}: {len(images)} images but {len(records)} records")
    return images, records
