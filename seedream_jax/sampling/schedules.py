"""Rectified-flow time schedules shared by training and sampling.

Convention: x_t = (1 - t) x0 + t eps with t in [0, 1]; t = 1 is pure noise; the model predicts
the velocity v = eps - x0; sampling integrates dx/dt = v from t = 1 down to t = 0.
"""
import jax
import jax.numpy as jnp

# Training times are kept inside [T_EPS, 1 - T_EPS] so that 1/t and logit(t) stay finite.
T_EPS = 1e-5


def resolution_shift(num_image_tokens, *, base_tokens: int = 256, max_tokens: int = 4096,
                     base_shift: float = 0.5, max_shift: float = 1.15):
    """mu, linear in the number of image tokens (SD3 / Flux):
    mu = base_shift + (max_shift - base_shift) * (n - base_tokens) / (max_tokens - base_tokens)."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return base_shift + slope * (num_image_tokens - base_tokens)


def shift_time(t, mu, sigma: float = 1.0):
    """Time shift exp(mu) / (exp(mu) + (1/t - 1)**sigma): moves mass towards t = 1 (noise) for mu > 0.
    Maps 0 -> 0 and 1 -> 1."""
    t = jnp.asarray(t, jnp.float32)
    safe = jnp.clip(t, 1e-12, 1.0)
    shifted = jnp.exp(mu) / (jnp.exp(mu) + (1.0 / safe - 1.0) ** sigma)
    return jnp.where(t <= 0.0, 0.0, shifted)


def shift_time_fixed(t, shift: float):
    """SD3's fixed shift s*t / (1 + (s - 1) t); equals ``shift_time(t, log(s))``."""
    t = jnp.asarray(t, jnp.float32)
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_training_times(rng, batch: int, *, mean: float = 0.0, std: float = 1.0, mu=0.0):
    """t [batch] ~ logit-normal(mean, std), then ``shift_time(., mu)``, clipped to [T_EPS, 1 - T_EPS]."""
    u = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,), jnp.float32))
    return jnp.clip(shift_time(u, mu), T_EPS, 1.0 - T_EPS)


def sampling_times(num_steps: int, mu) -> jax.Array:
    """[num_steps + 1] times from 1 down to 0: uniform grid, then the resolution shift."""
    return shift_time(jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32), mu)


def flow_interpolate(x0, eps, t):
    """x_t = (1 - t) x0 + t eps, with t [B] broadcast over the trailing axes."""
    t = t.reshape(t.shape + (1,) * (x0.ndim - 1)).astype(jnp.float32)
    return (1.0 - t) * x0 + t * eps


def velocity_target(x0, eps):
    """The flow-matching regression target v = eps - x0."""
    return eps - x0
