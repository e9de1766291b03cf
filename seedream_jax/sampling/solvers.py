"""ODE steps for dx/dt = v(x, t), integrating from t_cur down to t_next (t_next < t_cur).

Each step is a pure function ``step(v_fn, x, t_cur, t_next) -> x_next`` (scalars t), usable
inside ``lax.fori_loop``. ``v_fn(x, t)`` returns the (guided) velocity.
"""
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
