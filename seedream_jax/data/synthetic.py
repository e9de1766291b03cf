"""The synthetic bilingual world: the embedded default training data.

Each image is a procedurally drawn scene of 1-4 coloured shapes on a 3x3 grid, optionally
with a rendered Chinese or English word, described by matched Chinese and English captions
(short and long) and stored with its ground-truth scene spec, so that everything a model
draws can later be checked exactly. Deterministic for a seed.

Rendered text always appears quoted in the captions (English "...", Chinese “...”), which
is what routes it to the Glyph-ByT5 branch of the conditioner.
"""
import dataclasses
import json
import os
import shutil
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from seedream_jax.data import fonts

FORMAT_VERSION = 1

# name: (RGB, Chinese name). Far apart in RGB so colours are unambiguous after a VAE.
COLOURS = {
    "red": ((220, 40, 40), "红色"), "green": ((40, 170, 60), "绿色"), "blue": ((40, 80, 220), "蓝色"),
    "yellow": ((240, 210, 40), "黄色"), "purple": ((150, 60, 190), "紫色"), "orange": ((245, 140, 30), "橙色"),
    "black": ((20, 20, 20), "黑色"), "white": ((245, 245, 245), "白色"),
}
BACKGROUNDS = {"light gray": ((200, 200, 200), "浅灰色"), "dark gray": ((90, 90, 90), "深灰色"),
               "beige": ((225, 210, 180), "米色")}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形"}
SIZES = {"small": ("small", "小的"), "large": ("large", "大的")}
# 3x3 grid cells (row, col) with English and Chinese names.
POSITIONS = {
    (0, 0): ("at the top left", "左上角"), (0, 1): ("at the top", "上方"), (0, 2): ("at the top right", "右上角"),
    (1, 0): ("on the left", "左侧"), (1, 1): ("in the center", "中间"), (1, 2): ("on the right", "右侧"),
    (2, 0): ("at the bottom left", "左下角"), (2, 1): ("at the bottom", "下方"), (2, 2): ("at the bottom right", "右下角"),
}
ROW_NAMES = {0: ("at the top", "顶部"), 1: ("in the middle", "中部"), 2: ("at the bottom", "底部")}
COUNTS_EN = {1: "one", 2: "two", 3: "three", 4: "four"}
COUNTS_ZH = {1: "一个", 2: "两个", 3: "三个", 4: "四个"}
WORDS_ZH = ("你好", "中国", "山水", "大", "人", "天", "日月", "学习", "春天", "世界", "花", "龙", "和平", "快乐")
WORDS_EN = ("HELLO", "CAT", "SUN", "TEA", "OPEN", "LOVE", "JAX", "ART", "SKY", "DOG", "MOON", "STAR")


@dataclasses.dataclass
class ShapeObject:
    shape: str
    colour: str
    size: str
    cell: Tuple[int, int]


@dataclasses.dataclass
class TextItem:
    text: str
    language: str  # "zh" or "en"
    colour: str
    row: int


@dataclasses.dataclass
class Scene:
    background: str
    objects: List[ShapeObject]
    text: Optional[TextItem] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        objs = [ShapeObject(o["shape"], o["colour"], o["size"], tuple(o["cell"])) for o in d["objects"]]
        text = TextItem(**d["text"]) if d.get("text") else None
        return cls(d["background"], objs, text)


@dataclasses.dataclass(frozen=True)
class SyntheticWorldConfig:
    """num_images at image_size x image_size px; max_objects (1-4); text_probability: chance of
    a rendered word; same_probability: chance that all objects share shape, colour and size
    (counting scenes: "three red circles"); seed."""
    num_images: int = 2000
    image_size: int = 64
    max_objects: int = 4
    text_probability: float = 0.4
    same_probability: float = 0.3
    seed: int = 0


def sample_scene(rng: np.random.Generator, cfg: SyntheticWorldConfig) -> Scene:
    """Draw a random scene: background, 1..max_objects shapes in distinct cells, maybe a word."""
    background = str(rng.choice(list(BACKGROUNDS)))
    text = None
    free_rows = [0, 1, 2]
    if rng.random() < cfg.text_probability:
        language = "zh" if rng.random() < 0.5 else "en"
        word = str(rng.choice(WORDS_ZH if language == "zh" else WORDS_EN))
        row = int(rng.integers(0, 3))
        text = TextItem(word, language, str(rng.choice(_visible_colours(background))), row)
        free_rows.remove(row)
    cells = [(r, c) for r in free_rows for c in range(3)]
    n = int(rng.integers(1, min(cfg.max_objects, len(cells)) + 1))
    chosen = [cells[i] for i in rng.choice(len(cells), size=n, replace=False)]
    chosen.sort()
    colours = _visible_colours(background)
    if n > 1 and rng.random() < cfg.same_probability:
        shape, colour, size = str(rng.choice(list(SHAPES))), str(rng.choice(colours)), str(rng.choice(list(SIZES)))
        objects = [ShapeObject(shape, colour, size, cell) for cell in chosen]
    else:
        objects = [ShapeObject(str(rng.choice(list(SHAPES))), str(rng.choice(colours)), str(rng.choice(list(SIZES))), cell)
                   for cell in chosen]
    return Scene(background, objects, text)


def _visible_colours(background: str) -> List[str]:
    """Object colours with enough contrast against the background."""
    bg = np.array(BACKGROUNDS[background][0])
    return [c for c, (rgb, _) in COLOURS.items() if np.abs(np.array(rgb) - bg).sum() > 150]


def render_scene(scene: Scene, size=64, supersample: int = 4) -> np.ndarray:
    """Draw ``scene`` at ``size`` (int or (height, width)) -> uint8 [H, W, 3], anti-aliased."""
    h, w = (size, size) if isinstance(size, int) else size
    s = supersample
    img = Image.new("RGB", (w * s, h * s), BACKGROUNDS[scene.background][0])
    draw = ImageDraw.Draw(img)
    ch, cw = h * s / 3.0, w * s / 3.0
    for obj in scene.objects:
        r, c = obj.cell
        cy, cx = (r + 0.5) * ch, (c + 0.5) * cw
        half = min(ch, cw) * (0.40 if obj.size == "large" else 0.22)
        _draw_shape(draw, obj.shape, cx, cy, half, COLOURS[obj.colour][0])
    if scene.text is not None:
        _draw_text(draw, scene.text, w * s, ch)
    return np.asarray(img.resize((w, h), Image.LANCZOS))


def _draw_shape(draw, shape, cx, cy, half, rgb):
    if shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=rgb)
    elif shape == "square":
        k = half * 0.9
        draw.rectangle([cx - k, cy - k, cx + k, cy + k], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half * 0.8), (cx + half, cy + half * 0.8)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, cy - half), (cx + half * 0.8, cy), (cx, cy + half), (cx - half * 0.8, cy)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_text(draw, item: TextItem, width, band_h):
    path = fonts.cjk_font_path() if item.language == "zh" else fonts.latin_font_path()
    size = int(band_h * 0.8)
    font = ImageFont.truetype(path, size)
    while font.getlength(item.text) > width * 0.9 and size > 6:
        size = int(size * 0.9)
        font = ImageFont.truetype(path, size)
    cy = (item.row + 0.5) * band_h
    draw.text((width / 2, cy), item.text, fill=COLOURS[item.colour][0], font=font, anchor="mm")


def _object_phrase(objs: List[ShapeObject]) -> Tuple[str, str]:
    """Short object description (en, zh): counts for identical objects, else each object."""
    first = objs[0]
    if len(objs) > 1 and all((o.shape, o.colour, o.size) == (first.shape, first.colour, first.size) for o in objs):
        n = len(objs)
        return (f"{COUNTS_EN[n]} {first.size} {first.colour} {first.shape}s",
                f"{COUNTS_ZH[n]}{SIZES[first.size][1]}{COLOURS[first.colour][1]}{SHAPES[first.shape]}")
    en = [f"a {o.size} {o.colour} {o.shape}" for o in objs]
    zh = [f"一个{SIZES[o.size][1]}{COLOURS[o.colour][1]}{SHAPES[o.shape]}" for o in objs]
    return _join_en(en), "和".join(zh) if len(zh) <= 2 else "、".join(zh[:-1]) + "和" + zh[-1]


def _join_en(parts: List[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _relation(objs: List[ShapeObject]) -> Optional[Tuple[str, str]]:
    """For two different objects: which is left of / above the other (en, zh)."""
    if len(objs) != 2:
        return None
    a, b = objs
    if (a.shape, a.colour) == (b.shape, b.colour):
        return None
    na, nb = f"the {a.colour} {a.shape}", f"the {b.colour} {b.shape}"
    za, zb = f"{COLOURS[a.colour][1]}{SHAPES[a.shape]}", f"{COLOURS[b.colour][1]}{SHAPES[b.shape]}"
    if a.cell[1] != b.cell[1]:
        left, right, zl, zr = (na, nb, za, zb) if a.cell[1] < b.cell[1] else (nb, na, zb, za)
        return f"{left.capitalize()} is to the left of {right}.", f"{zl}在{zr}的左边。"
    top, bottom, zt, zb2 = (na, nb, za, zb) if a.cell[0] < b.cell[0] else (nb, na, zb, za)
    return f"{top.capitalize()} is above {bottom}.", f"{zt}在{zb2}的上面。"


def captions(scene: Scene) -> Dict[str, Dict[str, str]]:
    """Matched captions: {"en": {"short", "long"}, "zh": {"short", "long"}}."""
    en_obj, zh_obj = _object_phrase(scene.objects)
    t = scene.text
    en_short, zh_short = en_obj, zh_obj
    if t is not None:
        en_short += f', with the text "{t.text}"'
        zh_short += f"，还有文字“{t.text}”"
    bg_en, bg_zh = scene.background, BACKGROUNDS[scene.background][1]
    en_parts = [f"a {o.size} {o.colour} {o.shape} {POSITIONS[o.cell][0]}" for o in scene.objects]
    zh_parts = [f"{POSITIONS[o.cell][1]}有一个{SIZES[o.size][1]}{COLOURS[o.colour][1]}{SHAPES[o.shape]}" for o in scene.objects]
    en_long = f"On a {bg_en} background: {_join_en(en_parts)}."
    zh_long = f"{bg_zh}背景上，" + "，".join(zh_parts) + "。"
    if t is not None:
        en_long += f' The text "{t.text}" is written in {t.colour} {ROW_NAMES[t.row][0]}.'
        zh_long += f"{ROW_NAMES[t.row][1]}写着{COLOURS[t.colour][1]}的文字“{t.text}”。"
    rel = _relation(scene.objects)
    if rel:
        en_long += " " + rel[0]
        zh_long += rel[1]
    return {"en": {"short": en_short, "long": en_long}, "zh": {"short": zh_short, "long": zh_long}}


def generate(cfg: SyntheticWorldConfig) -> Iterator[dict]:
    """Yield records {"image": uint8 [S, S, 3], "captions": ..., "spec": scene dict} in order."""
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.num_images):
        scene = sample_scene(rng, cfg)
        yield {"image": render_scene(scene, cfg.image_size), "captions": captions(scene), "spec": scene.to_dict()}


def _meta(cfg: SyntheticWorldConfig) -> dict:
    return {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(cfg)}


def write_dataset(cfg: SyntheticWorldConfig, out_dir: str) -> bool:
    """Write images.npy, records.jsonl and meta.json to ``out_dir``; returns False (and writes
    nothing) when an identical dataset is already there. Written to a temporary folder and
    renamed, so an interrupted run never leaves a dataset that looks complete."""
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if {k: old[k] for k in ("format_version", "config")} == _meta(cfg):
            return False
        raise FileExistsError(f"{out_dir} holds a synthetic dataset made with a different config "
                              f"({old['config']}); choose another data.dir or delete it")
    tmp = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    images = np.lib.format.open_memmap(os.path.join(tmp, "images.npy"), mode="w+", dtype=np.uint8,
                                       shape=(cfg.num_images, cfg.image_size, cfg.image_size, 3))
    with open(os.path.join(tmp, "records.jsonl"), "w", encoding="utf-8") as f:
        for i, rec in enumerate(generate(cfg)):
            images[i] = rec["image"]
            f.write(json.dumps({"captions": rec["captions"], "spec": rec["spec"]}, ensure_ascii=False) + "\n")
    images.flush()
    del images
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({**_meta(cfg), "num_images": cfg.num_images}, f, indent=2)
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    os.replace(tmp, out_dir)
    return True


def load_dataset(out_dir: str) -> Tuple[np.ndarray, List[dict]]:
    """(images uint8 [N, H, W, 3] memory-mapped, records [{"captions", "spec"}]) of a written dataset."""
    for name in ("meta.json", "images.npy", "records.jsonl"):
        if not os.path.exists(os.path.join(out_dir, name)):
            raise FileNotFoundError(f"synthetic dataset {out_dir}: missing {name} (the 'data' stage writes it)")
    images = np.load(os.path.join(out_dir, "images.npy"), mmap_mode="r")
    with open(os.path.join(out_dir, "records.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    if len(records) != len(images):
        raise ValueError(f"{out_dir}: {len(images)} images but {len(records)} records")
    return images, records
