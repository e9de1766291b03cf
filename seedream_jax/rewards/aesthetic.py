"""The learned aesthetic/structure reward as a scorer: a trained ``models.rewards.AestheticReward``.

``AestheticScorer(images, prompts=None)`` -> float32 [B], one score per image (higher = cleaner:
sharp, noise- and artefact-free, world colours, whole shapes, no stray marks; see
``data/degradations.py``). Scores are unbounded; only differences between images mean something.
Prompts are accepted, so the scorer has the reward API's ``(images, prompts)`` signature, and
ignored. Images are uint8 [B, H, W, 3] or float in [-1, 1], any size (resized to the model's
``image_size``); the model runs in one jitted function of (params, images), so the score is
differentiable with respect to the pixels.
"""
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models.rewards import AestheticReward
from seedream_jax.rewards.common import batched, images_per_second, model_pixels, stage_model

COMPONENT = "aesthetic"  # the component name in an aesthetic stage's checkpoint and stage.json


class AestheticScorer:
    """A trained aesthetic model (``model``, ``params`` of its component)."""

    def __init__(self, model: AestheticReward, params):
        self.model, self.params = model, params
        self.config = model.config
        self._score = jax.jit(self.score_fn)

    @classmethod
    def from_stage(cls, stage_dir: str, weights: str = "ema") -> "AestheticScorer":
        """The scorer of an aesthetic stage directory (its stage.json and latest checkpoint)."""
        _, model, params = stage_model(stage_dir, COMPONENT, weights)
        return cls(model, params)

    def score_fn(self, params, images) -> jax.Array:
        """Pure: scores float32 [B] of images (uint8, or float in [-1, 1])."""
        return self.model.apply({"params": params}, model_pixels(images, self.config.image_size))

    def __call__(self, images, prompts: Optional[Sequence[str]] = None) -> jax.Array:
        return self._score(self.params, jnp.asarray(images))

    def images_per_second(self, images, repeats: int = 5) -> float:
        """Throughput of ``__call__`` on this batch (compiled first, then ``repeats`` timed calls)."""
        return images_per_second(lambda: self(images), len(images), repeats)


def pair_accuracy(scorer: AestheticScorer, preferred: np.ndarray, rejected: np.ndarray, kinds: Sequence[str],
                  batch_size: int = 256) -> Dict[str, float]:
    """{kind: fraction of pairs whose ``preferred`` image (uint8 [N, S, S, 3]) outscores its
    ``rejected`` one}, kinds in order of first appearance in ``kinds`` [N]."""
    kinds = np.asarray(kinds)
    good = batched(scorer, preferred, batch_size)
    bad = batched(scorer, rejected, batch_size)
    return {k: round(float(np.mean(good[kinds == k] > bad[kinds == k])), 4) for k in dict.fromkeys(kinds.tolist())}


def accuracy_markdown(accuracy: Dict[str, float], counts: Dict[str, int]) -> str:
    """The ``pair_accuracy`` table: one row per kind with its number of pairs."""
    rows = ["| kind | accuracy | pairs |", "|---|---|---|"]
    rows += [f"| {kind} | {value:.3f} | {counts[kind]} |" for kind, value in accuracy.items()]
    return "\n".join(rows)
