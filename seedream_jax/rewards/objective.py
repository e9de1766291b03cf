"""The closed-world objective reward: 1.0 when an image shows exactly what its world caption says.

A prompt must be a caption of the synthetic world (``synthetic.all_captions``: short, long or style,
English or Chinese; a style caption's style attributes are not checked). ``parse_caption`` reads
back what it claims with the grammar's one parser (``eval/prompt_content.parse``): the objects with
their counts, sizes, colours and shapes; for a long caption also the background, each object's
grid cell, the text's band and the relation of two objects; the quoted word. ``check`` holds an
image to those claims with the eval's detectors (``eval/objects.detect_objects``; the OCR and
``best_reading`` of ``eval/text_metrics`` for the word):

  objects     the detected objects, as a multiset of (colour, shape, size), are exactly the
              claimed ones (and, for a long caption, of (colour, shape, size, cell))
  background  (long) the estimated background is the claimed one
  relation    (long, two objects) the first named object's centroid is left of (above) the second's
  text        the best OCR reading is the word exactly (Seedream's availability)

The score is 1.0 when every claim holds, else 0.0: the eval's per-image correctness over all of
the prompt's attributes at once. Glyphs segment like coloured shapes, so with a quoted word the
detections in its band (long caption) or in the OCR boxes that read it (short) are set aside.
Not differentiable; made for policy-gradient (GRPO) rewards and for checking a learned reward.

The graded score (``graded``, ``objective_graded_score``; reward ``objective_graded``) gives partial
credit, so that a group of GRPO rollouts none of which passes still has different rewards. With the
same detections and the same background, relation and text claims as ``check`` (one path,
``_examine``):

  claimed objects  the caption's N objects, each count expanded (N = sum of ``Claims.objects``):
                   (colour, shape, size), and for a long caption (colour, shape, size, cell); A = 3
                   or 4 attributes
  hits(c, d)       how many of the A attributes of claimed object c detection d has
  O                max over one-to-one assignments of claimed objects to detections (Hungarian,
                   ``scipy.optimize.linear_sum_assignment``) of sum hits / (A * max(N, D)), D the
                   number of detections: a missing object scores 0 of its A, and every detection
                   beyond N enlarges the denominator (drawing everything everywhere is not rewarded);
                   O = 0 when nothing is detected
  K                the other claims ``check`` makes: background and relation (long caption), text
                   (a quoted word), each 1 when it holds, else 0, as in ``check``

  graded = (N * O + sum of K) / (N + |K|)       each claimed object and each other claim weigh 1

It lies in [0, 1] and is 1.0 exactly when ``check`` passes everything (O = 1 only when D = N and
the assignment matches every attribute: the detected multiset is the claimed one). An image with
no object scores |K holding| / (N + |K|) (0 for a short caption without a word).
"""
import collections
import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import optimize

from seedream_jax.data import synthetic
from seedream_jax.eval import objects as objects_lib
from seedream_jax.eval import prompt_content
from seedream_jax.eval import text_metrics


@dataclasses.dataclass
class Claims:
    """What a caption says. objects: {(colour, shape, size): count}; cells: {(colour, shape, size,
    position): count} (long captions) or None; background, text (the quoted word: a world caption
    quotes at most one; of several, the first in sorted order), text_band ((orientation, band)) and
    relation ((first, second, 'left' | 'above'), each named object (colour, shape, size or None))
    where the caption states them."""
    objects: collections.Counter
    cells: Optional[collections.Counter] = None
    background: Optional[str] = None
    text: Optional[str] = None
    text_band: Optional[Tuple[str, str]] = None
    relation: Optional[Tuple[tuple, tuple, str]] = None


def _object(name: prompt_content.Name) -> tuple:
    """(colour, shape, size or None) of a relation's ``prompt_content.Name`` (size or None, colour, shape)."""
    size, colour, shape = name
    return colour, shape, size


def parse_caption(prompt: str) -> Claims:
    """The claims of a world caption (short, long or style, in English or Chinese): ``prompt_content.parse``
    in the prompt's ``caption_language``. ``prompt_content.ParseError`` (a ValueError) saying where it
    fails when ``prompt`` is not exactly a caption of the world's grammar."""
    try:
        content = prompt_content.parse(prompt, synthetic.caption_language(prompt))
    except prompt_content.ParseError as e:
        raise prompt_content.ParseError(f"not a caption of the synthetic world: {e}") from None
    claims = Claims(collections.Counter({(colour, shape, size): n for n, size, colour, shape in content.objects}),
                    text=content.texts[0] if content.texts else None)
    if content.kind == "long":
        claims.cells = collections.Counter((colour, shape, size, position)
                                           for position, size, colour, shape in content.cells)
        claims.background = content.background
        layout = content.text_layout
        claims.text_band = None if layout is None else (layout.orientation, layout.position)
        if content.relation is not None:
            first, how, second = content.relation
            claims.relation = (_object(first), _object(second), "left" if how == "left of" else "above")
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


def _examine(image: np.ndarray, claims: Claims, detect_text: Optional[Callable]
             ) -> Tuple[List[objects_lib.DetectedObject], dict]:
    """(the detections the object claims are held to: glyphs set aside, ``check``'s {claim: bool})."""
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
    return found, out


def check(image: np.ndarray, claims: Claims, detect_text: Optional[Callable] = None) -> dict:
    """{claim: bool} of uint8 ``image`` [H, W, 3] against ``claims``; ``detect_text`` (image ->
    ``data.ocr.TextBox`` list, default ``data.ocr.detect_text``) runs only when a word is claimed."""
    return _examine(image, claims, detect_text)[1]


def object_credit(found: Sequence[objects_lib.DetectedObject], claims: Claims) -> float:
    """O of the module docstring: the best one-to-one assignment's attribute hits between the claimed
    objects (with cells for a long caption) and the detections ``found``, over A * max(N, D)."""
    with_cells = claims.cells is not None
    wanted = list((claims.cells if with_cells else claims.objects).elements())
    got = [(o.colour, o.shape, o.size) + ((o.position,) if with_cells else ()) for o in found]
    if not wanted or not got:
        return float(len(wanted) == len(got))
    hits = np.array([[sum(a == b for a, b in zip(w, g)) for g in got] for w in wanted], np.int64)
    rows, cols = optimize.linear_sum_assignment(hits, maximize=True)
    return int(hits[rows, cols].sum()) / (len(wanted[0]) * max(len(wanted), len(got)))


def graded(image: np.ndarray, claims: Claims, detect_text: Optional[Callable] = None) -> float:
    """The graded score in [0, 1] of uint8 ``image`` [H, W, 3] against ``claims`` (module docstring):
    (N * O + the other claims of ``check`` that hold) / (N + their number); 1.0 exactly when
    ``check`` passes everything."""
    found, held = _examine(image, claims, detect_text)
    n = sum(claims.objects.values())
    others = [held[k] for k in ("background", "relation", "text") if k in held]
    return (n * object_credit(found, claims) + sum(others)) / (n + len(others))


def to_uint8(images) -> np.ndarray:
    """uint8 images as they are; float images in [-1, 1] (the models' pixel space) to uint8."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def passes(image: np.ndarray, prompt: str, detect_text: Optional[Callable] = None) -> bool:
    """Whether uint8 ``image`` [H, W, 3] shows everything ``prompt`` claims; False when ``prompt`` is
    not a world caption (e.g. a broken rewrite)."""
    try:
        claims = parse_caption(prompt)
    except ValueError:
        return False
    return all(check(image, claims, detect_text).values())


def _concrete_uint8(images) -> np.ndarray:
    """``to_uint8`` of concrete images; a traced array (inside jax.grad / jax.jit) fails."""
    import jax

    if isinstance(images, jax.core.Tracer):
        raise TypeError("the objective reward is not differentiable: call it on concrete images, outside "
                        "jax.grad / jax.jit")
    return to_uint8(images)


def objective_score(images, prompts: Sequence[str], detect_text: Optional[Callable] = None) -> np.ndarray:
    """float32 [B]: 1.0 where image b shows everything prompt b claims (``check``), else 0.0.

    images: uint8 [B, H, W, 3], or float in [-1, 1]; not differentiable (a traced array fails)."""
    pixels = _concrete_uint8(images)
    return np.array([float(all(check(img, parse_caption(p), detect_text).values()))
                     for img, p in zip(pixels, prompts)], np.float32)


def objective_graded_score(images, prompts: Sequence[str], detect_text: Optional[Callable] = None) -> np.ndarray:
    """float32 [B]: the graded score (``graded``, module docstring) of image b against prompt b; 0.0
    where prompt b is not a world caption (e.g. a broken rewrite).

    images: uint8 [B, H, W, 3], or float in [-1, 1]; not differentiable (a traced array fails)."""
    pixels = _concrete_uint8(images)
    out = np.zeros(len(prompts), np.float32)
    for b, (img, p) in enumerate(zip(pixels, prompts)):
        try:
            claims = parse_caption(p)
        except ValueError:
            continue
        out[b] = graded(img, claims, detect_text)
    return out
