"""Stage kind ``aesthetic``: the aesthetic/structure reward model, trained on clean-over-degraded pairs.

Data, made on the fly: training example i is a train scene of the run's world mix
(``synthetic.sample_scene`` on ``data.world``, or the stage's own ``aesthetic.data.world``, with the
generator ``default_rng([pairs.seed, 0, i])``; train scenes never hold a held-out colour-shape
pair), rendered at ``model.image_size``, and a copy degraded by the kind ``cycle[i % len(cycle)]``
(``data/degradations.py``; the cycle repeats each kind by its integer ``pairs.kind_weights``), its
parameters drawn by the same generator. Batch k is a pure function of the seed and k, so resume is
exact. Optional real-versus-generated pairs: when ``generated_from`` names a pretrain stage
directory, the stage first samples ``generated_count`` images from its EMA weights
(``stages/sample.load_pipeline``) for world captions (of scenes of stream 2, English and Chinese in
turn, short or long) and adds the kind ``generated``, ``generated_weight`` times per cycle:
the rendering of the caption's scene preferred over the generated image.

Model: ``models/rewards.AestheticReward`` (component ``aesthetic``: the ``ImageTower`` the alignment
model also uses, and a scalar head). No tokenizer. Loss: Bradley-Terry of the clean image over
its degraded copy (``training/reward_losses.bradley_terry``).

Held-out: scenes of another generator stream (``[pairs.seed, 1, j]``, generated ones ``[seed, 3,
j]``) each given a group of a held-out colour-shape pair (``world_pairs.with_heldout_group``,
``data/heldout.py``), which no train scene has, so no held-out scene is a training scene; pair j
is of kind ``KINDS[j % 7]``. ``finish`` measures the pairwise accuracy per kind on
``pairs.heldout_per_kind`` pairs each (and on as many generated pairs), writes it to the summary and
to ``<stage_dir>/heldout_accuracy.md``, and times the scorer (images/s at ``model.image_size``).
"""
import logging
import os
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from seedream_jax.checkpoint.init_from import parse_sources
from seedream_jax.checkpoint.source_records import source_record
from seedream_jax.checkpoint.stage_dir import StageDescription, open_stage
from seedream_jax.data import degradations, synthetic, world_pairs
from seedream_jax.data.batches import IndexedBatches
from seedream_jax.models.partition import merge_params, split_params
from seedream_jax.models.rewards import AestheticReward, AestheticRewardConfig, ImageTowerConfig
from seedream_jax.rewards.aesthetic import COMPONENT, AestheticScorer, accuracy_markdown, pair_accuracy
from seedream_jax.rewards.common import model_pixels
from seedream_jax.stages import common
from seedream_jax.training import loop
from seedream_jax.training.reward_losses import bradley_terry

GENERATED = "generated"  # the kind of a rendering-over-generated-image pair
# Generator streams of the scenes: default_rng([seed, stream, index]).
_STREAMS = {("train", False): 0, ("heldout", False): 1, ("train", True): 2, ("heldout", True): 3}


def model_config(stage_cfg) -> AestheticRewardConfig:
    """The ``AestheticRewardConfig`` of ``aesthetic.model``."""
    m = stage_cfg.model
    return AestheticRewardConfig(tower=ImageTowerConfig(
        image_size=int(m.image_size), patch_size=int(m.patch_size), image_channels=tuple(m.image_channels),
        groups=int(m.groups), embed_dim=int(m.embed_dim), dtype=str(m.dtype)))


def scene_at(mix: synthetic.SyntheticWorldConfig, seed: int, split: str, index: int,
             generated: bool = False) -> Tuple[synthetic.Scene, np.random.Generator]:
    """Scene ``index`` of ``split`` ('train' or 'heldout'; ``generated``: of the generated pairs'
    streams) and its generator, positioned after the scene, to draw the degradation with. A
    held-out scene has a group of a held-out colour-shape pair (``world_pairs.split_scene``)."""
    rng = np.random.default_rng([seed, _STREAMS[(split, generated)], index])
    return world_pairs.split_scene(rng, mix, split), rng


def degraded_pair(mix, seed: int, split: str, index: int, kind: str, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(clean rendering, its copy degraded by ``kind``), uint8 [size, size, 3] each."""
    scene, rng = scene_at(mix, seed, split, index)
    image = synthetic.render_scene(scene, size)
    return image, degradations.degrade(image, scene, kind, rng)


def heldout_pairs(mix, seed: int, per_kind: int, size: int) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """The first ``per_kind`` held-out pairs of every degradation: (clean [N], degraded [N] uint8
    [N, size, size, 3], kinds [N]), pair j of kind ``KINDS[j % 7]``."""
    kinds = [degradations.KINDS[j % len(degradations.KINDS)] for j in range(per_kind * len(degradations.KINDS))]
    pairs = [degraded_pair(mix, seed, "heldout", j, kind, size) for j, kind in enumerate(kinds)]
    return np.stack([c for c, _ in pairs]), np.stack([d for _, d in pairs]), kinds


# ------------------------------------------------------------------------------- generated pairs

_GENERATED_CACHE: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}


def generated_pairs(cfg, stage_cfg, workdir: str, split: str, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """(renderings, generated images), uint8 [count, S, S, 3] (S = ``model.image_size``): image i is
    sampled from ``generated_from``'s EMA weights for a caption of scene i of ``split``'s generated
    stream (English for even i, Chinese for odd, short or long at random), ``generated_batch_size``
    per call, a call's noise seeded by ``pairs.seed + start`` (its first index; held-out images
    add 1_000_003); sampled at ``generated_size`` (0: S) and resized to S. A pure function of
    the source checkpoint and the config, kept in memory once sampled (``finish`` reuses the
    held-out set)."""
    s = stage_cfg
    size = int(s.model.image_size)
    gen_size = int(s.generated_size) or size
    source = open_stage(common.resolve(workdir, s.generated_from))
    mix = common.world_mix(cfg, s)
    key = (source.directory, source.step, split, count, size, gen_size, mix, int(s.pairs.seed),
           int(s.generated_num_steps), float(s.generated_guidance_scale), int(s.generated_batch_size))
    if key in _GENERATED_CACHE:
        return _GENERATED_CACHE[key]
    from seedream_jax.stages.sample import load_pipeline

    pipe, params = load_pipeline(cfg, workdir, source.directory, use_ema=True)
    scenes, prompts = [], []
    for i in range(count):
        scene, rng = scene_at(mix, int(s.pairs.seed), split, i, generated=True)
        scenes.append(scene)
        prompts.append(world_pairs.alternating_caption(scene, i, rng))
    batch = int(s.generated_batch_size)
    images = []
    for start in tqdm(range(0, count, batch), desc=f"aesthetic: sampling {split} images", unit="batch",
                      disable=jax.process_index() > 0, mininterval=1.0):
        pics = pipe(params, prompts[start:start + batch], height=gen_size, width=gen_size,
                    num_steps=int(s.generated_num_steps), guidance_scale=float(s.generated_guidance_scale),
                    seed=int(s.pairs.seed) + (0 if split == "train" else 1_000_003) + start)
        images += [p if gen_size == size else np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR))
                   for p in pics]
    logging.info("aesthetic: sampled %d %s images from %s step %d", count, split, source.directory, source.step)
    rendered = np.stack([synthetic.render_scene(scene, size) for scene in scenes])
    _GENERATED_CACHE[key] = (rendered, np.stack(images))
    return _GENERATED_CACHE[key]


def _cycle(stage_cfg) -> List[str]:
    s = stage_cfg
    cycle = world_pairs.kind_cycle(s.pairs.kind_weights, degradations.KINDS)
    return cycle + [GENERATED] * int(s.generated_weight) if s.generated_from else cycle


# ------------------------------------------------------------------------------------ the task

def batch_loss(model: AestheticReward, params, batch) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(Bradley-Terry loss, metrics) of ``params`` (the ``aesthetic`` component) on a batch
    {'clean', 'degraded': uint8 [B, S, S, 3]}: the clean image should outscore its degraded copy."""
    b = batch["clean"].shape[0]
    images = model_pixels(jnp.concatenate([batch["clean"], batch["degraded"]]), model.config.image_size)
    scores = model.apply({"params": params}, images)
    good, bad = scores[:b], scores[b:]
    return bradley_terry(good, bad), {"pair_accuracy": jnp.mean((good > bad).astype(jnp.float32)),
                                      "margin": jnp.mean(good - bad)}


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The aesthetic reward Task: clean-over-degraded world pairs (and generated ones), the image
    tower with a scalar head, Bradley-Terry."""
    s = stage_cfg
    config = model_config(s)
    model = AestheticReward(config)
    mix, seed, size = common.world_mix(cfg, s), int(s.pairs.seed), config.image_size
    cycle = _cycle(s)
    generated = generated_pairs(cfg, s, workdir, "train", int(s.generated_count)) if s.generated_from else None

    n_generated = cycle.count(GENERATED)  # the last places of the cycle

    def example(i: int) -> Tuple[np.ndarray, np.ndarray]:
        kind = cycle[i % len(cycle)]
        if kind != GENERATED:
            return degraded_pair(mix, seed, "train", i, kind, size)
        # the generated pairs in turn: the g-th generated example of the stream takes pair g
        g = (i // len(cycle) * n_generated + i % len(cycle) - (len(cycle) - n_generated)) % len(generated[0])
        return generated[0][g], generated[1][g]

    def make_batch(idx, rng):
        pairs = [example(int(i)) for i in idx]
        return {"clean": np.stack([c for c, _ in pairs]), "degraded": np.stack([d for _, d in pairs])}

    def init_params(rng):
        params = model.init(rng, jnp.zeros((1, size, size, 3)))["params"]
        return split_params({COMPONENT: params}, list(s.frozen))

    def loss_fn(params, frozen, batch, rng):
        return batch_loss(model, merge_params(params, frozen)[COMPONENT], batch)

    evaluate = None
    if int(s.train.eval_every) > 0:
        clean, degraded, kinds = heldout_pairs(mix, seed, max(1, int(s.pairs.eval_per_kind)), size)

        def heldout_eval(state, step):
            acc = pair_accuracy(_scorer(model, state), clean, degraded, kinds)
            return loop.Measurements(scalars={f"heldout/{kind}_accuracy": v for kind, v in acc.items()})
        evaluate = heldout_eval

    data = IndexedBatches(int(s.pairs.train_scenes), int(s.train.batch_size), seed, make_batch)
    sources = parse_sources(s.init_from, workdir)
    return loop.Task(name="aesthetic", init_params=init_params, loss_fn=loss_fn, data=data,
                     init_sources=sources or None, evaluate=evaluate)


def _scorer(model, state) -> AestheticScorer:
    params = merge_params(state.ema_params or state.params, state.frozen)[COMPONENT]
    return AestheticScorer(model, jax.device_get(params))


def finish(cfg, stage_cfg, workdir: str, stage_dir: str, result) -> dict:
    """Held-out pairwise accuracy per kind (and on generated pairs) and the scorer's speed."""
    s = stage_cfg
    config = model_config(s)
    scorer = _scorer(AestheticReward(config), result.state)
    per_kind = int(s.pairs.heldout_per_kind)
    mix = common.world_mix(cfg, s)
    clean, degraded, kinds = heldout_pairs(mix, int(s.pairs.seed), per_kind, config.image_size)
    if s.generated_from:
        rendered, generated = generated_pairs(cfg, s, workdir, "heldout", per_kind)
        clean, degraded = np.concatenate([clean, rendered]), np.concatenate([degraded, generated])
        kinds = kinds + [GENERATED] * per_kind
    accuracy = pair_accuracy(scorer, clean, degraded, kinds)
    table = accuracy_markdown(accuracy, {k: kinds.count(k) for k in accuracy})
    n = min(int(s.speed_batch), len(clean))
    speed = scorer.images_per_second(clean[:n])
    with open(os.path.join(stage_dir, "heldout_accuracy.md"), "w", encoding="utf-8") as f:
        f.write(f"Held-out pairwise accuracy, clean over degraded ({per_kind} pairs per kind, step {result.step})\n\n"
                f"{table}\n\nscorer: {speed:.1f} images/s at {config.image_size} px (batch {n})\n")
    print(f"aesthetic: held-out pairwise accuracy, {per_kind} pairs per kind\n{table}\n"
          f"aesthetic: scorer {speed:.1f} images/s at {config.image_size} px", flush=True)
    out = {"heldout_accuracy": accuracy, "heldout_pairs_per_kind": per_kind,
           "scorer_images_per_second": round(speed, 1)}
    if s.generated_from:
        out["generated_from"] = source_record(common.resolve(workdir, s.generated_from))
    return out


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """One component, ``aesthetic``; no tokenizer."""
    return StageDescription(components={COMPONENT: (AestheticReward, model_config(stage_cfg))})
