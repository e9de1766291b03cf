"""The closed-world objective reward: 1.0 when an image shows exactly what its world caption says.

A prompt must be a caption of the synthetic world (``synthetic.captions``: short or long, English
or Chinese). ``parse_caption`` reads back what it claims: the objects with their counts, sizes,
colours and shapes; for a long caption also the background, each object's grid cell, the text's
band and the relation of two objects; the quoted word. ``check`` holds an image to those claims
with the eval's detectors (``eval/objects.detect_objects``; the OCR and ``best_reading`` of
``eval/text_metrics`` for the word):

  objects     the detected objects, as a multiset of (colour, shape, size), are exactly the
              claimed ones (and, for a long caption, of (colour, shape, size, cell))
  background  (long) the estimated background is the claimed one
  relation    (long, two objects) the first named object's centroid is left of (above) the second's
  text        the best OCR reading is the word exactly (Seedream's availability)

The score is 1.0 when every claim holds, else 0.0: the eval's per-image correctness over all of
the prompt's attributes at once. Glyphs segment like coloured shapes, so with a quoted word the
detections in its band (long caption) or in the OCR boxes that read it (short) are set aside.
Not differentiable; made for policy-gradient (GRPO) rewards and for checking a learned reward.
"""
import collections
import dataclasses
import re
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from seedream_jax.data import synthetic
from seedream_jax.eval import objects as objects_lib
from seedream_jax.eval import text_metrics

ObjectKey = Tuple[str, str, str]  # (colour, shape, size)


@dataclasses.dataclass
class Claims:
    """What a caption says. objects: {(colour, shape, size): count}; cells: {(colour, shape, size,
    position): count} (long captions) or None; background, text, text_band ((orientation, band))
    and relation ((first, second, 'left' | 'above'), each named object (colour, shape, size or None))
    where the caption states them."""
    objects: collections.Counter
    cells: Optional[collections.Counter] = None
    background: Optional[str] = None
    text: Optional[str] = None
    text_band: Optional[Tuple[str, str]] = None
    relation: Optional[Tuple[tuple, tuple, str]] = None


def _alt(names) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


_EN_COUNTS = {v: k for k, v in synthetic.COUNTS_EN.items()}
_ZH_COUNTS = {v: k for k, v in synthetic.COUNTS_ZH.items()}
_ZH_COLOUR = {zh: name for name, (_, zh) in synthetic.COLOURS.items()}
_ZH_SHAPE = {zh: name for name, zh in synthetic.SHAPES.items()}
_ZH_SIZE = {zh: name for name, zh in synthetic.SIZES.items()}
_ZH_BACKGROUND = {zh: name for name, (_, zh) in synthetic.BACKGROUNDS.items()}
_EN_POSITION = {en: name for name, (en, _) in synthetic.POSITIONS.items()}
_ZH_POSITION = {zh: name for name, (_, zh) in synthetic.POSITIONS.items()}
_EN_BAND = {en: (o, b) for o, bands in synthetic.TEXT_BANDS.items() for b, (en, _) in bands.items()}
_ZH_BAND = {zh: (o, b) for o, bands in synthetic.TEXT_BANDS.items() for b, (_, zh) in bands.items()}
_C, _S, _Z = _alt(synthetic.COLOURS), _alt(synthetic.SHAPES), _alt(synthetic.SIZES)
_CZ, _SZ, _ZZ = _alt(_ZH_COLOUR), _alt(_ZH_SHAPE), _alt(_ZH_SIZE)
_EN = {
    "long": re.compile(rf"^On a ({_alt(synthetic.BACKGROUNDS)}) background: "),
    "short_object": re.compile(rf"\b({_alt(_EN_COUNTS)}) ({_Z}) ({_C}) ({_S})s?\b"),
    "long_object": re.compile(rf"\ba ({_Z}) ({_C}) ({_S}) ({_alt(_EN_POSITION)})"),
    "band": re.compile(rf'The text "[^"]*" is written (?:vertically )?in (?:{_Z}) (?:{_C}) (?:letters|characters) '
                       rf"({_alt(_EN_BAND)})\."),
    "relation": re.compile(rf"The (?:({_Z}) )?({_C}) ({_S}) is (to the left of|above) the (?:({_Z}) )?({_C}) ({_S})\."),
    "text": re.compile(r'"([^"]+)"'),
}
_ZH = {
    "long": re.compile(rf"^({_alt(_ZH_BACKGROUND)})背景上，"),
    "short_object": re.compile(rf"({_alt(_ZH_COUNTS)})({_ZZ})({_CZ})({_SZ})"),
    "long_object": re.compile(rf"({_alt(_ZH_POSITION)})有一个({_ZZ})({_CZ})({_SZ})"),
    "band": re.compile(rf"({_alt(_ZH_BAND)})有(?:小号|大号)(?:{_CZ})的(?:竖排)?文字“"),
    "relation": re.compile(rf"({_ZZ})?({_CZ})({_SZ})在({_ZZ})?({_CZ})({_SZ})的(左边|上面)。"),
    "text": re.compile(r"“([^”]+)”"),
}


def parse_caption(prompt: str) -> Claims:
    """The claims of a world caption; ValueError when ``prompt`` is not one."""
    zh = bool(re.search(r"[\u4e00-\u9fff]", _EN["text"].sub("", prompt)))
    rx = _ZH if zh else _EN
    words = rx["text"].findall(prompt)
    body = rx["text"].sub("“”" if zh else '""', prompt)  # a quoted word never reads as an object
    long = rx["long"].search(body)
    objects, cells = collections.Counter(), None
    if zh:
        colour, shape, size = _ZH_COLOUR.get, _ZH_SHAPE.get, _ZH_SIZE.get
    else:
        colour = shape = size = lambda s: s
    if long:
        cells = collections.Counter()
        for m in rx["long_object"].finditer(body):
            where, z, c, s = m.groups() if zh else (m.group(4), m.group(1), m.group(2), m.group(3))
            objects[(colour(c), shape(s), size(z))] += 1
            cells[(colour(c), shape(s), size(z), (_ZH_POSITION if zh else _EN_POSITION)[where])] += 1
    else:
        for m in rx["short_object"].finditer(body):
            n, z, c, s = m.groups()
            objects[(colour(c), shape(s), size(z))] += (_ZH_COUNTS if zh else _EN_COUNTS)[n]
    if not objects:
        raise ValueError(f"not a caption of the synthetic world (no object found): {prompt!r}")
    claims = Claims(objects, cells)
    if long:
        claims.background = (_ZH_BACKGROUND[long.group(1)] if zh else long.group(1))
        band = rx["band"].search(body)
        if band:
            claims.text_band = (_ZH_BAND if zh else _EN_BAND)[band.group(1)]
        rel = rx["relation"].search(body)
        if rel:
            g = rel.groups()
            z1, c1, s1, how, z2, c2, s2 = (g[:3] + (g[6],) + g[3:6]) if zh else g
            how = {"左边": "left", "上面": "above", "to the left of": "left", "above": "above"}[how]
            claims.relation = ((colour(c1), shape(s1), size(z1) if z1 else None),
                               (colour(c2), shape(s2), size(z2) if z2 else None), how)
    if words:
        claims.text = words[0]
    return claims


def _reading_boxes(boxes, target: str) -> List[np.ndarray]:
    """Boxes of the consecutive OCR lines whose joined text is closest to ``target`` (``best_reading``)."""
    best, best_key = [], (len(text_metrics.normalise(target)), 0)
    texts = [text_metrics.normalise(b.text) for b in boxes]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes) + 1):
            reading = "".join(texts[i:j])
            key = (text_metrics.edit_distance(reading, text_metrics.normalise(target)), len(reading))
            if key < best_key:
                best, best_key = [b.box for b in boxes[i:j]], key
    return best


def _in_band(obj, band: Tuple[str, str]) -> bool:
    orientation, name = band
    row, col = obj.cell
    return (row if orientation == "horizontal" else col) == list(synthetic.TEXT_BANDS[orientation]).index(name)


def _named(found, who) -> Optional[objects_lib.DetectedObject]:
    c, s, z = who
    matching = [o for o in found if o.colour == c and o.shape == s and (z is None or o.size == z)]
    return max(matching, key=lambda o: o.area) if matching else None


def check(image: np.ndarray, claims: Claims, detect_text: Optional[Callable] = None) -> dict:
    """{claim: bool} of uint8 ``image`` [H, W, 3] against ``claims``; ``detect_text`` (image ->
    ``data.ocr.TextBox`` list, default ``data.ocr.detect_text``) runs only when a word is claimed."""
    found = objects_lib.detect_objects(image)
    out = {}
    if claims.text is not None:
        if detect_text is None:
            from seedream_jax.data import ocr
            detect_text = ocr.detect_text
        boxes = detect_text(image)
        reading = text_metrics.best_reading([b.text for b in boxes], claims.text)
        out["text"] = text_metrics.text_scores(reading, claims.text)["exact"] == 1.0
        if claims.text_band is not None:
            found = [o for o in found if not _in_band(o, claims.text_band)]
        else:
            quads = _reading_boxes(boxes, claims.text)

            def inside(o):
                y, x = o.centroid
                return any(q[:, 0].min() - 1 <= x <= q[:, 0].max() + 1 and q[:, 1].min() - 1 <= y <= q[:, 1].max() + 1
                           for q in quads)
            found = [o for o in found if not inside(o)]
    out["objects"] = collections.Counter((o.colour, o.shape, o.size) for o in found) == claims.objects
    if claims.cells is not None:
        out["cells"] = collections.Counter((o.colour, o.shape, o.size, o.position) for o in found) == claims.cells
    if claims.background is not None:
        out["background"] = objects_lib.estimate_background(image) == claims.background
    if claims.relation is not None:
        first, second, how = claims.relation
        a, b = _named(found, first), _named(found, second)
        axis = 1 if how == "left" else 0
        out["relation"] = a is not None and b is not None and a.centroid[axis] < b.centroid[axis]
    return out


def to_uint8(images) -> np.ndarray:
    """uint8 images as they are; float images in [-1, 1] (the models' pixel space) to uint8."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def objective_score(images, prompts: Sequence[str], detect_text: Optional[Callable] = None) -> np.ndarray:
    """float32 [B]: 1.0 where image b shows everything prompt b claims (``check``), else 0.0.

    images: uint8 [B, H, W, 3], or float in [-1, 1]; not differentiable (a traced array fails)."""
    import jax

    if isinstance(images, jax.core.Tracer):
        raise TypeError("the objective reward is not differentiable: call it on concrete images, outside "
                        "jax.grad / jax.jit")
    pixels = to_uint8(images)
    return np.array([float(all(check(img, parse_caption(p), detect_text).values()))
                     for img, p in zip(pixels, prompts)], np.float32)
