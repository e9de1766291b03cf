"""Losses shared by the DiT stages (pretrain, and later continued training, SFT, distillation)."""
import jax
import jax.numpy as jnp

from seedream_jax.sampling import schedules


def flow_matching_loss(velocity_fn, x0: jax.Array, rng: jax.Array, *, mu: float, time_mean: float = 0.0,
                       time_std: float = 1.0):
    """Rectified-flow loss: x_t = (1 - t) x0 + t eps, target velocity eps - x0.

    velocity_fn(x_t [B, ...], t [B]) -> v [B, ...]. t ~ logit-normal(time_mean, time_std),
    shifted by ``mu`` (the resolution-dependent shift). Returns (loss, metrics), loss = mean
    squared error in float32.
    """
    t_rng, eps_rng = jax.random.split(rng)
    t = schedules.sample_training_times(t_rng, x0.shape[0], mean=time_mean, std=time_std, mu=mu)
    eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
    x_t = schedules.flow_interpolate(x0, eps, t)
    v = velocity_fn(x_t, t).astype(jnp.float32)
    per_sample = jnp.mean(jnp.square(v - schedules.velocity_target(x0, eps)), axis=tuple(range(1, x0.ndim)))
    return jnp.mean(per_sample), {"fm_mse": jnp.mean(per_sample), "t_mean": jnp.mean(t)}
