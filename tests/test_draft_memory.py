"""``sample_trajectory(remat=...)`` and benchmarks/draft_memory.py: remat off gives the same values
and gradients; on a very small DiT the benchmark returns one row per (K, remat) with positive bytes
and with remat off keeps every step's activations (temp at K=4 above K=1)."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.sampling import sampler as sampler_lib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import draft_memory  # noqa: E402


def test_remat_off_same_values_and_gradients():
    """A small MLP velocity, 6 steps with CFG, gradient through the last 3: x0 and d/dparams agree."""
    r = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(r.normal(size=shape), jnp.float32)
    params = {"w": 0.3 * normal(4, 4), "c": normal(3, 4)}
    velocity = lambda p, x, t, cond: jnp.tanh(x @ p["w"] + cond["e"] @ p["c"] + t[:, None])
    noise, cond = normal(2, 4), {"e": normal(2, 3)}
    cfg = sampler_lib.SamplerConfig(num_steps=6, guidance_scale=2.0)
    uncond = {"e": jnp.zeros((1, 3))}

    def loss(p, remat):
        return jnp.sum(sampler_lib.sample_trajectory(velocity, p, noise, cond, uncond, cfg, grad_last_k=3,
                                                     remat=remat)[0] ** 2)

    (v_on, g_on), (v_off, g_off) = (jax.value_and_grad(loss)(params, remat) for remat in (True, False))
    np.testing.assert_allclose(v_on, v_off, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g_on), jax.tree_util.tree_leaves(g_off)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(g_on["w"]))) > 0


def test_measure_rows_and_remat_off_grows_with_k():
    # configs/tiny.py's DiT shrunk to width 32 (2 heads of 16), one double and one single block;
    # 32 px -> 16x16x4 latents in 4x4 patches (16 image tokens); 4 Euler steps with CFG.
    problem = draft_memory.make_problem("tiny", batch=2, resolution=32, steps=4, num_heads=2, head_dim=16,
                                        axes_dims=(4, 6, 6), num_double_blocks=1, num_single_blocks=1)
    rows = draft_memory.measure(problem, ks=(1, 4), compiler_options={"xla_backend_optimization_level": 0})
    assert [(r["K"], r["remat"]) for r in rows] == [(1, "on"), (4, "on"), (1, "off"), (4, "off")]
    for r in rows:
        mem = r["_memory"]
        assert mem["temp"] > 0 and mem["arguments"] > 0 and mem["outputs"] > 0, r
        assert r["total MiB"] > r["temp MiB"] > 0
    temp = {(r["K"], r["remat"]): r["_memory"]["temp"] for r in rows}
    assert temp[4, "off"] > temp[1, "off"], temp  # fails if remat=False were ignored
    assert temp[4, "on"] < temp[4, "off"], temp
