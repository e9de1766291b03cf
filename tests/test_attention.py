"""The one attention entry point, ``attend``, behind ``attention_impl``: every CPU-runnable kernel
matches a hand-written softmax reference for masked, causal, biased and grouped-query cases; cases
Splash cannot serve fall back to XLA (logged once); the TPU Splash kernel (through the Pallas
interpreter) matches XLA alone, inside the MMDiT and sharded over a mesh; no model calls
``dot_product_attention`` around ``attend``; remat policies per block kind keep the gradients."""
import logging
import pathlib

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


def _reference(q, k, v, mask=None, bias=None, causal=False, scale=None):
    """softmax(scale q k^T + bias, masked) v in float64 numpy; kv heads repeated for grouped queries."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    allowed = np.ones(logits.shape, bool)
    if mask is not None:
        allowed &= np.asarray(mask)
    if causal:
        allowed &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(allowed, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", probs / probs.sum(-1, keepdims=True), v)


def _cases():
    """name -> (q, k, v, attend kwargs, whether Splash serves it)."""
    r = np.random.default_rng(2)
    q, k, v, key_mask = _qkv_mask()
    key_mask = key_mask[:, None, None, :]
    full_mask = jnp.asarray(r.uniform(size=(2, 1, 80, 80)) < 0.6) | jnp.eye(80, dtype=bool)
    bias = jnp.asarray(r.normal(size=(1, 2, 80, 80)), jnp.float32)
    gqa_q = jnp.asarray(r.normal(size=(2, 80, 4, 32)), jnp.float32)
    return {
        "key_mask": (q, k, v, dict(mask=key_mask), True),
        "causal_key_mask": (q, k, v, dict(mask=key_mask, causal=True), True),
        "bias_unscaled": (q, k, v, dict(bias=bias, mask=key_mask, scale=1.0), False),
        "full_mask": (q, k, v, dict(mask=full_mask), False),
        "gqa_causal_full_mask": (gqa_q, k, v, dict(mask=full_mask, causal=True), False),
    }


@pytest.mark.parametrize("impl", [None, "xla", "splash_interpret"])
def test_attend_matches_softmax_reference(impl):
    for name, (q, k, v, kwargs, splash_serves) in _cases().items():
        d = max_abs_diff(attention.attend(q, k, v, impl=impl, **kwargs), _reference(q, k, v, **kwargs))
        print(f"attend impl={impl} {name} (splash serves: {splash_serves}): max abs diff {d:.2e}")
        assert d <= 1e-5, (impl, name, d)


def test_unservable_case_falls_back_to_xla_and_logs_once(caplog):
    attention._log_fallback.cache_clear()
    q, k, v, kwargs, _ = _cases()["bias_unscaled"]
    with caplog.at_level(logging.WARNING):
        outs = [attention.attend(q, k, v, impl="splash_interpret", **kwargs) for _ in range(2)]
    ref = attention.attend(q, k, v, impl="xla", **kwargs)
    assert max(max_abs_diff(o, ref) for o in outs) == 0.0
    notes = [r.getMessage() for r in caplog.records if "cannot serve" in r.getMessage()]
    assert notes == ["attention_impl 'splash_interpret' cannot serve this attention (an additive bias): "
                     "using XLA's"], notes


def test_models_attend_only_through_the_entry_point():
    models = pathlib.Path(attention.__file__).parent
    direct = [p.name for p in models.glob("*.py") if p.name != "attention.py"
              and "dot_product_attention" in p.read_text()]
    assert not direct, f"call models.attention.attend instead of dot_product_attention in {direct}"


def test_splash_matches_xla_forward_and_gradients():
    q, k, v, mask = _qkv_mask()
    attend = lambda impl: lambda q, k, v: attention.attend(q, k, v, mask=mask[:, None, None, :], impl=impl)
    loss = lambda impl: lambda q, k, v: jnp.sum(attend(impl)(q, k, v) ** 2)
    ref = attend(None)(q, k, v)
    out = attend("splash_interpret")(q, k, v)
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


def test_kernel_off_its_hardware_and_unknown_impl_fail_clearly():
    q, k, v, mask = _qkv_mask(t=16)
    with pytest.raises(ValueError, match="needs a TPU"):
        attention.attend(q, k, v, mask=mask[:, None, None, :], impl="splash")
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        attention.attend(q, k, v, impl="cudnn")
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        MMDiTConfig(**{**CFG.__dict__, "attention_impl": "flash"})
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        attention.attend(q, k, v, impl="flash")


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
