"""Continued training (aesthetic adapter) and SFT with generated negatives: style tags in the data,
tag dropout, init_from with keep_init, negative-tag guidance, and tiny ct / sft / sample runs."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from conftest import micro_config, write_random_pretrain_stage

from seedream_jax import config_lib
from seedream_jax.checkpoint.init_from import apply_init_from, parse_sources, restore_sharded, with_keep_init
from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.data import style_tags as T
from seedream_jax.data import synthetic as S
from seedream_jax.sampling import sampler as sampler_lib
from seedream_jax.stages import ct, pretrain, sft

SIZE = 16
ADAPTER = config_lib.ADAPTER_PATTERN


# ---------------------------------------------------------------------------------- style tags

def test_tag_vocabulary_round_trips_and_reads_scene_specs():
    assert T.ATTRIBUTES == ("palette", "lighting", "texture", "composition", "source") and T.TAG_SIZES == (3, 4, 3, 3, 1)
    row = T.from_names({"palette": "pastel", "lighting": "vignette"})
    assert row.tolist() == [2, 4, 0, 0, 0] and T.to_names(row) == {"palette": "pastel", "lighting": "vignette"}
    spec = S.Scene("beige", [S.ShapeObject("circle", "red", "large", "center")],
                   style=S.Style(palette="muted", lighting="flat", texture="stripes", composition="framed")).to_dict()
    assert T.to_names(T.from_spec(spec)) == {"palette": "muted", "lighting": "flat", "texture": "stripes",
                                             "composition": "framed"}
    assert T.from_spec({"background": "beige"}).tolist() == [0] * 5 and T.from_spec(None).tolist() == [0] * 5
    assert T.with_negative(row).tolist() == [2, 4, 0, 0, 1]
    assert T.merge(np.array([[1, 1, 1, 1, 0]]), T.from_names({"texture": "grain"})).tolist() == [[1, 1, 2, 1, 0]]
    assert T.zero_dropped_captions(np.array([[1, 2, 3, 1, 1], [1, 2, 3, 1, 0]]), ["", "a"]).tolist() == \
        [[0, 0, 0, 0, 1], [1, 2, 3, 1, 0]]
    with pytest.raises(ValueError, match="unknown palette 'neon'"):
        T.from_names({"palette": "neon"})
    with pytest.raises(ValueError, match="unknown attribute 'mood'"):
        T.from_names({"mood": "calm"})


def test_tags_are_dropped_at_the_configured_rate_and_source_never():
    rows = jnp.asarray(np.tile(np.array([[2, 3, 1, 2, 1]], np.int32), (40_000, 1)))
    for rate in (0.0, 0.2, 0.5):
        out = np.asarray(T.drop(jax.random.PRNGKey(3), rows, rate))
        dropped = (out == 0).mean(axis=0)
        np.testing.assert_allclose(dropped[:4], rate, atol=0.01)  # each style attribute, independently
        assert dropped[4] == 0.0  # the SFT source tag is never dropped
        kept = out[:, :4] != 0
        np.testing.assert_array_equal(out[:, :4][kept], np.asarray(rows)[:, :4][kept])
    both = (np.asarray(T.drop(jax.random.PRNGKey(4), rows, 0.5))[:, :2] == 0).all(axis=1).mean()
    assert abs(both - 0.25) < 0.01  # independent per attribute


# ------------------------------------------------------------------------ negative-tag guidance

def _toy_velocity(params, x, t, cond):
    e = jnp.take(params["tags"], cond["style_tags"], axis=0).sum(axis=1)  # [B, D]
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + t[:, None] + cond["c"] @ params["wc"] + e)
    return (h @ params["w2"]).reshape(x.shape)


def test_negative_tag_guidance_weight_zero_is_plain_cfg_exactly():
    r = np.random.default_rng(0)
    params = {"w1": r.normal(0, 0.3, (8, 16)), "wc": r.normal(0, 0.3, (4, 16)), "w2": r.normal(0, 0.3, (16, 8)),
              "tags": r.normal(0, 0.3, (5, 16))}
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    b = 3
    tags = jnp.asarray([[1, 2, 0, 0, 0], [0, 1, 1, 0, 0], [2, 0, 0, 1, 0]], jnp.int32)
    cond = {"c": jnp.asarray(r.normal(size=(b, 4)), jnp.float32), "style_tags": tags}
    uncond = {"c": jnp.zeros((1, 4)), "style_tags": jnp.zeros((1, 5), jnp.int32)}
    negative = {**cond, "style_tags": T.with_negative(tags)}
    noise = jnp.asarray(r.normal(size=(b, 2, 2, 2)), jnp.float32)
    plain = sampler_lib.SamplerConfig(num_steps=4, guidance_scale=3.0, shift=0.5)
    x_cfg = sampler_lib.sample_trajectory(_toy_velocity, params, noise, cond, uncond, plain)[0]
    x_zero = sampler_lib.sample_trajectory(_toy_velocity, params, noise, cond, uncond,
                                           sampler_lib.SamplerConfig(num_steps=4, guidance_scale=3.0, shift=0.5,
                                                                     negative_scale=0.0), negative=negative)[0]
    np.testing.assert_array_equal(np.asarray(x_zero), np.asarray(x_cfg))
    # g_neg != 0: v_u + g (v_c - v_u) + g_neg (v_c - v_neg), from one batched call, against separate calls
    x, tb = noise, jnp.full((b,), 0.7)
    v = sampler_lib.guided_velocity(_toy_velocity, params, cond, uncond, 3.0, negative, 1.5)(x, 0.7)
    v_u = _toy_velocity(params, x, tb, jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:]), uncond))
    v_c, v_n = _toy_velocity(params, x, tb, cond), _toy_velocity(params, x, tb, negative)
    np.testing.assert_allclose(np.asarray(v), np.asarray(v_u + 3.0 * (v_c - v_u) + 1.5 * (v_c - v_n)), atol=1e-5)
    assert float(jnp.abs(v_c - v_n).max()) > 1e-3  # the negative tags change the velocity


# ------------------------------------------------------------------------ a tiny world and stages

def _config():
    """A tiny model (16 px, 2x VAE, 4x4 patches; one block of each kind), a styled record world of
    32 scenes, and ct / sft sections of a few steps."""
    c = micro_config(SIZE, num_images=32)
    styled = config_lib.data_section(**dict(c.data.to_dict(), format="arrayrecord", path="data/styled",
                                            bucket_max_ratio=1.0, bucket_multiple=8, random_crop=False))
    c.data_styled = ConfigDict(dict(kind="data", style_probability=0.75, data=styled))
    for section in (c.ct, c.sft):
        section.data = styled
        section.train.update(dict(steps=3, batch_size=8, checkpoint_every=3, log_every=1, ema_decay=0.0,
                                  async_checkpoint=False))
        section.optimizer.update(dict(warmup_steps=0))
    c.sft.max_records = 8
    c.sft.generate.update(dict(num_steps=2, guidance_scale=2.0, batch_size=4))
    c.sample.update(dict(prompts=("a large red circle", "一个蓝色星形"), height=SIZE, width=SIZE, num_steps=3,
                         guidance_scale=2.0, batch_size=2))
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with the in-memory world, the styled record world, a tokenizer and a 'pretrain'
    stage of random weights (no adapter)."""
    from seedream_jax.stages import data as data_stage, tokenizer as tokenizer_stage
    wd = str(tmp_path_factory.mktemp("ct"))
    cfg = _config()
    data_stage.run(cfg, cfg.data, wd)
    out = data_stage.run(cfg, cfg.data_styled, wd)
    assert out["num_records"] == 32 and out["styled"] > 0
    tokenizer_stage.run(cfg, None, wd)
    write_random_pretrain_stage(cfg, wd, SIZE)
    return wd


def _flat(tree):
    import flax
    return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(nn.unbox(tree)).items()}


def test_a_vae_stage_trains_on_its_own_arrayrecord_data_section(workdir):
    """``vae.data`` in the ArrayRecord format (the styled world) gives the VAE those records'
    images, not the run's synthetic world (what the stage once read whatever the section said)."""
    from seedream_jax.stages import vae as vae_stage
    cfg = _config()
    plain = vae_stage.training_images(cfg.data, workdir)
    styled = vae_stage.training_images(cfg.ct.data, workdir)
    assert styled.shape == plain.shape == (32, SIZE, SIZE, 3) and styled.dtype == np.uint8
    differs = sum(not np.array_equal(a, b) for a, b in zip(plain, styled))
    assert differs >= 8, differs  # 3/4 of the records carry a style


def test_batches_carry_each_records_style_tags_and_config_tags_override(workdir):
    cfg = _config()
    pipe = ct.adapter_pipeline(cfg, cfg.ct, workdir)
    section = ct.stage_with_data(cfg.ct, cfg.ct.data)
    data = pretrain.image_data(cfg, workdir, section, pipe, None, style_tags=True)
    from seedream_jax.data import arrayrecord_io
    source = arrayrecord_io.ArrayRecordSource(os.path.join(workdir, "data/styled"), decode=True)
    expected = {i: T.from_spec(source[i].spec) for i in range(len(source))}
    seen_styled = 0
    for _ in range(4):
        batch = next(data)
        assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["style_tags"].shape == (8, T.NUM_ATTRIBUTES) and batch["style_tags"].dtype == np.int32
        seen_styled += int((batch["style_tags"] > 0).any(axis=1).sum())
    assert seen_styled > 0
    # the rows the pipeline loads hold each record's style
    rows = [data._load(slot) for slot in range(8)]
    for row in rows:
        np.testing.assert_array_equal(row["style_tags"], expected[int(row["index"])])
    fixed = pretrain.conditioning_batch_fn(pipe, T.from_names({"palette": "pastel"}))
    out = fixed({"image": np.zeros((2, SIZE, SIZE, 3), np.float32), "caption": ["a red circle", ""],
                 "style_tags": np.array([[1, 2, 3, 1, 0], [1, 2, 3, 1, 0]], np.int32)})
    assert out["style_tags"].tolist() == [[2, 2, 3, 1, 0], [0, 0, 0, 0, 0]]


def _drawn_params(pipe, section, seed=1):
    """(trainable, frozen) NumPy trees of ``pipe``'s shapes (jax.eval_shape: nothing compiled) with
    random values, the adapter's value projections zero as their initialiser makes them."""
    shapes = nn.unbox(jax.eval_shape(pretrain.model_functions(pipe, section, SIZE, SIZE)[0], jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "style_value" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        return (float(name.endswith("['scale']")) + 0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_init_from_keeps_the_adapter_init_and_fails_clearly_on_other_missing_params(workdir):
    import dataclasses
    from seedream_jax.sampling.generate import TextToImage
    cfg = _config()
    pipe = ct.adapter_pipeline(cfg, cfg.ct, workdir)
    assert pipe.mmdit_cfg.style_tag_sizes == T.TAG_SIZES
    trainable, frozen = _drawn_params(pipe, cfg.ct)
    fresh = _flat(trainable)
    adapter = [k for k in fresh if "style_" in k]
    assert adapter and all(k.startswith("mmdit/") for k in adapter) and any("style_value" in k for k in adapter)
    sources = parse_sources(cfg.ct.init_from, workdir)
    with pytest.raises(ValueError, match=r"missing=\['style_adapter.*keep_init"):
        apply_init_from(trainable, frozen, sources)
    params, _ = apply_init_from(trainable, frozen, with_keep_init(sources, (ADAPTER,)))
    base = _flat(restore_raw_state(os.path.join(workdir, "pretrain"))[0]["params"])
    got = _flat(params)
    for k, v in got.items():
        np.testing.assert_array_equal(v, fresh[k] if k in adapter else base[k], err_msg=k)
    # the sharded form (the loop's fresh start) reads every leaf but the adapter's
    cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), (trainable, frozen))
    restored = restore_sharded(*abstract, with_keep_init(sources, (ADAPTER,)))
    keys = {"/".join(k) for k in restored["params"]}
    assert not any("style_" in k for k in keys) and len(keys) == len(fresh) - len(adapter)
    # a missing parameter outside the patterns fails, naming it
    two = TextToImage(pipe.conditioner_cfg, dataclasses.replace(pipe.mmdit_cfg, num_double_blocks=2), pipe.vae_cfg,
                      pipe.tokenizer)
    with pytest.raises(ValueError, match=r"missing=\['transformer_blocks_1/"):
        apply_init_from(*_drawn_params(two, cfg.ct), with_keep_init(sources, (ADAPTER,)))
    # step 0: the base's weights with the adapter's zero projections give the base's velocity for any tags
    base_pipe = pretrain.build_pipeline(cfg, workdir, cfg.pretrain)[0]
    base_params = open_stage(os.path.join(workdir, "pretrain")).params("raw")
    full = {**base_params, "mmdit": params["mmdit"]}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3,) + pipe.latent_shape(SIZE, SIZE)), jnp.float32)
    cond = {"context": jnp.ones((3, 4, 32)) * 0.1, "mask": jnp.ones((3, 4), bool), "pooled": jnp.ones((3, 32)) * 0.2}
    v0 = base_pipe.velocity(base_params, x, jnp.full((3,), 0.6), cond)
    tags = jnp.asarray([[1, 2, 3, 1, 1], [3, 4, 1, 2, 0], [0, 0, 0, 0, 0]], jnp.int32)
    v1 = pipe.velocity(full, x, jnp.full((3,), 0.6), {**cond, "style_tags": tags})
    np.testing.assert_allclose(np.asarray(v1), np.asarray(v0), atol=1e-6)


def _run(workdir, stages, settings=None):
    from seedream_jax.main import run_stages
    cfg = _config()
    for key, value in (settings or {}).items():
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[last] = value
    cfg.stages = tuple(stages)
    return cfg, run_stages(cfg, workdir)


@pytest.mark.slow
def test_ct_adapter_only_group_then_sample_and_sft_with_negatives(workdir):
    # ct: the main group at lr 0, the adapter at its own lr: only adapter parameters move
    cfg, out = _run(workdir, ["ct", "sample_ct"], {
        "ct.optimizer.lr": 0.0, "ct.optimizer.groups.adapter.lr": 1e-2,
        "sample_ct": ConfigDict(dict(_config().sample.to_dict(), kind="sample", checkpoint="ct", output="samples_ct",
                                     style_tags={"palette": "pastel"}, negative_scale=0.0))})
    assert out["ct"]["steps"] == 3 and not out["ct"]["preempted"]
    stage = open_stage(os.path.join(workdir, "ct"))
    assert stage.kind == "ct" and tuple(stage.meta["components"]["mmdit"]["config"]["style_tag_sizes"]) == T.TAG_SIZES
    assert stage.meta["init_from"]["mmdit"]["source"] == os.path.join(workdir, "pretrain")
    after = _flat(restore_raw_state(os.path.join(workdir, "ct"))[0]["params"])
    before = _flat(restore_raw_state(os.path.join(workdir, "pretrain"))[0]["params"])
    moved = [k for k in after if "style_" in k and np.any(after[k] != 0)]
    assert moved, "the adapter did not move"
    for k, v in after.items():
        if "style_" not in k:
            np.testing.assert_array_equal(v, before[k], err_msg=k)  # bit-identical
    assert out["sample_ct"]["num_images"] == 2 and out["sample_ct"]["style_tags"] == "palette=pastel"
    # sampling the ct stage: negative tags with weight 0 are plain CFG, exactly; a weight moves the images
    from seedream_jax.stages.sample import load_pipeline
    pipe, params = load_pipeline(cfg, workdir, "ct", use_ema=False)
    kw = dict(height=SIZE, width=SIZE, num_steps=3, guidance_scale=2.0, style_tags={"palette": "pastel"})
    plain = pipe(params, ["a red circle", "a blue star"], **kw)
    zero = pipe(params, ["a red circle", "a blue star"], negative_scale=0.0,
                negative_tags=T.with_negative(T.from_names({"palette": "pastel"})), **kw)
    np.testing.assert_array_equal(zero, plain)
    # sft from ct: 8 curated records, a quarter of each batch generated by ct under source=generated
    cfg, out = _run(workdir, ["sft"], {"sft.negative_share": 0.25})
    assert out["sft"]["steps"] == 3
    assert open_stage(os.path.join(workdir, "sft")).kind == "sft"
    negatives = np.load(os.path.join(workdir, "sft/generated.npz"))["image"]
    assert negatives.shape == (8, SIZE, SIZE, 3) and os.path.exists(os.path.join(workdir, "sft/generated_grid.png"))
    curated = sft.curated_set(cfg, cfg.sft, workdir)
    data = sft.MixedBatches(curated, negatives, 4, 0.25, 0, 0.0, pretrain.conditioning_batch_fn(pipe))
    batch = next(data)
    assert batch["style_tags"][:, T.SOURCE_INDEX].tolist() == [0, 0, 0, 1]
    plain_sft = sft.MixedBatches(curated, None, 4, 0.0, 0, 0.0, pretrain.conditioning_batch_fn(pipe))
    assert not next(plain_sft)["style_tags"][:, T.SOURCE_INDEX].any()
