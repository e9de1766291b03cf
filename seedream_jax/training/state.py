"""The train state every stage shares."""
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue bit-exactly (besides the data position).

    step: int32 scalar, number of optimizer updates applied (``inner_steps`` per loop iteration).
    params: trainable parameters (a dict keyed by component: 'mmdit', 'conditioner', 'vae', ...).
    frozen: parameters the stage uses but does not update (e.g. the VAE during DiT training).
    opt_state: optimizer state for ``params``.
    ema_params: exponential moving average of ``params`` (same tree), or an empty dict.
    rng: base PRNG key; update ``k`` uses ``fold_in(rng, k)`` and a rollout before update ``k``
      ``loop.rollout_rng(rng, k)``, so randomness does not depend on how the run was split into sessions.
    """
    step: jax.Array
    params: Any
    frozen: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array


def ema_decay_at(step, decay: float):
    """The EMA decay for the update that takes the state from ``step`` to ``step + 1`` updates:
    ``min(decay, (1 + step) / (10 + step))`` (the warmup of TensorFlow's ExponentialMovingAverage
    with ``num_updates``). 0.1 at step 0, 0.18 at step 1, 0.991 at step 1000; ``decay`` (e.g. 0.999)
    from step 8991 on. Without the warmup a 0.999 EMA still holds 0.999^900 = 41% of the random
    initialisation after 900 steps; with it the EMA averages roughly the last 10% of the run."""
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay):
    """ema <- decay * ema + (1 - decay) * params, in float32 (``decay`` a float or a scalar array)."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))
