"""Scoring one generated image against its suite item, and a zh/en pair against each other.

Object checks identify an object by its colour (the largest detected object of the prompted
colour), so that each category measures one thing:
  colour    the largest detected object has the prompted colour
  shape     the largest detected object has the prompted shape
  count     the number of detected objects of the prompted colour is the prompted n
  position  the largest object of the prompted colour lies in the prompted grid cell
  relation  both prompted colours are present and the first named is left of (or above) the
            second, compared by centroid
  binding   for each of the two prompted objects, the largest object of its colour has its shape
  groups    for each prompted group, the number of objects of its colour is its count and the
            largest of them has its shape
Each is 1.0 (pass) or 0.0. Text items get Ra, Rh and exact (``text_metrics``) from the OCR.

Consistency of a zh/en pair: the Jaccard overlap of the attributes detected in the two images
(objects as (colour, shape, size, cell) for object items, the text read for text items): 1.0
when both languages give the same detections; a pair where neither image shows anything is not
scored (None).
"""
import collections
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from seedream_jax.eval import objects as objects_lib
from seedream_jax.eval import text_metrics
from seedream_jax.eval.suite import SuiteItem

ReadText = Callable[[np.ndarray], List[str]]  # image uint8 [H, W, 3] -> OCR lines in reading order


def _largest(found: Sequence[objects_lib.DetectedObject], colour: Optional[str] = None):
    matching = [o for o in found if colour is None or o.colour == colour]
    return max(matching, key=lambda o: o.area) if matching else None


def _relation_holds(item: SuiteItem, found) -> bool:
    a, b = item.scene.objects
    (ra, ca), (rb, cb) = a.cell, b.cell
    da, db = _largest(found, a.colour), _largest(found, b.colour)
    if da is None or db is None:
        return False
    axis = 1 if ca != cb else 0  # x when the spec's columns differ ("left of"), else y ("above")
    first_is_a = (ca < cb) if ca != cb else (ra < rb)
    first, second = (da, db) if first_is_a else (db, da)
    return first.centroid[axis] < second.centroid[axis]


def _groups_hold(item: SuiteItem, found) -> bool:
    """Every (colour, shape) group of the spec: count of that colour and shape of its largest."""
    groups = collections.Counter((o.colour, o.shape) for o in item.scene.objects)
    return all(sum(o.colour == colour for o in found) == n
               and getattr(_largest(found, colour), "shape", None) == shape
               for (colour, shape), n in groups.items())


def object_scores(item: SuiteItem, found: Sequence[objects_lib.DetectedObject]) -> Dict[str, float]:
    """{category: 1.0 or 0.0} for each object category of ``item``."""
    target = item.scene.objects[0]
    largest = _largest(found)
    checks = {
        "colour": lambda: largest is not None and largest.colour == target.colour,
        "shape": lambda: largest is not None and largest.shape == target.shape,
        "count": lambda: sum(o.colour == target.colour for o in found) == len(item.scene.objects),
        "position": lambda: getattr(_largest(found, target.colour), "position", None) == target.position,
        "relation": lambda: _relation_holds(item, found),
        "binding": lambda: _groups_hold(item, found),
        "groups": lambda: _groups_hold(item, found),
    }
    return {cat: float(bool(checks[cat]())) for cat in item.categories}


def attributes(item: SuiteItem, found, reading: Optional[str]) -> List[str]:
    """The detected attributes compared across languages: object tokens or the text read."""
    if item.kind == "text":
        return [f"text:{reading}"] if reading else []
    return [f"{o.colour}:{o.shape}:{o.size}:{o.position}" for o in found]


def score_image(item: SuiteItem, image: np.ndarray, read_text: Optional[ReadText] = None) -> dict:
    """Score ``image`` (uint8 [H, W, 3]) for ``item``.

    Returns {'scores': {metric: value}, 'attributes': [...], 'detected': {...}}: object items
    score their categories, text items 'ra', 'rh', 'exact' (and need ``read_text``).
    """
    if item.kind == "text":
        if read_text is None:
            raise ValueError(f"{item.id}: text items need an OCR reader (read_text)")
        lines = read_text(image)
        reading = text_metrics.best_reading(lines, item.scene.text.text)
        scores = text_metrics.text_scores(reading, item.scene.text.text)
        return {"scores": scores, "attributes": attributes(item, [], reading),
                "detected": {"ocr_lines": list(lines), "reading": reading}}
    found = objects_lib.detect_objects(image)
    return {"scores": object_scores(item, found), "attributes": attributes(item, found, None),
            "detected": {"objects": [[o.colour, o.shape, o.size, o.position, o.area] for o in found]}}


def consistency(attrs_a: Sequence[str], attrs_b: Sequence[str]) -> Optional[float]:
    """Multiset Jaccard overlap |A & B| / |A | B| of two attribute lists; None when neither
    image shows anything (no object, no text read): agreeing on nothing is not counted."""
    a, b = collections.Counter(attrs_a), collections.Counter(attrs_b)
    union = sum((a | b).values())
    return None if union == 0 else sum((a & b).values()) / union
