"""The refiner: the MMDiT's conditioning input, zero-padded init from the base DiT, the SR pairs'
degradations, the refiner stage, and the base -> refiner cascade in sampling."""
import dataclasses
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from ml_collections import ConfigDict

from conftest import micro_config, write_random_pretrain_stage

from seedream_jax.checkpoint.init_from import apply_init_from, zero_padded
from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.checkpoint.stage_dir import frozen_sources, open_stage
from seedream_jax.data import sr_pairs, synthetic
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig
from seedream_jax.models.partition import merge_params
from seedream_jax.sampling.generate import Cascade, Refiner, RefinerSettings, refine
from seedream_jax.stages import refiner as refiner_stage
from seedream_jax.stages.runner import run_stage
from seedream_jax.stages.sample import load_pipeline, with_refiner

SIZE = 16  # the base's images in the stage tests; the refiner's are 32 px
TINY = MMDiTConfig(in_channels=4, patch_size=2, num_heads=2, head_dim=16, num_double_blocks=1, num_single_blocks=1,
                   context_dim=24, pooled_dim=24, axes_dims=(4, 6, 6), rope_base_grid=4)


def _inputs(b=2, h=8, w=12, c=4, seed=0):
    r = np.random.default_rng(seed)
    return (r.normal(size=(b, h, w, c)).astype(np.float32), np.array([0.9, 0.3], np.float32)[:b],
            r.normal(size=(b, 5, 24)).astype(np.float32), np.array([[1, 1, 1, 0, 0], [1] * 5], bool)[:b],
            r.normal(size=(b, 24)).astype(np.float32))


# ------------------------------------------------------------------------------- the MMDiT input

def test_cond_latents_widen_only_the_patch_embedding_and_zero_rows_ignore_them():
    x, t, ctx, mask, pooled = _inputs()
    cond = np.random.default_rng(1).normal(size=x.shape[:3] + (4,)).astype(np.float32)
    refiner_cfg = dataclasses.replace(TINY, cond_channels=4)
    shapes = [nn.unbox(jax.eval_shape(lambda: MMDiT(c).init(jax.random.PRNGKey(0), x, t, ctx, mask, pooled,
                                                            **kw)["params"]))
              for c, kw in ((TINY, {}), (refiner_cfg, {"cond_latents": cond}))]
    flat_base, flat_ref = (flax.traverse_util.flatten_dict(flax.core.unfreeze(p)) for p in shapes)
    r = np.random.default_rng(3)  # random weights everywhere (the adaLN-Zero init would output 0)
    flat_base = {k: (k[-1] == "scale") + r.normal(0, 0.2, v.shape).astype(np.float32) for k, v in flat_base.items()}
    base = flax.traverse_util.unflatten_dict(flat_base)
    assert flat_base.keys() == flat_ref.keys()
    grown = {k for k in flat_ref if flat_ref[k].shape != flat_base[k].shape}
    assert grown == {("x_embedder", "kernel")} and flat_ref[("x_embedder", "kernel")].shape == (8 * 4, 32)
    # the base's rows first (patchify orders features (c, ph, pw): the latent's channels, then cond's), zeros after
    params = flax.traverse_util.unflatten_dict(
        {k: zero_padded(v, flat_ref[k].shape) if k in grown else v for k, v in flat_base.items()})
    v_base = MMDiT(TINY).apply({"params": base}, x, t, ctx, mask, pooled)
    v_ref = MMDiT(refiner_cfg).apply({"params": params}, x, t, ctx, mask, pooled, cond_latents=cond)
    assert v_ref.shape == x.shape
    np.testing.assert_allclose(np.asarray(v_ref), np.asarray(v_base), atol=1e-6, rtol=0)
    assert float(jnp.abs(v_base).max()) > 0.05
    # with weights in the cond rows the conditioning changes the output
    noise = np.random.default_rng(2).normal(0, 0.2, (32, 32)) * (np.arange(32)[:, None] >= 16)
    params["x_embedder"]["kernel"] = params["x_embedder"]["kernel"] + noise.astype(np.float32)
    v_cond = MMDiT(refiner_cfg).apply({"params": params}, x, t, ctx, mask, pooled, cond_latents=cond)
    assert float(jnp.abs(v_cond - v_base).max()) > 1e-2


def test_cond_latents_are_checked():
    x, t, ctx, mask, pooled = _inputs()
    refiner = MMDiT(dataclasses.replace(TINY, cond_channels=3))
    with pytest.raises(ValueError, match=r"cond_channels=3: cond_latents \(2, 8, 12, 3\) is required"):
        refiner.init(jax.random.PRNGKey(0), x, t, ctx, mask, pooled)
    with pytest.raises(ValueError, match=r"cond_latents shape \(2, 8, 6, 3\) != expected \(2, 8, 12, 3\)"):
        refiner.init(jax.random.PRNGKey(0), x, t, ctx, mask, pooled, cond_latents=np.zeros((2, 8, 6, 3)))
    with pytest.raises(ValueError, match="given to a model with cond_channels=0"):
        MMDiT(TINY).init(jax.random.PRNGKey(0), x, t, ctx, mask, pooled, cond_latents=np.zeros((2, 8, 12, 4)))
    with pytest.raises(ValueError, match="cond_channels must be >= 0, got -1"):
        dataclasses.replace(TINY, cond_channels=-1)


# ----------------------------------------------------------------------------------- the pairs

def test_upsample_is_torch_bicubic_and_degradations_are_deterministic_per_seed():
    x = np.random.default_rng(0).uniform(-1, 1, (2, 6, 10, 3)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=2, mode="bicubic", align_corners=False)
    ref = ref.clamp(-1, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(sr_pairs.upsample(x, 2)), ref, atol=1e-6, rtol=0)
    scene = synthetic.scene_at(synthetic.SyntheticWorldConfig(text_probability=1.0), 3)
    hr = synthetic.render_scene(scene, 64)
    cfg = sr_pairs.DegradationConfig()
    a, b = sr_pairs.low_resolution(hr, cfg, 7, 3), sr_pairs.low_resolution(hr, cfg, 7, 3)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    others = [sr_pairs.low_resolution(hr, cfg, seed, index) for seed, index in ((8, 3), (7, 4))]
    assert all(np.abs(o.astype(int) - a).max() > 5 for o in others)
    clean = sr_pairs.downsample(hr, 2)
    assert 1.0 < np.abs(a.astype(float) - clean).mean() < 12.0  # degraded, but the same picture
    with pytest.raises(ValueError, match=r"blur_sigma=\(0.0, 1.0\): sigmas must be > 0"):
        sr_pairs.DegradationConfig(blur_sigma=(0.0, 1.0))
    with pytest.raises(ValueError, match="not a multiple of the scale 2"):
        sr_pairs.downsample(hr[:63], 2)


# ----------------------------------------------------------------------------- stage and cascade

def _config():
    c = micro_config(SIZE, num_images=16)
    c.refiner.update(dict(hr_size=2 * SIZE, num_eval_images=0, sample_steps=2))
    c.refiner.train.update(dict(steps=2, batch_size=8, checkpoint_every=2, log_every=1, ema_decay=0.0,
                                async_checkpoint=False))
    c.refiner.optimizer.update(dict(lr=0.0, warmup_steps=0))
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A world of 16 scenes, a tokenizer, a random 'pretrain' stage and a 'refiner' stage trained
    2 steps at learning rate 0 (so its weights are its initialisation from the base)."""
    from seedream_jax.stages import data as data_stage, tokenizer as tokenizer_stage
    wd = str(tmp_path_factory.mktemp("refiner"))
    cfg = _config()
    data_stage.run(cfg, cfg.data, wd)
    tokenizer_stage.run(cfg, None, wd)
    write_random_pretrain_stage(cfg, wd, SIZE)
    out = run_stage(cfg, "refiner", wd)
    assert out["steps"] == 2 and not out["preempted"]
    return wd


def test_refiner_stage_starts_as_the_base_dit_and_describes_itself(workdir):
    stage = open_stage(os.path.join(workdir, "refiner"))
    assert stage.kind == "refiner" and stage.meta["components"]["mmdit"]["config"]["cond_channels"] == 4
    settings = stage.meta["settings"]
    assert (settings["scale"], settings["hr_size"], settings["num_steps"]) == (2, 2 * SIZE, 2)
    assert settings["base"] == os.path.join(workdir, "pretrain")
    ref = stage.params("raw")
    base = restore_raw_state(os.path.join(workdir, "pretrain"))[0]
    base = merge_params(base["params"], base["frozen"])
    kernel, base_kernel = ref["mmdit"]["x_embedder"]["kernel"], base["mmdit"]["x_embedder"]["kernel"]
    np.testing.assert_array_equal(kernel[:base_kernel.shape[0]], base_kernel)
    assert not kernel[base_kernel.shape[0]:].any()  # the conditioning rows start at zero
    # the frozen conditioner and VAE are the base's, read from its checkpoint (stored there, not in the refiner's)
    frozen = {k: v for k, v in ref.items() if k != "mmdit"}
    assert sorted(frozen) == sorted(frozen_sources(os.path.join(workdir, "refiner"))) == ["conditioner", "vae"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, frozen, {k: base[k] for k in frozen})
    # the host form of init_from pads the same way; without pad_init the widened kernel fails, named
    noisy = jax.tree_util.tree_map(lambda a: a + 1.0, {"mmdit": ref["mmdit"]})
    sources = refiner_stage.init_sources(_config().refiner, workdir)
    host, _ = apply_init_from(noisy, frozen, sources)
    np.testing.assert_array_equal(host["mmdit"]["x_embedder"]["kernel"], kernel)
    with pytest.raises(ValueError, match=r"misshaped=\['x_embedder/kernel: \(64, 32\) vs \(128, 32\)'\]"):
        apply_init_from(noisy, frozen, {k: v[:2] for k, v in sources.items()})
    # at init the refiner is the base DiT at 2x, whatever the conditioning
    refiner = Refiner(load_pipeline(_config(), workdir, "refiner")[0])
    pipe, _ = load_pipeline(_config(), workdir, "pretrain")
    lat = jnp.asarray(np.random.default_rng(0).normal(size=(2,) + pipe.latent_shape(2 * SIZE, 2 * SIZE)), jnp.float32)
    cond = pipe.encode(base, {k: v for k, v in _tokens(pipe).items()})
    t = jnp.array([0.8, 0.4])
    v_base = pipe.velocity(base, lat, t, cond)
    v_ref = refiner.pipe.velocity(ref, lat, t, {**cond, "cond_latents": 3.0 * lat[..., ::-1]})
    np.testing.assert_allclose(np.asarray(v_ref), np.asarray(v_base), atol=1e-5, rtol=0)
    assert float(jnp.abs(v_base).max()) > 0.05


def _tokens(pipe, prompts=("a large red circle", "一个蓝色星形")):
    from seedream_jax.models.conditioner import tokenize_prompts
    return tokenize_prompts(list(prompts), pipe.tokenizer, pipe.conditioner_cfg)


def test_refiner_training_steps_reduce_the_loss(workdir):
    cfg = _config()
    task = refiner_stage.build_task(cfg, cfg.refiner, workdir)
    batch = next(task.data)
    assert batch["cond_latents"].shape == batch["latent_mean"].shape == (8, SIZE, SIZE, 4)  # 2x VAE: 32 px -> 16
    refiner = os.path.join(workdir, "refiner")
    trainable = restore_raw_state(refiner)[0]["params"]
    frozen = {k: v for k, v in open_stage(refiner).params("raw").items() if k not in trainable}  # from the base
    assert set(trainable) == {"mmdit"} and set(frozen) == {"conditioner", "vae"}
    rng = jax.random.PRNGKey(0)  # the same batch, times and noise at every step
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p: task.loss_fn(p, frozen, batch, rng)[0]))
    tx = optax.adam(3e-3)
    state, p, losses = tx.init(trainable), trainable, []
    for _ in range(9):
        loss, grads = loss_and_grad(p)
        losses.append(float(loss))
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    before, after = losses[0], losses[-1]
    print(f"refiner loss on one batch: {before:.4f} -> {after:.4f} after 8 Adam steps")
    assert after < 0.9 * before


def test_cascade_is_refine_of_the_base_images_at_twice_the_size(workdir):
    cfg = _config()
    section = ConfigDict(dict(cfg.sample.to_dict(), refiner="refiner", refiner_steps=0, refiner_guidance_scale=2.0))
    cascade, params = with_refiner(cfg, workdir, section, *load_pipeline(cfg, workdir, "pretrain"))
    assert isinstance(cascade, Cascade) and cascade.settings == RefinerSettings(2, "euler", 2.0)
    prompts = ["a large red circle", "一个蓝色星形"]
    kw = dict(height=64, width=64, num_steps=2, guidance_scale=2.0, seed=3)
    out = cascade(params, prompts, **kw)
    assert out.shape == (2, 128, 128, 3) and out.dtype == np.uint8
    low = cascade.base(params["base"], prompts, **kw)
    again = refine(cascade.refiner, params["refiner"], low, prompts, num_steps=2, guidance_scale=2.0, seed=3)
    np.testing.assert_array_equal(out, again)
    other_seed = refine(cascade.refiner, params["refiner"], low, prompts, num_steps=2, guidance_scale=2.0, seed=4)
    assert np.abs(other_seed.astype(int) - out).max() > 0
    with pytest.raises(ValueError, match="expected uint8 images"):
        refine(cascade.refiner, params["refiner"], low.astype(np.float32), prompts)
