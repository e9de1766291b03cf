"""Rewards by name: ``score(name, images, prompts) -> [B]`` for every reward the RLHF stage may use.

Registered at import:
  ``objective``  the closed-world check (``rewards/objective.py``): 1.0 where the image shows exactly
                 what its world caption says (objects, counts, cells, relation, quoted text by OCR),
                 else 0.0; NumPy, not differentiable (for GRPO).
  ``objective_graded``  its partial-credit variant (``objective.graded``): per claimed object the
                 share of its colour, shape, size (and cell, long caption) that its detection in a
                 one-to-one assignment has, extra detections diluting that, plus background,
                 relation and text as in ``objective``, each object and claim weighing 1; 1.0 exactly
                 where ``objective`` is 1.0, 0.0 for a prompt that is not a world caption; NumPy, not
                 differentiable (for GRPO, whose group advantages vanish when no rollout passes).
Registered by loading a reward stage:
  ``load_alignment(stage_dir, name='alignment')``: the learned image-text alignment model
                 (``rewards/alignment.py``): cosine per (image, prompt), jitted, batched and
                 differentiable with respect to the pixels (for reward backpropagation).
  ``load_aesthetic(stage_dir, name='aesthetic')``: the learned aesthetic/structure model
                 (``rewards/aesthetic.py``): one score per image (prompts ignored), higher for
                 clean renderings than degraded or generated ones; jitted and differentiable.
  ``load_glyph(stage_dir, name='text_rendering')``: the text-rendering score of a glyph_align
                 stage (``rewards/glyph.py``): the cosine between the prompt's quoted text and the
                 image features where the world draws a word (best layout); 0 without quoted text.

``images``: uint8 [B, H, W, 3] or float in [-1, 1] [B, H, W, 3]; ``prompts``: B strings.
"""
import dataclasses
from typing import Callable, Dict, List, Sequence

from seedream_jax.rewards import objective


@dataclasses.dataclass(frozen=True)
class Reward:
    """A registered reward: ``fn(images, prompts) -> [B]``, whether it is ``differentiable`` with
    respect to the pixels, and a one-line ``description``."""
    name: str
    fn: Callable
    differentiable: bool
    description: str = ""


_REGISTRY: Dict[str, Reward] = {}


def register(name: str, fn: Callable, *, differentiable: bool, description: str = "", replace: bool = False) -> Reward:
    """Add a reward under ``name``; an existing name fails unless ``replace``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"reward {name!r} is already registered (pass replace=True to swap it)")
    _REGISTRY[name] = Reward(name, fn, differentiable, description)
    return _REGISTRY[name]


def get(name: str) -> Reward:
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; registered: {names()} (trained models are registered by "
                       "rewards.load_alignment(stage_dir), rewards.load_aesthetic(stage_dir) and "
                       "rewards.load_glyph(stage_dir))")
    return _REGISTRY[name]


def names() -> List[str]:
    return sorted(_REGISTRY)


def score(name: str, images, prompts: Sequence[str]):
    """Reward ``name`` of each (image, prompt): [B] (a jax.Array for neural rewards, NumPy otherwise)."""
    if len(images) != len(prompts):
        raise ValueError(f"reward {name!r}: {len(images)} images but {len(prompts)} prompts")
    return get(name).fn(images, list(prompts))


def _load(module: str, scorer_class: str, stage_dir: str, name: str, weights: str, replace: bool, description: str):
    """Build ``seedream_jax.rewards.<module>.<scorer_class>.from_stage(stage_dir, weights)`` and
    register it (differentiable) as ``name``."""
    import importlib

    scorer = getattr(importlib.import_module(f"seedream_jax.rewards.{module}"), scorer_class).from_stage(
        stage_dir, weights)
    register(name, scorer, differentiable=True, replace=replace, description=description.format(stage_dir))
    return scorer


def load_alignment(stage_dir: str, name: str = "alignment", weights: str = "ema", replace: bool = True):
    """Load a reward stage's alignment model (``weights`` 'ema' or 'raw') and register it as ``name``;
    returns the ``alignment.AlignmentScorer``."""
    return _load("alignment", "AlignmentScorer", stage_dir, name, weights, replace,
                 "learned image-text alignment of {} (cosine)")


def load_aesthetic(stage_dir: str, name: str = "aesthetic", weights: str = "ema", replace: bool = True):
    """Load an aesthetic stage's model (``weights`` 'ema' or 'raw') and register it as ``name``;
    returns the ``aesthetic.AestheticScorer``."""
    return _load("aesthetic", "AestheticScorer", stage_dir, name, weights, replace,
                 "learned aesthetic/structure score of {} (higher = cleaner; prompts ignored)")


def load_glyph(stage_dir: str, name: str = "text_rendering", weights: str = "ema", replace: bool = True):
    """Load a glyph_align stage's aligner (``weights`` 'ema' or 'raw') and register its text-rendering
    score as ``name``; returns the ``glyph.TextRenderingScorer``."""
    return _load("glyph", "TextRenderingScorer", stage_dir, name, weights, replace,
                 "text-rendering score of {} (cosine of quoted text and drawn glyphs)")


STAGE_LOADERS = {"reward": load_alignment, "aesthetic": load_aesthetic, "glyph_align": load_glyph}  # stage kind -> loader


def load_stage(stage_dir: str, name: str, weights: str = "ema", replace: bool = True):
    """Load the reward model of a reward stage of any kind in ``STAGE_LOADERS`` (read from its
    stage.json) and register it as ``name``; returns its scorer. Another kind fails naming them."""
    from seedream_jax.checkpoint.stage_dir import open_stage

    kind = open_stage(stage_dir).kind
    if kind not in STAGE_LOADERS:
        raise ValueError(f"{stage_dir} is a stage of kind {kind!r}; a reward stage is of kind {sorted(STAGE_LOADERS)}")
    return STAGE_LOADERS[kind](stage_dir, name=name, weights=weights, replace=replace)


register("objective", objective.objective_score, differentiable=False,
         description="closed-world check of a world caption: 1 if every claim holds, else 0")
register("objective_graded", objective.objective_graded_score, differentiable=False,
         description="closed-world check of a world caption with partial credit per object attribute and claim")
