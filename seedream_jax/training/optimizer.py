"""Optimizer construction: AdamW with linear warmup, cosine decay and global-norm clipping,
optionally with parameter groups (own learning rate) and parameters frozen by path.

Parameter paths are the '/'-joined keys of the trainable tree, e.g. ``mmdit/blocks_0/attn/qkv/kernel``;
patterns match a whole path (``re.fullmatch``). Config (``<stage>.optimizer``)::

    groups = {'adapter': {'pattern': r'mmdit/.*aesthetic.*', 'lr': 1e-3}}  # own peak lr, same schedule shape
    freeze = (r'conditioner/.*',)                                          # never updated

A parameter matching ``freeze`` or a group with ``lr`` 0 keeps its value bit-identical (its update is
``optax.set_to_zero``: no Adam, no weight decay) and its gradient is left out of the global norm
that clipping uses; every other parameter is clipped by one global norm. Parameters in no group
use ``lr``. A pattern that matches no parameter, or a parameter in two groups, is an error.

``flatten = True`` runs each group's AdamW on one flat vector of all its parameters
(``flat_adamw``): the same arithmetic as ``optax.adamw`` in a few large fusions instead of several
per parameter tensor, which is faster where per-op overhead dominates (a CPU, hundreds of small
tensors). Its moments are then one replicated vector per group, so it needs unsharded parameters
(one device or pure data parallelism); the loop refuses it with sharded parameters.
"""
import re
from typing import Dict, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

MAIN, FROZEN = "main", "frozen"  # labels of ungrouped and never-updated parameters


def learning_rate_schedule(cfg: ConfigDict, total_steps: int, lr: float | None = None) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` (default ``cfg.lr``) over ``cfg.warmup_steps``, then cosine
    decay to ``lr * cfg.final_lr_fraction`` at ``total_steps``."""
    lr = float(cfg.lr) if lr is None else float(lr)
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=lr * float(cfg.final_lr_fraction))


def _groups(cfg: ConfigDict) -> Dict[str, ConfigDict]:
    groups = dict(cfg.get("groups", None) or {})
    for name, g in groups.items():
        if name in (MAIN, FROZEN) or set(g.keys()) != {"pattern", "lr"}:
            raise ValueError(f"optimizer.groups.{name}: expected a group name other than {MAIN!r}/{FROZEN!r} "
                             f"with exactly the keys 'pattern' and 'lr', got {sorted(g.keys())}")
    return groups


def learning_rates(cfg: ConfigDict, total_steps: int) -> Dict[str, optax.Schedule]:
    """The schedules the loop logs: ``lr`` (ungrouped parameters) and ``lr/<group>`` per group."""
    return {"lr": learning_rate_schedule(cfg, total_steps),
            **{f"lr/{name}": learning_rate_schedule(cfg, total_steps, g.lr) for name, g in _groups(cfg).items()}}


_is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)


def param_path(path) -> str:
    """'/'-joined keys of a tree path (dict keys, sequence indices, attribute names)."""
    key = lambda k: getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
    return "/".join(str(key(k)) for k in path)


def param_labels(cfg: ConfigDict):
    """params -> tree of labels (``frozen``, a group name or ``main``), one per parameter.

    Works on boxed (``nn.Partitioned``) and plain trees: a box gets one label.
    """
    groups = _groups(cfg)
    freeze = tuple(cfg.get("freeze", ()))
    patterns = {name: re.compile(g.pattern) for name, g in groups.items()}
    frozen_patterns = [re.compile(p) for p in freeze]

    def labels(params):
        used = set()

        def label(path, _):
            name = param_path(path)
            hits = [p.pattern for p in frozen_patterns if p.fullmatch(name)]
            matched = [g for g, p in patterns.items() if p.fullmatch(name)]
            used.update(hits + [groups[g].pattern for g in matched])
            if hits:
                return FROZEN
            if len(matched) > 1:
                raise ValueError(f"optimizer.groups: parameter {name!r} matches several groups {matched}")
            if not matched:
                return MAIN
            return FROZEN if float(groups[matched[0]].lr) == 0 else matched[0]

        tree = jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_box)
        unused = [p for p in freeze + tuple(g.pattern for g in groups.values()) if p not in used]
        if unused:
            paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)[0]]
            raise ValueError(f"optimizer.freeze/groups: pattern(s) {unused} match no parameter; "
                             f"the parameter paths start {paths[:5]}")
        return tree

    return labels


class FlatAdamWState(NamedTuple):
    """count: updates so far (int32 []); mu, nu: Adam's moments of every parameter, raveled in tree order [N]."""
    count: jax.Array
    mu: jax.Array
    nu: jax.Array


def _ravel(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate([jnp.ravel(x) for x in leaves]) if leaves else jnp.zeros((0,), jnp.float32)


def _unravel(like, flat: jax.Array):
    """``flat`` [N] cut back into the leaves (shapes, dtypes) of ``like``."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    ends = np.cumsum([x.size for x in leaves])
    parts = jnp.split(flat, ends[:-1]) if leaves else []
    return jax.tree_util.tree_unflatten(treedef, [p.reshape(x.shape).astype(x.dtype) for p, x in zip(parts, leaves)])


def flat_adamw(learning_rate: optax.Schedule, b1: float, b2: float, eps: float,
               weight_decay: float) -> optax.GradientTransformation:
    """``optax.adamw(learning_rate, b1, b2, eps, weight_decay=..., mask=ndim > 1)`` computed on one
    flat vector of the whole (sub)tree: u = -lr(k) (m_hat / (sqrt(v_hat) + eps) + wd * [ndim > 1] * p),
    with the bias-corrected moments of update k + 1. Leaves of optax's ``MaskedNode`` (other groups
    of a ``multi_transform``) hold no parameters and are skipped."""

    def init(params):
        flat = _ravel(params)
        return FlatAdamWState(jnp.zeros([], jnp.int32), jnp.zeros_like(flat), jnp.zeros_like(flat))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("flat_adamw needs the parameters (weight decay)")
        g, p = _ravel(grads), _ravel(params)
        decays = np.concatenate([np.full(x.size, x.ndim > 1, np.float32) for x in jax.tree_util.tree_leaves(params)]
                                or [np.zeros(0, np.float32)])
        count = optax.safe_int32_increment(state.count)
        mu = (1 - b1) * g + b1 * state.mu
        nu = (1 - b2) * jnp.square(g) + b2 * state.nu
        mu_hat = mu / (1 - b1 ** count).astype(mu.dtype)
        nu_hat = nu / (1 - b2 ** count).astype(nu.dtype)
        step = mu_hat / (jnp.sqrt(nu_hat) + eps) + weight_decay * jnp.asarray(decays, p.dtype) * p
        return _unravel(grads, -learning_rate(state.count) * step), FlatAdamWState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def check_flatten_layout(cfg: ConfigDict, param_shardings) -> None:
    """``flatten`` keeps each group's moments as one replicated vector: refuse it when any parameter
    is sharded (FSDP or tensor parallelism), where the per-tensor update keeps the state sharded."""
    if not cfg.get("flatten", False):
        return
    sharded = [path for path, s in jax.tree_util.tree_leaves_with_path(param_shardings)
               if not s.is_fully_replicated]
    if sharded:
        raise ValueError(f"optimizer.flatten=True needs unsharded parameters (one device or data parallelism): "
                         f"{len(sharded)} parameters are sharded, e.g. {param_path(sharded[0])}; set "
                         "optimizer.flatten=False or use sharding.rules='data_parallel'")


def make_optimizer(cfg: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """``cfg`` fields: lr, warmup_steps, final_lr_fraction, b1, b2, eps, weight_decay, grad_clip_norm,
    and optionally groups, freeze and flatten (see the module docstring).

    Weight decay skips 1-D parameters (biases, norm scales). Without groups or freeze the
    optimizer state is the plain clip + AdamW chain's.
    """
    decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)

    def adamw(lr):
        if cfg.get("flatten", False):
            return flat_adamw(learning_rate_schedule(cfg, total_steps, lr), b1=float(cfg.b1), b2=float(cfg.b2),
                              eps=float(cfg.eps), weight_decay=float(cfg.weight_decay))
        return optax.adamw(learning_rate_schedule(cfg, total_steps, lr), b1=float(cfg.b1), b2=float(cfg.b2),
                           eps=float(cfg.eps), weight_decay=float(cfg.weight_decay), mask=decay_mask)

    clip = optax.clip_by_global_norm(float(cfg.grad_clip_norm))
    groups = _groups(cfg)
    if not groups and not tuple(cfg.get("freeze", ())):
        return optax.chain(clip, adamw(cfg.lr))
    labels = param_labels(cfg)
    is_frozen = lambda params: jax.tree_util.tree_map(lambda label: label == FROZEN, labels(params))
    transforms = {MAIN: adamw(cfg.lr), FROZEN: optax.set_to_zero(),
                  **{name: adamw(g.lr) for name, g in groups.items() if float(g.lr) != 0}}
    return optax.chain(optax.masked(optax.set_to_zero(), is_frozen), clip,
                       optax.multi_transform(transforms, labels))
