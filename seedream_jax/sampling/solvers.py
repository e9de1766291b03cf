"""Steps of the flow sampler, integrating from t_cur down to t_next (t_next < t_cur).

Convention (``schedules``): x_t = (1 - t) x0 + t eps, v = eps - x0, t = 1 is noise. ``v_fn(x, t)``
returns the (guided) velocity for x [B, ...] and a scalar t; steps take scalar t_cur, t_next and
are pure, usable inside ``lax.scan``.

ODE steps ``step(v_fn, x, t_cur, t_next) -> x_next``: ``euler_step``, ``heun_step``.
SDE step ``sde_step(v_fn, x, t_cur, t_next, eta, rng) -> (x_next, logp)``: Flow-GRPO's
Euler-Maruyama step with the same marginals as the ODE; eta = 0 is ``euler_step``. Its Gaussian's
mean and std alone: ``sde_mean_std``.
"""
import math

import jax
import jax.numpy as jnp


def euler_step(v_fn, x, t_cur, t_next):
    """First order: x + (t_next - t_cur) v(x, t_cur). One model call."""
    return x + (t_next - t_cur) * v_fn(x, t_cur)


def heun_step(v_fn, x, t_cur, t_next):
    """Heun (explicit trapezoid), second order: Euler predictor, then the mean of the two slopes.

    Two model calls, except on the last step to t = 0 where it falls back to Euler (as in
    EDM's sampler), since v at t = 0 is not needed to land on the data.
    """
    dt = t_next - t_cur
    v1 = v_fn(x, t_cur)
    x_pred = x + dt * v1
    v2 = v_fn(x_pred, t_next)
    return jnp.where(t_next > 0, x + dt * 0.5 * (v1 + v2), x_pred)


SOLVERS = {"euler": euler_step, "heun": heun_step}


def sde_sigma(t_cur, t_next, eta):
    """Flow-GRPO's noise level sigma_t = eta * sqrt(t / (1 - t)) at t = t_cur.

    sigma is infinite at t = 1, so there the denominator uses 1 - t_next instead (Flow-GRPO's
    ``torch.where(sigma == 1, sigma_max, sigma)`` with ``sigma_max = sigmas[1]``, the grid's
    second time, which is t_next on the first step)."""
    t_den = jnp.where(t_cur >= 1.0, t_next, t_cur)
    return eta * jnp.sqrt(t_cur / (1.0 - t_den))


def gaussian_logprob(x, mean, std):
    """log N(x; mean, std^2 I) [B], summed over all non-batch axes; ``std`` a scalar or broadcastable."""
    std = jnp.broadcast_to(jnp.asarray(std, jnp.float32), x.shape)
    z = (x.astype(jnp.float32) - mean.astype(jnp.float32)) / std
    elem = -0.5 * jnp.square(z) - jnp.log(std) - 0.5 * math.log(2.0 * math.pi)
    return jnp.sum(elem.reshape(x.shape[0], -1), axis=1)


def sde_mean_std(v, x, t_cur, t_next, eta):
    """(mean [B, ...], std scalar) of the Gaussian transition of ``sde_step`` given the velocity
    ``v`` = v(x, t_cur): the policy's mean (what a KL between two models compares) and its noise."""
    dt = t_next - t_cur
    sigma = sde_sigma(t_cur, t_next, eta)
    mean = x + (v + jnp.square(sigma) / (2.0 * t_cur) * (x + (1.0 - t_cur) * v)) * dt
    return mean, sigma * jnp.sqrt(-dt)


def sde_step(v_fn, x, t_cur, t_next, eta, rng, *, x_next=None):
    """One step of the reverse-time SDE with the flow's marginals (Flow-GRPO, Liu et al. 2025).

    With dt = t_next - t_cur < 0, v = v(x, t_cur), sigma = ``sde_sigma(t_cur, t_next, eta)``:
      mean   = x + [v + sigma^2 / (2 t_cur) (x + (1 - t_cur) v)] dt
      x_next = mean + sigma sqrt(-dt) noise,  noise ~ N(0, I) from ``rng``.
    (x + (1 - t) v is the flow's eps estimate, so the bracket is v - sigma^2/2 * score; Flow-GRPO
    writes the same update in its own sigma variable.) logp [B] is log N(x_next; mean, std^2)
    summed over the non-batch axes, with x_next held constant (stop_gradient), so its gradient is
    the policy score through ``mean``. Given ``x_next`` (a stored rollout transition) no noise is
    drawn and logp is that transition's. eta = 0 gives ``euler_step`` exactly and logp = 0; ``rng``
    may then be None.
    """
    if x_next is None and rng is None and not (isinstance(eta, (int, float)) and eta == 0):
        raise ValueError("sde_step needs an rng to draw its noise when eta may be nonzero")
    mean, std = sde_mean_std(v_fn(x, t_cur), x, t_cur, t_next, eta)
    if x_next is None:
        x_next = mean if rng is None else mean + std * jax.random.normal(rng, mean.shape, mean.dtype)
    noisy = std > 0
    logp = gaussian_logprob(jax.lax.stop_gradient(x_next), mean, jnp.where(noisy, std, 1.0))
    return x_next, jnp.where(noisy, logp, 0.0)
