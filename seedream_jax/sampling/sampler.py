"""Compiled flow sampler with batched classifier-free guidance, made of pure parts.

``sample_trajectory`` runs the whole denoising loop as ``lax.scan`` (one XLA program under
``jax.jit``), ODE or Flow-GRPO SDE, with per-step log-probabilities and a gradient window over the
last K steps, so losses (reward backprop, policy gradients) can differentiate through sampling.
``make_sampler`` is its deterministic form; ``reference_euler_sample`` is the Euler ODE as a plain
Python loop (the specification the tests compare against).
"""
import dataclasses
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


def guided_velocity(velocity_fn: VelocityFn, params, cond, uncond, guidance_scale: float, negative=None,
                    negative_scale: float = 0.0):
    """v(x, t) = v_u + g (v_c - v_u) + g_neg (v_c - v_neg), every term from one model call on
    [uncond; cond; negative]; plain CFG (``v_u + g (v_c - v_u)`` from [uncond; cond], the same
    program as without a negative) when ``negative`` is None or g_neg == 0; plain v_c when also
    ``uncond`` is None or g == 1. ``uncond`` may have batch 1 (broadcast); ``negative`` (negative-tag
    guidance: the conditional inputs with the style tags replaced by the negative tags) has the
    batch of ``cond``."""
    use_negative = negative is not None and float(negative_scale) != 0.0

    def v(x, t):
        b = x.shape[0]
        tb = jnp.full((b,), t, jnp.float32)
        use_uncond = uncond is not None and guidance_scale != 1.0
        if not use_uncond and not use_negative:
            return velocity_fn(params, x, tb, cond)
        parts = ([_broadcast_batch(uncond, b)] if use_uncond else []) + [cond] + ([negative] if use_negative else [])
        both = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=0), *parts)
        n = len(parts)
        out = velocity_fn(params, jnp.concatenate([x] * n, axis=0), jnp.concatenate([tb] * n), both)
        outs = [out[i * b:(i + 1) * b].astype(jnp.float32) for i in range(n)]
        v_c = outs[1] if use_uncond else outs[0]
        guided = outs[0] + guidance_scale * (v_c - outs[0]) if use_uncond else v_c
        if use_negative:
            guided = guided + negative_scale * (v_c - outs[-1])
        return guided

    return v


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How to integrate from noise (t = 1) to data (t = 0).

    num_steps: steps on the grid ``schedules.sampling_times(num_steps, shift)``.
    solver: an ODE step of ``solvers.SOLVERS`` ('euler', 'heun'); with eta > 0 the step is
      ``solvers.sde_step`` (Euler-Maruyama), which needs solver 'euler'.
    guidance_scale: classifier-free guidance g (1 = conditional velocity only).
    eta: Flow-GRPO's noise level a in sigma_t = a sqrt(t / (1 - t)); 0 = the deterministic ODE.
    negative_scale: g_neg of negative-tag guidance (``guided_velocity``; needs a ``negative``
      conditioning); 0 = plain CFG.
    start_step: grid steps skipped at the start (image-to-image, SDEdit): the integration starts at
      t0 = ``sampling_times(num_steps, shift)[start_step]`` from the state it is given, which the
      caller puts at that time (``start_state``); 0 = from pure noise at t = 1.
      ``start_step_for_strength`` gives diffusers' img2img rule.
    shift: mu, the resolution time shift (``schedules.resolution_shift``); a float, or a traced
      scalar inside a jitted function (then the config is not hashable).
    """
    num_steps: int
    solver: str = "euler"
    guidance_scale: float = 1.0
    eta: float = 0.0
    shift: Any = 0.0
    negative_scale: float = 0.0
    start_step: int = 0

    def __post_init__(self):
        if self.solver not in solvers.SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; expected one of {sorted(solvers.SOLVERS)}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0 <= self.start_step < self.num_steps:
            raise ValueError(f"start_step must be in [0, num_steps={self.num_steps}), got {self.start_step}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.eta > 0 and self.solver != "euler":
            raise ValueError(f"eta > 0 samples the SDE with Euler-Maruyama steps; solver must be 'euler', "
                             f"got {self.solver!r}")


def start_step_for_strength(num_steps: int, strength: float) -> int:
    """The ``SamplerConfig.start_step`` of img2img ``strength`` in (0, 1] (diffusers' rule): the last
    int(num_steps * strength) steps of the grid run; strength 1 = every step, from pure noise."""
    strength = float(strength)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    kept = min(int(num_steps * strength), int(num_steps))
    if kept < 1:
        raise ValueError(f"strength {strength} of {num_steps} steps runs no step; raise either")
    return int(num_steps) - kept


def start_state(x0, noise, cfg: SamplerConfig):
    """The state [B, ...] at which ``sample_trajectory`` starts for clean latents ``x0`` and
    ``noise`` (both [B, ...]): ``noise`` itself when ``cfg.start_step`` is 0, else
    (1 - t0) x0 + t0 noise at t0 = the grid's time at ``cfg.start_step`` (pure)."""
    if cfg.start_step == 0:
        return noise
    t0 = schedules.sampling_times(cfg.num_steps, cfg.shift)[cfg.start_step]
    return (1.0 - t0) * x0.astype(jnp.float32) + t0 * noise.astype(jnp.float32)


def sample_trajectory(velocity_fn: VelocityFn, params, noise, cond, uncond: Optional[Any], cfg: SamplerConfig, *,
                      grad_last_k: int = 0, rng=None, return_trajectory: bool = False, negative=None,
                      remat: bool = True):
    """Integrate ``noise`` [B, ...] from the grid's time at ``cfg.start_step`` (t = 1 when 0; for
    img2img ``noise`` is ``start_state``'s) to t = 0; returns (x0 [B, ...], trajectory, logps).
    S below is ``num_steps - start_step``, the steps that run.

    Guidance: ``guided_velocity`` with ``cfg.guidance_scale`` and, when ``negative`` (a
    conditioning of ``cond``'s structure and batch) is given, ``cfg.negative_scale``.

    trajectory: [S + 1, B, ...] states (the starting state first, x0 last) if ``return_trajectory``,
    else None. logps: [S, B] log-probability of each SDE transition (``solvers.sde_step``),
    zeros when eta == 0. ``rng`` (needed when eta > 0) gives step i the key ``fold_in(rng, i)``.

    Gradient window: gradients (wrt params, noise, cond, uncond) flow only through the last
    K = ``grad_last_k`` steps. Steps start_step..N-K-1 run on stop_gradient inputs (nothing is
    saved for the backward pass) and the state entering step N-K is a constant; each of the last K
    steps is rematerialised (``jax.checkpoint``), so the backward pass stores one state per step,
    not the model's activations. K = 0: no gradient at all (x0 is a constant, as for rollouts);
    K = S: through every step, from the starting state. The values do not depend on K.
    ``remat=False`` runs the last K steps without ``jax.checkpoint`` (same values and gradients;
    the backward pass then keeps every step's activations, K times one step's: the comparison of
    ``benchmarks/draft_memory.py``).
    Pure and jittable (``cfg`` static, or its ``shift`` traced).
    """
    n, k, first = cfg.num_steps, int(grad_last_k), cfg.start_step
    if not 0 <= k <= n - first:
        raise ValueError(f"grad_last_k must be in [0, num_steps - start_step = {n - first}], got {grad_last_k}")
    if cfg.eta > 0 and rng is None:
        raise ValueError("sample_trajectory with eta > 0 needs an rng")
    times = schedules.sampling_times(n, cfg.shift)
    ode_step = solvers.SOLVERS[cfg.solver]

    def run(params, x, cond, uncond, negative, start, stop, remat):
        v = guided_velocity(velocity_fn, params, cond, uncond, cfg.guidance_scale, negative, cfg.negative_scale)

        def body(x, step):
            t_cur, t_next, i = step
            if cfg.eta == 0:
                x_next, logp = ode_step(v, x, t_cur, t_next), jnp.zeros((x.shape[0],), jnp.float32)
            else:
                x_next, logp = solvers.sde_step(v, x, t_cur, t_next, cfg.eta, jax.random.fold_in(rng, i))
            x_next = x_next.astype(jnp.float32)
            return x_next, (x_next if return_trajectory else None, logp)

        steps = (times[start:stop], times[start + 1:stop + 1], jnp.arange(start, stop))
        return jax.lax.scan(jax.checkpoint(body, prevent_cse=False) if remat else body, x, steps)

    x = noise.astype(jnp.float32)
    segments = []
    if k < n - first:
        frozen = jax.lax.stop_gradient((params, x, cond, uncond, negative))
        x, ys = run(*frozen, first, n - k, remat=False)
        segments.append(ys)
    if k > 0:
        x, ys = run(params, x, cond, uncond, negative, n - k, n, remat=remat)
        segments.append(ys)
    logps = jnp.concatenate([logp for _, logp in segments], axis=0)
    trajectory = None
    if return_trajectory:
        trajectory = jnp.concatenate([noise.astype(jnp.float32)[None]] + [xs for xs, _ in segments], axis=0)
    return x, trajectory, logps


def make_sampler(velocity_fn: VelocityFn, *, num_steps: int, solver: str = "euler", guidance_scale: float = 1.0):
    """Returns ``sample(params, noise, cond, uncond, mu) -> x0``: the ODE (eta = 0) of
    ``sample_trajectory`` integrating from t = 1 to 0, without gradient window.

    ``mu`` is the resolution shift of the time grid (``schedules.resolution_shift``), the same
    rule used in training. Jit the result (or call it inside a jitted function).
    """
    cfg = SamplerConfig(num_steps=num_steps, solver=solver, guidance_scale=guidance_scale)

    def sample(params, noise, cond, uncond: Optional[Any], mu):
        return sample_trajectory(velocity_fn, params, noise, cond, uncond, dataclasses.replace(cfg, shift=mu))[0]

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
