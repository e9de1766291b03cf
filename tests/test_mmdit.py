"""MMDiT: parity with diffusers FluxTransformer2DModel, padding invariance, buckets, bf16, remat."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import max_abs_diff, perturbed
from seedream_jax.data.buckets import aspect_ratio_buckets
from seedream_jax.interop import convert
from seedream_jax.interop.flux import export_mmdit, flux_position_ids, load_mmdit, mmdit_to_diffusers_config
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig

CFG = MMDiTConfig(in_channels=4, patch_size=2, num_heads=2, head_dim=16, num_double_blocks=2, num_single_blocks=2,
                  context_dim=32, pooled_dim=24, axes_dims=(4, 6, 6), rope_base_grid=4)


def _inputs(b=2, h=8, w=12, l=6, seed=0):
    r = np.random.default_rng(seed)
    return (r.normal(size=(b, h, w, 4)).astype(np.float32), r.uniform(0.05, 0.95, size=(b,)).astype(np.float32),
            r.normal(size=(b, l, 32)).astype(np.float32), np.ones((b, l), bool), r.normal(size=(b, 24)).astype(np.float32))


def _flux(cfg, tmp_path):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    kwargs = {k: v for k, v in mmdit_to_diffusers_config(cfg).items() if not k.startswith("_")}
    model = FluxTransformer2DModel(**kwargs).eval()
    with torch.no_grad():  # diffusers zero-inits nothing here, but make every weight non-trivial
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    return model


def _torch_forward(model, cfg, latents, t, ctx, pooled):
    b, h, w, c = latents.shape
    packed = torch.from_numpy(latents).reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4).reshape(b, -1, c * 4)
    img_ids, txt_ids = flux_position_ids(cfg, h, w, ctx.shape[1])
    with torch.no_grad():
        out = model(hidden_states=packed, encoder_hidden_states=torch.from_numpy(ctx),
                    pooled_projections=torch.from_numpy(pooled), timestep=torch.from_numpy(t),
                    img_ids=torch.from_numpy(img_ids), txt_ids=torch.from_numpy(txt_ids)).sample
    return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 1, 4, 2, 5, 3).reshape(b, h, w, c).numpy()


@pytest.mark.parametrize("num_single", [2, 0])
def test_parity_with_diffusers_flux(tmp_path, num_single):
    cfg = MMDiTConfig(**{**CFG.__dict__, "num_single_blocks": num_single})
    ref = _flux(cfg, tmp_path)
    loaded_cfg, params = load_mmdit(str(tmp_path), rope_base_grid=4)
    assert loaded_cfg == cfg
    latents, t, ctx, mask, pooled = _inputs()
    ours = MMDiT(cfg).apply({"params": params}, latents, t, ctx, mask, pooled)
    d = max_abs_diff(ours, _torch_forward(ref, cfg, latents, t, ctx, pooled))
    print(f"MMDiT vs diffusers Flux ({num_single} single blocks): max abs diff {d:.2e}")
    assert d <= 1e-5


@pytest.fixture(scope="module")
def params():
    latents, t, ctx, mask, pooled = _inputs()
    return perturbed(MMDiT(CFG).init(jax.random.PRNGKey(0), latents, t, ctx, mask, pooled)["params"])


def test_export_round_trip(tmp_path, params):
    from diffusers import FluxTransformer2DModel
    export_mmdit(params, CFG, str(tmp_path))
    model = FluxTransformer2DModel.from_pretrained(str(tmp_path)).eval()
    latents, t, ctx, mask, pooled = _inputs()
    ours = MMDiT(CFG).apply({"params": params}, latents, t, ctx, mask, pooled)
    d = max_abs_diff(ours, _torch_forward(model, CFG, latents, t, ctx, pooled))
    print(f"MMDiT export -> diffusers from_pretrained: max abs diff {d:.2e}")
    assert d <= 1e-5
    _, back = load_mmdit(str(tmp_path), rope_base_grid=4)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_mismatched_checkpoint_lists_keys(tmp_path, params):
    from seedream_jax.interop import safetensors_io
    from seedream_jax.interop.flux import WEIGHTS_NAME
    export_mmdit(params, CFG, str(tmp_path))
    tensors = safetensors_io.load_tensors(str(tmp_path))
    del tensors["proj_out.bias"]
    tensors["guidance_in.weight"] = np.zeros(3, np.float32)
    tensors["x_embedder.weight"] = np.zeros((32, 3), np.float32)
    safetensors_io.save_tensors(tensors, str(tmp_path), basename=WEIGHTS_NAME)
    with pytest.raises(convert.CheckpointMismatchError) as err:
        load_mmdit(str(tmp_path), rope_base_grid=4)
    assert err.value.missing == ["proj_out.bias"] and err.value.unexpected == ["guidance_in.weight"]
    assert [m[0] for m in err.value.misshaped] == ["x_embedder.weight"]


def test_padded_text_tokens_change_nothing(params):
    latents, t, ctx, mask, pooled = _inputs()
    ours = MMDiT(CFG).apply({"params": params}, latents, t, ctx, mask, pooled)
    pad_ctx = np.concatenate([ctx, np.random.default_rng(5).normal(size=(2, 3, 32)).astype(np.float32)], axis=1)
    pad_mask = np.concatenate([mask, np.zeros((2, 3), bool)], axis=1)
    padded = MMDiT(CFG).apply({"params": params}, latents, t, pad_ctx, pad_mask, pooled)
    d = max_abs_diff(ours, padded)
    print(f"MMDiT padding invariance: max abs diff {d:.2e}")
    assert d <= 1e-5


def _buckets_run(params, buckets):
    apply = jax.jit(lambda p, *a: MMDiT(CFG).apply({"params": p}, *a))
    for (hp, wp) in buckets:
        latents, t, ctx, mask, pooled = _inputs(b=1, h=hp // 8, w=wp // 8, l=3)
        out = apply(params, latents, t, ctx, mask, pooled)
        assert out.shape == latents.shape and bool(jnp.all(jnp.isfinite(out)))


def test_square_and_extreme_buckets_run(params):
    """The square and the two most extreme buckets of the 256 px table (one compile each)."""
    buckets = aspect_ratio_buckets(256, multiple=16)
    assert (256, 256) in buckets and len(buckets) >= 5
    _buckets_run(params, [buckets[0], (256, 256), buckets[-1]])


@pytest.mark.slow
def test_every_bucket_runs(params):
    """Every aspect-ratio bucket of the 256 px table (VAE x8, patch 2: multiples of 16 px)."""
    _buckets_run(params, aspect_ratio_buckets(256, multiple=16))


def test_bf16_close_to_fp32_and_remat_identical(params):
    latents, t, ctx, mask, pooled = _inputs()
    forward = jax.jit(lambda p, cfg: MMDiT(cfg).apply({"params": p}, latents, t, ctx, mask, pooled), static_argnums=1)
    ref = forward(params, CFG)
    bf16 = forward(params, MMDiTConfig(**{**CFG.__dict__, "dtype": "bfloat16"}))
    rel = max_abs_diff(ref, bf16) / float(jnp.max(jnp.abs(ref)))
    print(f"MMDiT bf16 vs fp32: max abs diff / max |out| = {rel:.3f}")
    assert bf16.dtype == jnp.float32 and rel < 0.05

    grad = jax.jit(jax.grad(lambda p, cfg: jnp.sum(forward(p, cfg) ** 2)), static_argnums=1)
    g_ref = grad(params, CFG)
    for policy in ("full", "dots"):
        g = grad(params, MMDiTConfig(**{**CFG.__dict__, "remat_policy": policy}))
        # Recomputation lets XLA fuse differently: equal up to float32 reassociation.
        for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))))


def test_adaln_zero_init_outputs_zero_and_every_block_is_the_identity():
    """adaLN-Zero: a fresh MMDiT outputs exactly 0, and each double / single block returns its
    residual streams unchanged (every gate is 0), whatever the inputs."""
    from seedream_jax.models import rope
    from seedream_jax.models.mmdit import DoubleStreamBlock, SingleStreamBlock
    latents, t, ctx, mask, pooled = _inputs()
    params = nn.meta.unbox(MMDiT(CFG).init(jax.random.PRNGKey(0), latents, t, ctx, mask, pooled)["params"])
    out = MMDiT(CFG).apply({"params": params}, latents, t, ctx, mask, pooled)
    assert out.shape == latents.shape and float(jnp.max(jnp.abs(out))) == 0.0
    for name in ("norm_out", "transformer_blocks_0/norm1", "transformer_blocks_1/norm1_context",
                 "single_transformer_blocks_1/norm"):
        leaf = params
        for key in name.split("/"):
            leaf = leaf[key]
        assert not np.any(np.asarray(leaf["linear"]["kernel"])), name
    r = np.random.default_rng(3)
    d, n_img, n_txt = CFG.hidden_size, 12, 6
    img, txt = (jnp.asarray(r.normal(size=(2, n, d)), jnp.float32) for n in (n_img, n_txt))
    temb = jnp.asarray(r.normal(size=(2, d)), jnp.float32)
    ids = np.concatenate([rope.text_position_ids(n_txt, 3, 4, base_grid=4), rope.image_position_ids(3, 4, base_grid=4)])
    cos, sin = rope.rope_frequencies(jnp.asarray(ids), CFG.axes_dims, CFG.rope_theta)
    key_mask = jnp.ones((2, n_txt + n_img), bool)
    for i in range(CFG.num_double_blocks):
        name = f"transformer_blocks_{i}"
        img_out, txt_out = DoubleStreamBlock(CFG).apply({"params": params[name]}, img, txt, temb, cos, sin, key_mask)
        np.testing.assert_array_equal(np.asarray(img_out), np.asarray(img))
        np.testing.assert_array_equal(np.asarray(txt_out), np.asarray(txt))
    x = jnp.concatenate([txt, img], axis=1)
    for i in range(CFG.num_single_blocks):
        x_out = SingleStreamBlock(CFG).apply({"params": params[f"single_transformer_blocks_{i}"]},
                                             x, temb, cos, sin, key_mask)
        np.testing.assert_array_equal(np.asarray(x_out), np.asarray(x))


def test_patch_size_4_exports_to_diffusers_flux(tmp_path):
    """A 4x4-patch MMDiT (a 2x VAE's 32x32 latent as 8x8 tokens) is a Flux transformer on
    4x4-packed tokens (in_channels = 16 C): exported, loaded by diffusers and fed
    ``torch_pipeline.pack_latents(x, 4)``, it matches ours; loading it back needs patch_size=4."""
    from diffusers import FluxTransformer2DModel
    from seedream_jax.interop.torch_pipeline import pack_latents, unpack_latents
    cfg = MMDiTConfig(**{**CFG.__dict__, "patch_size": 4})
    latents, t, ctx, mask, pooled = _inputs(h=16, w=8)
    params = perturbed(nn.meta.unbox(MMDiT(cfg).init(jax.random.PRNGKey(0), latents, t, ctx, mask, pooled)["params"]))
    ours = MMDiT(cfg).apply({"params": params}, latents, t, ctx, mask, pooled)
    export_mmdit(params, cfg, str(tmp_path))
    model = FluxTransformer2DModel.from_pretrained(str(tmp_path)).eval()
    img_ids, txt_ids = flux_position_ids(cfg, 16, 8, ctx.shape[1])
    with torch.no_grad():
        out = model(hidden_states=pack_latents(torch.from_numpy(latents), 4), encoder_hidden_states=torch.from_numpy(ctx),
                    pooled_projections=torch.from_numpy(pooled), timestep=torch.from_numpy(t),
                    img_ids=torch.from_numpy(img_ids), txt_ids=torch.from_numpy(txt_ids)).sample
    d = max_abs_diff(ours, unpack_latents(out, 16, 8, 4))
    print(f"MMDiT patch 4 vs diffusers Flux on 4x4-packed tokens: max abs diff {d:.2e}")
    assert d <= 1e-5
    loaded_cfg, _ = load_mmdit(str(tmp_path), patch_size=4, rope_base_grid=4)
    assert loaded_cfg == cfg
    with pytest.raises(ValueError, match="patch size 3"):
        load_mmdit(str(tmp_path), patch_size=3)


def test_sincos_image_position_embedding_exports_with_its_torch_piece(tmp_path):
    """``image_pos_embed='sincos'`` (absolute 2D position for image tokens, which diffusers' Flux
    lacks): exported as a plain Flux transformer, ``torch_pipeline.flux_velocity`` with the
    mirrored ``sincos_position_embedding`` reproduces ours; without it the outputs differ."""
    from diffusers import FluxTransformer2DModel
    from seedream_jax.interop.torch_pipeline import flux_velocity, pack_latents, sincos_position_embedding
    from seedream_jax.models import rope
    cfg = MMDiTConfig(**{**CFG.__dict__, "image_pos_embed": "sincos", "text_ids": "zeros"})
    latents, t, ctx, mask, pooled = _inputs()
    params = perturbed(nn.meta.unbox(MMDiT(cfg).init(jax.random.PRNGKey(0), latents, t, ctx, mask, pooled)["params"]))
    ours = np.asarray(MMDiT(cfg).apply({"params": params}, latents, t, ctx, mask, pooled))
    plain = np.asarray(MMDiT(MMDiTConfig(**{**cfg.__dict__, "image_pos_embed": "none"})).apply(
        {"params": params}, latents, t, ctx, mask, pooled))
    img_ids, txt_ids = flux_position_ids(cfg, 8, 12, ctx.shape[1])
    pe_np = sincos_position_embedding(img_ids, cfg.hidden_size)
    assert max_abs_diff(pe_np, rope.sincos_position_embedding(jnp.asarray(img_ids), cfg.hidden_size)) <= 1e-6
    export_mmdit(params, cfg, str(tmp_path))
    model = FluxTransformer2DModel.from_pretrained(str(tmp_path)).eval()
    args = (pack_latents(torch.from_numpy(latents), 2), torch.from_numpy(t), torch.from_numpy(ctx),
            torch.from_numpy(mask), torch.from_numpy(pooled), torch.from_numpy(img_ids), torch.from_numpy(txt_ids))
    with torch.no_grad():
        theirs = flux_velocity(model, *args, torch.from_numpy(pe_np))
        without = flux_velocity(model, *args)
    from seedream_jax.interop.torch_pipeline import unpack_latents
    d = max_abs_diff(ours, unpack_latents(theirs, 8, 12, 2))
    print(f"MMDiT with sin-cos image positions vs diffusers Flux + the torch piece: max abs diff {d:.2e}")
    assert d <= 1e-5
    assert max_abs_diff(plain, unpack_latents(without, 8, 12, 2)) <= 1e-5
    assert max_abs_diff(ours, plain) > 1e-2
    assert load_mmdit(str(tmp_path), rope_base_grid=4, text_ids="zeros", image_pos_embed="sincos")[0] == cfg
