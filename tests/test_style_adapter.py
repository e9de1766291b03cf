"""The VMix-style aesthetic (style-tag) adapter of the MMDiT (``models/style_adapter.py``):
zero-init equality, the adapter-less tree unchanged, tags changing the output once trained, the
optimizer pattern selecting exactly the adapter, and the PyTorch export (diffusers Flux + the
adapter file + ``attn.to_v`` hooks) matching JAX, with an export -> import round trip."""
import functools
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import max_abs_diff, perturbed
from seedream_jax.interop import convert, flux, torch_pipeline
from seedream_jax.models import style_adapter
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig

SIZES = (3, 4, 3, 3, 1)  # palette, lighting, texture, composition, source ("generated")
BASE = MMDiTConfig(in_channels=4, patch_size=2, num_heads=2, head_dim=16, num_double_blocks=2, num_single_blocks=1,
                   context_dim=32, pooled_dim=24, axes_dims=(4, 6, 6), rope_base_grid=4)
CFG = MMDiTConfig(**{**BASE.__dict__, "style_tag_sizes": SIZES, "style_dim": 8})


def _inputs(b=3, h=8, w=8, l=5, seed=0):
    r = np.random.default_rng(seed)
    mask = np.ones((b, l), bool)
    mask[0, 3:] = False
    return (r.normal(size=(b, h, w, 4)).astype(np.float32), r.uniform(0.05, 0.95, size=(b,)).astype(np.float32),
            r.normal(size=(b, l, 32)).astype(np.float32), mask, r.normal(size=(b, 24)).astype(np.float32))


@functools.partial(jax.jit, static_argnums=(0,))
def _apply(cfg, params, args, tags=None):
    """MMDiT(cfg) velocity, jitted (one compile per config and tag structure)."""
    return MMDiT(cfg).apply({"params": params}, *args, style_tags=tags)


def _init(cfg):
    return nn.meta.unbox(jax.jit(MMDiT(cfg).init)(jax.random.PRNGKey(0), *_inputs())["params"])


def _random_tags(b, seed):
    r = np.random.default_rng(seed)
    return np.stack([r.integers(0, n + 1, size=b) for n in SIZES], axis=1).astype(np.int32)


def _split(params):
    flat = convert.flatten(params)
    base = {p: v for p, v in flat.items() if not style_adapter.is_style_path(p)}
    style = {p: v for p, v in flat.items() if style_adapter.is_style_path(p)}
    return flax.traverse_util.unflatten_dict(base), flax.traverse_util.unflatten_dict(style)


def _merge(*trees):
    out = {}
    for t in trees:
        out.update(convert.flatten(t))
    return flax.traverse_util.unflatten_dict(out)


@pytest.fixture(scope="module")
def init():
    """(adapter-less init, adapter init): unboxed parameter trees from the same key."""
    return _init(BASE), _init(CFG)


def test_adapterless_tree_unchanged_and_pattern_selects_exactly_the_adapter(init):
    base, full = init
    base_flat, full_flat = convert.flatten(base), convert.flatten(full)
    assert not any(style_adapter.is_style_path(p) for p in base_flat)
    # The adapter only adds leaves: every base leaf is there, with the same shape and init value.
    assert set(base_flat) <= set(full_flat)
    assert all(np.array_equal(base_flat[p], full_flat[p]) for p in base_flat)
    style = sorted("/".join(p) for p in full_flat if p not in base_flat)
    assert "style_adapter/tag_embedding_0" in style and "transformer_blocks_1/attn/style_value/kernel" in style
    assert len(style) == len(SIZES) + 4 + 2 * BASE.num_double_blocks
    pattern = re.compile(style_adapter.STYLE_PARAM_PATTERN)
    selected = {"/".join(p) for p in full_flat if pattern.fullmatch("mmdit/" + "/".join(p))}
    assert selected == set(style)
    # The adapter's axis names are kept (sharding rules apply to it).
    boxed = jax.eval_shape(MMDiT(CFG).init, jax.random.PRNGKey(0), *_inputs())["params"]
    assert boxed["transformer_blocks_0"]["attn"]["style_value"]["kernel"].names == ("embed", "heads")
    assert boxed["style_adapter"]["tag_embedding_0"].names == (None, "embed")
    # The diffusers export table is unchanged for an adapter-less model.
    assert flux.mmdit_to_diffusers_config(BASE) == flux.mmdit_to_diffusers_config(CFG)


def test_zero_init_output_equals_the_adapterless_model_for_any_tags(init):
    """A pretrained base (perturbed: non-trivial) + a freshly initialised adapter = the base."""
    base, full = init
    base_p = perturbed(base, seed=1)
    _, style = _split(full)
    params = _merge(base_p, style)
    args = _inputs()
    ref = np.asarray(_apply(BASE, base_p, args))
    assert np.abs(ref).max() > 0.1
    worst = 0.0
    for tags in [np.zeros((3, len(SIZES)), np.int32)] + [_random_tags(3, s) for s in range(5)]:  # None: = zeros
        out = np.asarray(_apply(CFG, params, args, tags))
        worst = max(worst, max_abs_diff(out, ref))
    print(f"style adapter at init vs the adapter-less model, 6 tag sets: max abs diff {worst:.1e}")
    assert worst <= 1e-6
    # It still learns from step 0: the value projections get a gradient (the tag encoder not yet).
    tags = _random_tags(3, 9)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(_apply(CFG, p, args, tags) ** 2)))(params)
    assert float(jnp.abs(grads["transformer_blocks_0"]["attn"]["style_value"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["style_adapter"]["mlp_in"]["kernel"]).max()) == 0


def test_trained_adapter_tags_steer_the_output(init):
    _, full = init
    params = perturbed(full, seed=2)
    args = _inputs()
    run = lambda tags, cfg=CFG, p=params: np.asarray(_apply(cfg, p, args, tags))
    a, b = _random_tags(3, 0), _random_tags(3, 1)
    out_a, out_b = run(a), run(b)
    assert max_abs_diff(out_a, out_b) > 1e-3
    # One attribute changed in one image: only that image moves.
    c = a.copy()
    c[1, 1] = (a[1, 1] % SIZES[1]) + 1
    out_c = run(c)
    assert max_abs_diff(out_c[1], out_a[1]) > 1e-4
    assert max_abs_diff(out_c[[0, 2]], out_a[[0, 2]]) <= 1e-6
    # All absent (every id 0) is what None means: the learned "no style" vector e_0, which after
    # training is not the adapter-less model's output.
    absent = run(np.zeros((3, len(SIZES)), np.int32))
    assert np.array_equal(absent, run(None))
    base_p, _ = _split(params)
    assert max_abs_diff(absent, run(None, BASE, base_p)) > 1e-3
    # Remat of the double blocks changes nothing.
    remat = MMDiTConfig(**{**CFG.__dict__, "remat_policy": "double=full"})
    assert max_abs_diff(run(a, remat), out_a) <= 1e-6
    # An id outside the attribute's range is loud (NaN), not silently another style.
    bad = a.copy()
    bad[0, 0] = SIZES[0] + 1
    assert np.isnan(run(bad)[0]).all()


def test_tags_given_to_a_model_without_adapter_or_misshaped_fail_clearly(init):
    base, full = init
    args = _inputs()
    with pytest.raises(ValueError, match="no style adapter"):
        MMDiT(BASE).apply({"params": base}, *args, style_tags=_random_tags(3, 0))
    with pytest.raises(ValueError, match=r"style_tags must be int \[batch=3, attributes=5\]"):
        MMDiT(CFG).apply({"params": full}, *args, style_tags=np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="at least|>= 1"):
        MMDiTConfig(**{**BASE.__dict__, "style_tag_sizes": (3, 0)})


def _export(params, cfg, folder):
    flux.export_mmdit(params, cfg, folder)
    from diffusers import FluxTransformer2DModel
    model = torch_pipeline.load_strict(FluxTransformer2DModel, folder, "transformer", local_files_only=True,
                                       use_safetensors=True).eval()
    return model, torch_pipeline.StyleAdapter.from_file(f"{folder}/{torch_pipeline.STYLE_FILE}")


def test_torch_export_with_hooks_matches_jax(init, tmp_path):
    """Perturbed base + adapter -> diffusers Flux + seedream_style_adapter.safetensors: the hooks on
    each double block's attn.to_v reproduce the JAX model (fp32, 1e-5); without them they do not."""
    _, full = init
    params = perturbed(full, seed=3)
    lat, t, ctx, mask, pooled = _inputs()
    tags = _random_tags(3, 5)
    tags[2] = 0  # one image with every attribute absent
    ours = np.asarray(_apply(CFG, params, (lat, t, ctx, mask, pooled), tags))
    base_p, _ = _split(params)
    plain = np.asarray(_apply(BASE, base_p, (lat, t, ctx, mask, pooled)))
    model, adapter = _export(params, CFG, str(tmp_path))
    assert adapter.tag_sizes == SIZES
    img_ids, txt_ids = flux.flux_position_ids(CFG, 8, 8, ctx.shape[1])
    args = (torch_pipeline.pack_latents(torch.from_numpy(lat), 2), torch.from_numpy(t), torch.from_numpy(ctx),
            torch.from_numpy(mask), torch.from_numpy(pooled), torch.from_numpy(img_ids), torch.from_numpy(txt_ids))
    unpack = lambda v: torch_pipeline.unpack_latents(v, 8, 8, 2).numpy()
    with torch.no_grad():
        theirs = unpack(torch_pipeline.flux_velocity(model, *args, style_tags=torch.from_numpy(tags),
                                                     style_adapter=adapter))
        absent = unpack(torch_pipeline.flux_velocity(model, *args, style_adapter=adapter))
        without = unpack(torch_pipeline.flux_velocity(model, *args))
    d = max_abs_diff(ours, theirs)
    print(f"MMDiT + style adapter vs diffusers Flux + StyleAdapter hooks: max abs diff {d:.2e}")
    assert d <= 1e-5
    ours_absent = np.asarray(_apply(CFG, params, (lat, t, ctx, mask, pooled)))
    assert max_abs_diff(ours_absent, absent) <= 1e-5
    assert max_abs_diff(plain, without) <= 1e-5   # the transformer alone is the base model
    assert max_abs_diff(ours, without) > 1e-2      # so the hooks carry the adapter
    # The hooks are removed after the call; tags without an adapter are refused.
    assert all(not b.attn.to_v._forward_hooks for b in model.transformer_blocks)
    with pytest.raises(ValueError, match="without a style_adapter"):
        torch_pipeline.flux_velocity(model, *args, style_tags=torch.from_numpy(tags))
    with pytest.raises(ValueError, match="attribute 0 takes ids 0"):
        adapter(torch.tensor([[9, 0, 0, 0, 0]]))


def test_export_import_round_trip(init, tmp_path):
    _, full = init
    params = perturbed(full, seed=4)
    flux.export_mmdit(params, CFG, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                         flux.STYLE_FILE]
    assert flux.STYLE_FILE == torch_pipeline.STYLE_FILE
    cfg, back = flux.load_mmdit(str(tmp_path), rope_base_grid=4)
    assert cfg == CFG
    a, b = convert.flatten(params), convert.flatten(back)
    assert a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), b[k]) for k in a)
    with pytest.raises(ValueError, match="tag sizes"):
        flux.load_mmdit(str(tmp_path), rope_base_grid=4, style_tag_sizes=(3, 4))
    # Re-exporting without the adapter removes the stale adapter file; asking for one then fails.
    base_p, _ = _split(params)
    with pytest.raises(ValueError, match="style_tag_sizes"):
        flux.export_mmdit(params, BASE, str(tmp_path))
    flux.export_mmdit(base_p, BASE, str(tmp_path))
    assert flux.load_mmdit(str(tmp_path), rope_base_grid=4)[0] == BASE
    with pytest.raises(FileNotFoundError, match="style adapter"):
        flux.load_mmdit(str(tmp_path), rope_base_grid=4, style_tag_sizes=SIZES)


def _whole_pipeline(tmp_path):
    """Configs and random parameters of a tiny whole pipeline whose MMDiT has the adapter."""
    from seedream_jax import config_lib
    from seedream_jax.interop import autoencoder_kl, conditioner_layers
    model = config_lib.model_config("tiny")
    model.llm.num_hidden_layers = 1
    model.byt5.num_layers = 1
    model.vae.block_out_channels = (16, 32)
    model.mmdit.update(num_double_blocks=1, num_single_blocks=1, style_tag_sizes=SIZES)
    cond_cfg, mmdit_cfg, vae_cfg = config_lib.build_model_configs(model)
    rng = np.random.default_rng(0)
    rand = lambda tree: jax.tree_util.tree_map(
        lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), nn.meta.unbox(tree))
    params = {"conditioner": rand(conditioner_layers.abstract_params(cond_cfg)),
              "mmdit": rand(flux.abstract_params(mmdit_cfg)), "vae": rand(autoencoder_kl.abstract_params(vae_cfg))}
    return cond_cfg, mmdit_cfg, vae_cfg, params


def test_whole_pipeline_export_records_the_adapter_and_imports_back(tmp_path):
    import json
    from seedream_jax.interop import pipeline
    cond_cfg, mmdit_cfg, vae_cfg, params = _whole_pipeline(tmp_path)
    assert mmdit_cfg.style_tag_sizes == SIZES and mmdit_cfg.style_dim == 64
    vocab = {"palette": ["warm", "cool", "mono"], "lighting": ["left", "right", "top", "bottom"],
             "texture": ["flat", "grain", "stripes"], "composition": ["centre", "thirds", "edge"],
             "source": ["generated"]}
    with pytest.raises(ValueError, match="values per attribute"):
        pipeline.export_pipeline(params, cond_cfg, mmdit_cfg, vae_cfg, str(tmp_path / "bad"),
                                 style_vocab={"palette": ["warm"]})
    out = str(tmp_path / "export")
    pipeline.export_pipeline(params, cond_cfg, mmdit_cfg, vae_cfg, out, style_vocab=vocab)
    with open(f"{out}/{pipeline.PIPELINE_FILE}") as f:
        info = json.load(f)
    assert info["style_adapter"]["tag_sizes"] == list(SIZES) and info["style_adapter"]["dim"] == 64
    assert info["style_adapter"]["file"] == f"transformer/{flux.STYLE_FILE}"
    assert [v["attribute"] for v in info["style_adapter"]["vocab"]] == list(vocab)
    with open(f"{out}/README.md") as f:
        assert "Style adapter" in f.read()
    c2, m2, v2, back = pipeline.import_pipeline(out)
    assert pipeline.config_differences(m2, mmdit_cfg) == []
    a, b = convert.flatten(params), convert.flatten(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_negative_tag_guidance_in_the_torch_pipeline(init, tmp_path):
    """SeedreamPipeline: v = v_u + g (v_c - v_u) + g_neg (v_c - v_neg); g_neg = 0 is plain CFG
    (bit-identical); named tags map through the recorded vocabulary."""
    _, full = init
    params = perturbed(full, seed=5)
    model, adapter = _export(params, CFG, str(tmp_path))
    r = np.random.default_rng(0)
    table = {p: (torch.from_numpy(r.normal(size=(5, 32)).astype(np.float32)), torch.ones(5, dtype=torch.bool),
                 torch.from_numpy(r.normal(size=(24,)).astype(np.float32))) for p in ("a", "b")}
    table[""] = (torch.zeros(5, 32), torch.zeros(5, dtype=torch.bool), torch.zeros(24))
    vocab = [{"attribute": f"attr{a}", "values": [f"v{k}" for k in range(n)]} for a, n in enumerate(SIZES)]
    config = {"defaults": {"height": 64, "width": 64, "num_steps": 1, "guidance_scale": 3.0},
              "latent": {"vae_downsample_factor": 8, "latent_channels": 4, "patch_size": 2},
              "schedule": {"base_tokens": 256, "max_tokens": 4096, "base_shift": 0.5, "max_shift": 1.15},
              "rope": {"rule": CFG.rope_rule, "base_grid": CFG.rope_base_grid, "text_ids": CFG.text_ids,
                       "image_pos_embed": "none"},
              "style_adapter": {"vocab": vocab}}
    pipe = torch_pipeline.SeedreamPipeline(None, None, None, torch.nn.Linear(1, 1), model, None, None, config, adapter)
    pipe.text_inputs = lambda prompts: list(prompts)
    pipe.encode = lambda prompts: tuple(torch.stack([table[p][i] for p in prompts]) for i in range(3))
    prompts, noise = ["a", "b"], r.normal(size=(2, 8, 8, 4)).astype(np.float32)
    tags, neg = np.array([[1, 2, 3, 0, 0], [3, 0, 1, 2, 0]]), np.array([0, 0, 0, 0, 1])
    run = lambda **kw: pipe.sample_latents(prompts, noise=noise, **kw)
    plain = run(style_tags=tags)
    assert torch.equal(plain, run(style_tags=tags, negative_style_tags=neg, negative_guidance_scale=0.0))
    named = [{"attr0": "v0", "attr1": "v1", "attr2": "v2"}, {"attr0": "v2", "attr2": "v0", "attr3": "v1"}]
    assert torch.equal(plain, run(style_tags=named))
    g, g_neg = 3.0, 1.5
    got = run(style_tags=tags, negative_style_tags=neg, negative_guidance_scale=g_neg)
    # One Euler step by hand from three separate transformer calls.
    times = torch_pipeline.sampling_times(1, pipe.mu(64, 64))
    x = torch_pipeline.pack_latents(torch.from_numpy(noise), 2)
    img_ids, txt_ids = pipe.position_ids(8, 8, 5)
    t = times[0].repeat(2)
    v = lambda ps, tg: pipe.velocity(x, t, *pipe.encode(ps), img_ids, txt_ids,
                                     None if tg is None else torch.as_tensor(tg).expand(2, -1))
    v_u, v_c, v_n = v(["", ""], None), v(prompts, tags), v(prompts, neg)
    want = x + (times[1] - times[0]) * (v_u + g * (v_c - v_u) + g_neg * (v_c - v_n))
    d = max_abs_diff(got.numpy(), torch_pipeline.unpack_latents(want, 8, 8, 2).numpy())
    assert d <= 1e-5
    assert max_abs_diff(got.numpy(), plain.numpy()) > 1e-3
    with pytest.raises(ValueError, match="needs negative_style_tags"):
        run(style_tags=tags, negative_guidance_scale=1.0)
