"""The generator's own images ranked by the objective check: preference pairs for the alignment reward.

A trained image model (the EMA weights of a pretrain-kind stage, ``reward.ranked.generated.source``)
draws ``per_caption`` images for each of ``captions`` world captions; the closed world's graded objective
score (``rewards/objective.py``, reward ``objective_graded``) scores each image against its
caption, and every two images of one caption whose scores differ by more than ``min_gap`` make a
pair, the higher-scoring image preferred. These are the labels a human rater gives a generator's
samples (ImageReward's data), exact here because a world caption can be checked; they show the
alignment reward the images it will score in RLHF (blurred, partly right), which the world's
rendered pairs never contain.

Captions: scene i of the run's world mix (``data.world``), drawn by default_rng([seed, stream, i])
with its own stream per split: train scenes, or for the held-out pairs scenes with a group of a
held-out colour-shape pair (never in the image data); English for even i, Chinese for odd, short or
long at random (``world_pairs.alternating_caption``). Image g of caption c is sampled with the
noise of row c * per_caption + g (``common.generate_images``), so the set is a pure function of the
source checkpoint and these settings.
"""
import dataclasses
import logging
import time
from typing import List, Tuple

import numpy as np

from seedream_jax import rewards
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.data import synthetic, world_pairs
from seedream_jax.stages import common

_STREAMS = {"train": 20, "heldout": 21}   # default_rng([seed, stream, i]): apart from every other world stream
_HELDOUT_SEED_OFFSET = 1_000_003          # the held-out set's sampler noise


@dataclasses.dataclass
class RankedSamples:
    """``per_caption`` images of each of C captions and their preference pairs.

    images: uint8 [C * G, S, S, 3] (image g of caption c at row c * G + g); prompts: [C]; scores:
    float32 [C * G], the graded objective score of each image against its caption; better, worse:
    int32 [P], rows of ``images``, the first preferred; caption: int32 [P], the pair's caption.
    """
    images: np.ndarray
    prompts: List[str]
    scores: np.ndarray
    better: np.ndarray
    worse: np.ndarray
    caption: np.ndarray

    @property
    def per_caption(self) -> int:
        return len(self.scores) // max(1, len(self.prompts))


def ranked_pairs(scores: np.ndarray, min_gap: float = 0.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(better, worse, caption), int32 [P] each, of scores [C, G]: for every caption c every two of
    its images i != j with scores[c, i] > scores[c, j] + min_gap, as flat rows c * G + i over
    c * G + j, in order of (c, i, j). Ties (and gaps of at most ``min_gap``) make no pair."""
    scores = np.asarray(scores, np.float32)
    c, i, j = np.nonzero(scores[:, :, None] > scores[:, None, :] + float(min_gap))
    g = scores.shape[1]
    return (c * g + i).astype(np.int32), (c * g + j).astype(np.int32), c.astype(np.int32)


def world_prompts(mix: synthetic.SyntheticWorldConfig, seed: int, split: str, count: int) -> List[str]:
    """The first ``count`` captions of ``split``'s stream (module docstring)."""
    prompts = []
    for i in range(count):
        rng = np.random.default_rng([seed, _STREAMS[split], i])
        prompts.append(world_pairs.alternating_caption(world_pairs.split_scene(rng, mix, split), i, rng))
    return prompts


def draw(cfg, generated, workdir: str, mix: synthetic.SyntheticWorldConfig, split: str, count: int,
         image_size: int) -> RankedSamples:
    """The ranked samples of ``count`` captions of ``mix``'s ``split`` drawn by ``generated.source``
    (a stage name in ``workdir`` or an absolute path) at ``image_size`` px: ``generated.per_caption``
    images each, ``generated.num_steps`` sampler steps at guidance ``generated.guidance_scale``,
    ``generated.batch_size`` images per call, noise seeded by ``generated.seed`` (the held-out set
    adds 1_000_003); pairs by ``ranked_pairs(min_gap=generated.min_gap)``."""
    from seedream_jax.stages.sample import load_pipeline

    g = int(generated.per_caption)
    prompts = world_prompts(mix, int(generated.seed), split, count)
    source = open_stage(common.resolve(workdir, str(generated.source)))
    pipe, params = load_pipeline(cfg, workdir, source.directory, use_ema=True)
    rows = [p for p in prompts for _ in range(g)]
    seed = int(generated.seed) + (_HELDOUT_SEED_OFFSET if split == "heldout" else 0)
    images = common.generate_images(pipe, params, rows, height=image_size, width=image_size,
                                    batch_size=int(generated.batch_size), seed=seed,
                                    num_steps=int(generated.num_steps),
                                    guidance_scale=float(generated.guidance_scale),
                                    what=f"reward: sampling {split} images")
    t0 = time.time()
    scores = np.asarray(rewards.score("objective_graded", images, rows), np.float32)
    better, worse, caption = ranked_pairs(scores.reshape(count, g), float(generated.min_gap))
    logging.info("reward: %d %s images of %s step %d scored in %.1fs (mean graded score %.3f): %d pairs",
                 len(rows), split, source.directory, source.step, time.time() - t0, float(scores.mean()), len(better))
    return RankedSamples(images, prompts, scores, better, worse, caption)
