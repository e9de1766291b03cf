"""Attention kernels behind ``attention_impl``: the TPU Splash kernel (through the Pallas
interpreter) matches XLA's attention with padding masks, alone, inside the MMDiT and sharded
over a mesh; remat policies per block kind keep the gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import max_abs_diff, perturbed
from seedream_jax.models import attention
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig, block_remat_policies
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.parallel import sharding as sharding_lib

CFG = MMDiTConfig(in_channels=4, patch_size=2, num_heads=2, head_dim=16, num_double_blocks=1, num_single_blocks=1,
                  context_dim=32, pooled_dim=24, axes_dims=(4, 6, 6), rope_base_grid=4)


def _qkv_mask(b=2, t=80, h=2, d=32):
    r = np.random.default_rng(0)
    q, k, v = (jnp.asarray(r.normal(size=(b, t, h, d)), jnp.float32) for _ in range(3))
    mask = np.ones((b, t), bool)
    mask[1, 5:20] = False  # padded text keys in the middle of the second sequence
    return q, k, v, jnp.asarray(mask)


def test_splash_matches_xla_forward_and_gradients():
    q, k, v, mask = _qkv_mask()
    loss = lambda impl: lambda q, k, v: jnp.sum(attention.key_masked_attention(q, k, v, mask, impl) ** 2)
    ref = attention.key_masked_attention(q, k, v, mask, None)
    out = attention.key_masked_attention(q, k, v, mask, "splash_interpret")
    d_fwd = max_abs_diff(out, ref)
    grads = jax.grad(loss("splash_interpret"), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(None), argnums=(0, 1, 2))(q, k, v)
    d_grad = max(max_abs_diff(a, b) for a, b in zip(grads, ref_grads))
    print(f"splash vs XLA attention (T=80 padded to 128): fwd {d_fwd:.2e}, grads {d_grad:.2e}")
    assert d_fwd <= 1e-5 and d_grad <= 1e-4


def _mmdit_inputs():
    r = np.random.default_rng(1)
    mask = np.ones((4, 6), bool)
    mask[1, 4:] = False
    return (r.normal(size=(4, 8, 8, 4)).astype(np.float32), r.uniform(0.1, 0.9, size=(4,)).astype(np.float32),
            r.normal(size=(4, 6, 32)).astype(np.float32), mask, r.normal(size=(4, 24)).astype(np.float32))


def test_mmdit_with_splash_matches_xla_on_one_device_and_sharded():
    inputs = _mmdit_inputs()
    params = perturbed(MMDiT(CFG).init(jax.random.PRNGKey(0), *inputs)["params"])
    ref = MMDiT(CFG).apply({"params": params}, *inputs)
    splash = MMDiT(MMDiTConfig(**{**CFG.__dict__, "attention_impl": "splash_interpret"}))
    d_single = max_abs_diff(splash.apply({"params": params}, *inputs), ref)
    # batch over data x fsdp, heads over tensor: the kernel runs per shard through shard_map
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = sharding_lib.resolve_rules("fsdp")
    placed_params = jax.device_put(nn.meta.unbox(params), mesh_lib.replicated(mesh))
    placed_inputs = [jax.device_put(a, mesh_lib.batch_sharding(mesh, a.ndim)) for a in inputs]
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        sharded = jax.jit(lambda p, *a: splash.apply({"params": p}, *a))(placed_params, *placed_inputs)
    d_mesh = max_abs_diff(sharded, ref)
    print(f"MMDiT splash vs XLA: one device {d_single:.2e}, 2x2x2 mesh {d_mesh:.2e}")
    assert d_single <= 1e-5 and d_mesh <= 1e-5


def test_splash_off_tpu_and_unknown_impl_fail_clearly():
    q, k, v, mask = _qkv_mask(t=16)
    with pytest.raises(ValueError, match="needs a TPU"):
        attention.key_masked_attention(q, k, v, mask, "splash")
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        MMDiTConfig(**{**CFG.__dict__, "attention_impl": "flash"})


def test_remat_policy_per_block_kind():
    assert block_remat_policies("dots") == {"double": "dots", "single": "dots"}
    assert block_remat_policies("single=full") == {"double": "none", "single": "full"}
    with pytest.raises(ValueError, match="block kind 'triple'"):
        block_remat_policies("triple=full")
    with pytest.raises(ValueError, match="policy 'most'"):
        block_remat_policies("double=most")
    inputs = _mmdit_inputs()
    params = perturbed(MMDiT(CFG).init(jax.random.PRNGKey(0), *inputs)["params"])

    def grads(policy):
        model = MMDiT(MMDiTConfig(**{**CFG.__dict__, "remat_policy": policy}))
        return jax.grad(lambda p: jnp.mean(model.apply({"params": p}, *inputs) ** 2))(params)

    ref = grads("none")
    for policy in ("double=dots,single=full", "full"):
        d = max(max_abs_diff(a, b) for a, b in zip(jax.tree_util.tree_leaves(grads(policy)),
                                                   jax.tree_util.tree_leaves(ref)))
        assert d <= 1e-6, (policy, d)
