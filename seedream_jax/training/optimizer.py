"""Optimizer construction: AdamW with linear warmup, cosine decay and global-norm clipping."""
import jax
import optax
from ml_collections import ConfigDict


def learning_rate_schedule(cfg: ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine decay to
    ``cfg.lr * cfg.final_lr_fraction`` at ``total_steps``."""
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(cfg.lr), warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=float(cfg.lr) * float(cfg.final_lr_fraction))


def make_optimizer(cfg: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """``cfg`` fields: lr, warmup_steps, final_lr_fraction, b1, b2, eps, weight_decay, grad_clip_norm.

    Weight decay skips 1-D parameters (biases, norm scales).
    """
    schedule = learning_rate_schedule(cfg, total_steps)
    decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.clip_by_global_norm(float(cfg.grad_clip_norm)),
        optax.adamw(schedule, b1=float(cfg.b1), b2=float(cfg.b2), eps=float(cfg.eps),
                    weight_decay=float(cfg.weight_decay), mask=decay_mask),
    )
