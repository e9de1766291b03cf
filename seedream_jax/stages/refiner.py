"""Stage kind ``refiner``: a second MMDiT that takes the base model's images to ``scale`` times the
size (Seedream 2.0's refiner, 512 -> 1024; here 64 -> 128 px on the tiny size).

Model. The base stage's pipeline (``refiner.base``: its conditioner, VAE, tokenizer, time-shift rule
and MMDiT config) with the MMDiT given ``cond_channels`` = the VAE's latent channels: the
conditioning is the low-resolution image upsampled bicubically to the output size and encoded by
the same VAE (posterior mean, normalised as the DiT's latents), concatenated to the noisy latent on
the channel axis before patchify (Flux Fill's convention, ``models/mmdit.py``). Concatenation keeps
the token count (extra tokens would double the attention's length) and aligns each conditioning
patch with the patch it conditions. Text conditioning is the base's, frozen.

Initialisation. ``init_from`` (by default every component from the base stage) with ``pad_init``
(by default the patch embedding ``mmdit/x_embedder/kernel``): the base DiT's embedding fills the
rows of the noisy latent's channels and the conditioning rows start at zero
(``checkpoint/init_from.py``), so at step 0 the refiner is the base DiT applied at the larger size
and ignores the conditioning; training teaches it to read it.

Data. Pairs of the synthetic world (``data/sr_pairs.py``): each scene rendered at ``hr_size`` (the
truth at the output size) and its LR copy (bicubic downsampling, blur, noise, JPEG; deterministic per
``data.seed``); with the VAE frozen, the HR posteriors and the conditioning latents are computed once
at start. The loss is pretrain's flow matching (``pretrain.model_functions``: logit-normal times
shifted for the HR size, CFG caption drop from the data section) with the conditioning latent in
the MMDiT's input. Only components outside ``frozen`` train (by default the DiT; the VAE must stay
frozen, since the pairs are encoded once).

Evaluation (every ``train.eval_every`` steps and at the end): ``num_eval_images`` pairs as a grid
of rows [bicubic upsampling of the LR image | refiner output | HR truth] (``sampling/generate.refine``
with the stage's sampler settings ``sample_steps``, ``sample_solver``, ``sample_guidance_scale``,
``sample_strength``).

The stage directory records the refiner's components (conditioner and VAE as the base's, the
conditioned MMDiT) and ``settings`` {'scale', 'base' (the base stage directory), 'hr_size',
'num_steps', 'solver', 'guidance_scale', 'strength' (the sampler the cascade uses by default),
'degradation'}: ``stages/sample.with_refiner`` rebuilds the cascade from it.
"""
import dataclasses
import logging
import time

import jax
import numpy as np

from seedream_jax.checkpoint.init_from import load_component, parse_sources, with_keep_init
from seedream_jax.checkpoint.stage_dir import StageDescription, open_stage
from seedream_jax.data import sr_pairs
from seedream_jax.eval.grid import image_grid
from seedream_jax.models.mmdit import MMDiT
from seedream_jax.models.partition import merge_params
from seedream_jax.sampling.generate import Refiner, RefinerSettings, refine
from seedream_jax.stages import common, pretrain
from seedream_jax.stages import vae as vae_stage
from seedream_jax.stages.sample import stage_pipeline
from seedream_jax.training import loop


# ---------------------------------------------------------------------------------------- model

def build_refiner(cfg, stage_cfg, workdir: str) -> Refiner:
    """The base stage's pipeline with the conditioned MMDiT, as a ``Refiner`` of ``stage_cfg.scale``."""
    pipe = stage_pipeline(open_stage(common.resolve(workdir, stage_cfg.base)), attention_impl=cfg.model.attention_impl)
    mmdit_cfg = dataclasses.replace(pipe.mmdit_cfg, cond_channels=pipe.vae_cfg.latent_channels)
    return Refiner(pipe.with_mmdit(mmdit_cfg), scale=int(stage_cfg.scale))


def sampler_settings(stage_cfg) -> RefinerSettings:
    return RefinerSettings(num_steps=int(stage_cfg.sample_steps), solver=str(stage_cfg.sample_solver),
                           guidance_scale=float(stage_cfg.sample_guidance_scale),
                           strength=float(stage_cfg.sample_strength))


def degradation(stage_cfg) -> sr_pairs.DegradationConfig:
    d = stage_cfg.degradation
    return sr_pairs.DegradationConfig(scale=int(stage_cfg.scale), blur_sigma=tuple(d.blur_sigma),
                                      noise_sigma=tuple(d.noise_sigma), jpeg_quality=tuple(d.jpeg_quality))


# ----------------------------------------------------------------------------------------- data

def pair_encoder(refiner: Refiner, vae_params, batch_size: int = 8):
    """``encode(hr, lr)`` for ``sr_pairs.WorldPairs``: HR posteriors (``latent_mean``,
    ``latent_logvar``) and ``cond_latents`` (``Refiner.condition`` of the LR images), float32 NumPy,
    in batches of ``batch_size`` (the VAE's mid-block attention over every latent pixel is the
    memory peak). Logs the time it took (at 128 px the VAE encoder dominates the stage's start)."""
    condition = jax.jit(lambda p, x: refiner.condition({"vae": p}, x))

    def encode(hr: np.ndarray, lr: np.ndarray) -> dict:
        t0 = time.time()
        mean, logvar = vae_stage.encode_images(refiner.pipe.vae, vae_params, hr, batch_size)
        cond = [np.asarray(condition(vae_params, common.images_to_model(lr[i:i + batch_size])))
                for i in range(0, len(lr), batch_size)]
        logging.info("refiner: encoded %d pairs (HR %s px) in %.0fs", len(hr), hr.shape[1:3], time.time() - t0)
        return {"latent_mean": mean, "latent_logvar": logvar, "cond_latents": np.concatenate(cond)}

    return encode


def pair_data(cfg, stage_cfg, workdir: str, refiner: Refiner, vae_source) -> sr_pairs.WorldPairs:
    """The stage's SR pairs (``sr_pairs.WorldPairs``) encoded with the VAE of ``vae_source``
    ((stage_dir, component path), an ``init_from`` source); batches tokenised for the conditioner
    (``pretrain.conditioning_batch_fn``) and keeping ``cond_latents``."""
    tokenise = pretrain.conditioning_batch_fn(refiner.pipe)
    vae_params = load_component(vae_source[0], vae_source[1])[0]
    return sr_pairs.WorldPairs(common.stage_data_cfg(cfg, stage_cfg), workdir, int(stage_cfg.train.batch_size),
                               hr_size=int(stage_cfg.hr_size), degradation=degradation(stage_cfg),
                               encode=pair_encoder(refiner, vae_params),
                               batch_fn=lambda b: {**tokenise(b), "cond_latents": b["cond_latents"]},
                               max_records=int(stage_cfg.max_records))


# ---------------------------------------------------------------------------------------- task

def init_sources(stage_cfg, workdir: str) -> dict:
    """``init_from`` parsed, with ``keep_init`` and ``pad_init`` attached (``init_from.with_keep_init``);
    the VAE must come from a stage (the pairs are encoded with it)."""
    sources = with_keep_init(parse_sources(stage_cfg.init_from, workdir), tuple(stage_cfg.keep_init),
                             pad_init=tuple(stage_cfg.pad_init))
    if "vae" not in sources:
        raise ValueError(f"refiner.init_from must name the stage of the trained VAE ('vae'), got {dict(stage_cfg.init_from)}")
    if "vae" not in [p.strip("/") for p in stage_cfg.frozen]:
        raise ValueError(f"refiner.frozen must hold 'vae' (the pairs are encoded once with it), got {tuple(stage_cfg.frozen)}")
    return sources


def grid_evaluation(refiner: Refiner, data: sr_pairs.WorldPairs, stage_cfg):
    """The Task's ``evaluate``: rows [bicubic | refiner | truth] of the first ``num_eval_images``
    pairs, refined from the EMA weights with the stage's sampler settings (None when 0 images)."""
    n = min(int(stage_cfg.num_eval_images), len(data.records))
    if n <= 0:
        return None
    lr, hr = data.lr[:n], data.hr[:n]
    prompts = [r["captions"]["en"]["short"] for r in data.records[:n]]
    bicubic = common.images_from_model(sr_pairs.upsample(common.images_to_model(lr), refiner.scale))
    settings = dataclasses.asdict(sampler_settings(stage_cfg))

    def evaluate(state, step):
        params = merge_params(state.ema_params or state.params, state.frozen)
        refined = refine(refiner, params, lr, prompts, **settings)
        pics = [p for row in zip(bicubic, refined, hr) for p in row]
        captions = [c for p in prompts for c in (f"bicubic: {p}", "refiner", "truth")]
        return {"samples": image_grid(pics, captions, columns=3)}

    return evaluate


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The refiner Task (module docstring)."""
    s = stage_cfg
    refiner = build_refiner(cfg, s, workdir)
    sources = init_sources(s, workdir)
    data = pair_data(cfg, s, workdir, refiner, sources["vae"])
    init_params, loss_fn = pretrain.model_functions(refiner.pipe, s, *data.image_size)
    return loop.Task(name="refiner", init_params=init_params, loss_fn=loss_fn, data=data, init_sources=sources,
                     evaluate=grid_evaluation(refiner, data, s))


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """The base's conditioner and VAE, the conditioned MMDiT, the base's schedule and tokenizer
    and the refiner's ``settings`` (module docstring)."""
    s = stage_cfg
    base = open_stage(common.resolve(workdir, s.base))
    parts = {name: (type(base.component(name)[0]), base.component(name)[1]) for name in ("conditioner", "vae")}
    parts["mmdit"] = (MMDiT, dataclasses.replace(base.component("mmdit")[1],
                                                 cond_channels=parts["vae"][1].latent_channels))
    settings = {"scale": int(s.scale), "base": base.directory, "hr_size": int(s.hr_size),
                **dataclasses.asdict(sampler_settings(s)),
                "degradation": dataclasses.asdict(degradation(s))}
    return StageDescription(components=parts, schedule=base.meta["schedule"], tokenizer=base.tokenizer(),
                            settings=settings)
