"""Held-out attribute combinations: (colour, shape) pairs the synthetic training world never draws.

The evaluation suite (``seedream_jax.eval.suite``) prompts for these pairs ("a purple square")
to measure compositional generalisation: every colour and every shape is seen in training, but
never these combinations of them. ``synthetic.sample_scene`` redraws an object whose pair is
held out, so a dataset written by this code holds none; ``count_heldout`` checks a dataset that
was written before (or by other code).

Each colour and each shape occurs in at most one pair, and every held-out colour is visible on
every background, so the suite can place a held-out object anywhere.
"""
from typing import Iterable, Mapping, Tuple

HELDOUT_COLOUR_SHAPES: Tuple[Tuple[str, str], ...] = (
    ("red", "star"), ("blue", "triangle"), ("yellow", "circle"), ("purple", "square"))
_HELDOUT = frozenset(HELDOUT_COLOUR_SHAPES)


def is_heldout(colour: str, shape: str) -> bool:
    """Whether an object of ``colour`` and ``shape`` is a held-out combination."""
    return (colour, shape) in _HELDOUT


def spec_is_heldout(spec: Mapping) -> bool:
    """Whether a JSON scene spec (``Scene.to_dict()``) holds an object of a held-out pair."""
    return any(is_heldout(o["colour"], o["shape"]) for o in spec["objects"])


def count_heldout(records: Iterable[Mapping]) -> int:
    """Number of dataset records (``{"spec": ...}`` dicts, as in ``records.jsonl``) that show a
    held-out pair; 0 for any dataset this code writes."""
    return sum(spec_is_heldout(r["spec"]) for r in records)
