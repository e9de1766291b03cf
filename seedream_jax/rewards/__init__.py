"""Rewards by name: ``score(name, images, prompts) -> [B]`` for every reward the RLHF stage may use.

Registered at import:
  ``objective``  the closed-world check (``rewards/objective.py``): 1.0 where the image shows exactly
                 what its world caption says (objects, counts, cells, relation, quoted text by OCR),
                 else 0.0; NumPy, not differentiable (for GRPO).
Registered by loading a reward stage:
  ``load_alignment(stage_dir, name='alignment')``: the learned image-text alignment model
                 (``rewards/alignment.py``): cosine per (image, prompt), jitted, batched and
                 differentiable with respect to the pixels (for reward backpropagation).

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
        raise KeyError(f"unknown reward {name!r}; registered: {names()} (a trained alignment model is "
                       "registered by rewards.load_alignment(stage_dir))")
    return _REGISTRY[name]


def names() -> List[str]:
    return sorted(_REGISTRY)


def score(name: str, images, prompts: Sequence[str]):
    """Reward ``name`` of each (image, prompt): [B] (a jax.Array for neural rewards, NumPy otherwise)."""
    if len(images) != len(prompts):
        raise ValueError(f"reward {name!r}: {len(images)} images but {len(prompts)} prompts")
    return get(name).fn(images, list(prompts))


def load_alignment(stage_dir: str, name: str = "alignment", weights: str = "ema", replace: bool = True):
    """Load a reward stage's alignment model (``weights`` 'ema' or 'raw') and register it as ``name``;
    returns the ``alignment.AlignmentScorer``."""
    from seedream_jax.rewards.alignment import AlignmentScorer

    scorer = AlignmentScorer.from_stage(stage_dir, weights)
    register(name, scorer, differentiable=True, replace=replace,
             description=f"learned image-text alignment of {stage_dir} (cosine)")
    return scorer


register("objective", objective.objective_score, differentiable=False,
         description="closed-world check of a world caption: 1 if every claim holds, else 0")
