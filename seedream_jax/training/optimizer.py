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
"""
import re
from typing import Dict

import flax.linen as nn
import jax
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


def make_optimizer(cfg: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """``cfg`` fields: lr, warmup_steps, final_lr_fraction, b1, b2, eps, weight_decay, grad_clip_norm,
    and optionally groups and freeze (see the module docstring).

    Weight decay skips 1-D parameters (biases, norm scales). Without groups or freeze the
    optimizer state is the plain clip + AdamW chain's.
    """
    decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim > 1, params)

    def adamw(lr):
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
