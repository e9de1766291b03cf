"""Compiled flow sampler with batched classifier-free guidance.

``make_sampler`` returns a function whose whole denoising loop is one ``lax.fori_loop``, so
under ``jax.jit`` sampling is a single XLA program. ``reference_euler_sample`` is the same
computation as a plain Python loop (the specification the tests compare against).
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from seedream_jax.sampling import schedules, solvers

# velocity_fn(params, x [B, ...], t [B], cond pytree with leading B) -> v [B, ...]
VelocityFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


def initial_noise(rng, batch: int, latent_shape) -> jax.Array:
    """Standard normal noise [batch, *latent_shape]; sample i uses ``fold_in(rng, i)``, so a
    sample's noise does not depend on the batch it is generated in."""
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))
    return jax.vmap(lambda k: jax.random.normal(k, tuple(latent_shape), jnp.float32))(keys)


def _broadcast_batch(tree, batch: int):
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (batch,) + a.shape[1:]), tree)


def guided_velocity(velocity_fn: VelocityFn, params, cond, uncond, guidance_scale: float):
    """v(x, t) = v_u + g (v_c - v_u) from one model call on [uncond; cond]; plain v_c if
    ``uncond`` is None or g == 1. ``uncond`` may have batch 1 (broadcast)."""

    def v(x, t):
        b = x.shape[0]
        tb = jnp.full((b,), t, jnp.float32)
        if uncond is None or guidance_scale == 1.0:
            return velocity_fn(params, x, tb, cond)
        both = jax.tree_util.tree_map(lambda u, c: jnp.concatenate([u, c], axis=0),
                                      _broadcast_batch(uncond, b), cond)
        out = velocity_fn(params, jnp.concatenate([x, x], axis=0), jnp.concatenate([tb, tb]), both)
        v_u, v_c = out[:b].astype(jnp.float32), out[b:].astype(jnp.float32)
        return v_u + guidance_scale * (v_c - v_u)

    return v


def make_sampler(velocity_fn: VelocityFn, *, num_steps: int, solver: str = "euler", guidance_scale: float = 1.0):
    """Returns ``sample(params, noise, cond, uncond, mu) -> x0`` integrating from t = 1 to 0.

    ``mu`` is the resolution shift of the time grid (``schedules.resolution_shift``), the same
    rule used in training. Jit the result (or call it inside a jitted function).
    """
    if solver not in solvers.SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(solvers.SOLVERS)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    step_fn = solvers.SOLVERS[solver]

    def sample(params, noise, cond, uncond: Optional[Any], mu):
        times = schedules.sampling_times(num_steps, mu)
        v = guided_velocity(velocity_fn, params, cond, uncond, guidance_scale)

        def body(i, x):
            return step_fn(v, x, times[i], times[i + 1]).astype(jnp.float32)

        return jax.lax.fori_loop(0, num_steps, body, noise.astype(jnp.float32))

    return sample


def reference_euler_sample(velocity_fn: VelocityFn, params, noise, cond, uncond, mu, *, num_steps: int,
                           guidance_scale: float = 1.0):
    """The Euler sampler as a plain Python loop, one model call per step (the specification)."""
    times = [float(t) for t in schedules.sampling_times(num_steps, mu)]
    x = noise.astype(jnp.float32)
    b = x.shape[0]
    for t_cur, t_next in zip(times[:-1], times[1:]):
        tb = jnp.full((b,), t_cur, jnp.float32)
        v = velocity_fn(params, x, tb, cond).astype(jnp.float32)
        if uncond is not None and guidance_scale != 1.0:
            v_u = velocity_fn(params, x, tb, _broadcast_batch(uncond, b)).astype(jnp.float32)
            v = v_u + guidance_scale * (v - v_u)
        x = x + (t_next - t_cur) * v
    return x
