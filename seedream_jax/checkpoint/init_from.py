"""Cross-stage initialisation: start a stage from components of another stage's checkpoint.

A stage config names ``init_from = {component_path: source_stage_dir}``, e.g.
``{'vae': 'vae'}`` (the VAE of ``<workdir>/vae``) or
``{'mmdit': '/runs/pretrain_big/pretrain', 'conditioner': '/runs/pretrain_big/pretrain'}``.
The component is looked up in the source's EMA parameters (or raw parameters) merged with its
frozen parameters, and must have exactly the target's tree structure and shapes.
"""
import logging
from typing import Mapping, Tuple

import flax
import numpy as np

from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.models.partition import merge_params


def _subtree(tree: dict, path: str, where: str):
    node = tree
    for key in path.strip("/").split("/"):
        if not isinstance(node, Mapping) or key not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise KeyError(f"init_from: {where} has no component {path!r} (at {key!r}; found {have})")
        node = node[key]
    return node


def load_component(stage_dir: str, component: str, *, use_ema: bool = True) -> Tuple[dict, int]:
    """Parameters of ``component`` (a '/'-path like 'vae') from the latest checkpoint of ``stage_dir``."""
    state, step = restore_raw_state(stage_dir)
    source = state["ema_params"] if use_ema and state.get("ema_params") else state["params"]
    merged = merge_params(source, state.get("frozen") or {})
    return _subtree(merged, component, f"checkpoint {stage_dir} (step {step})"), step


def _check_same_structure(loaded, target, component: str, stage_dir: str):
    flat_l = flax.traverse_util.flatten_dict(loaded)
    flat_t = flax.traverse_util.flatten_dict(target)
    missing = sorted("/".join(k) for k in flat_t.keys() - flat_l.keys())
    unexpected = sorted("/".join(k) for k in flat_l.keys() - flat_t.keys())
    misshaped = sorted(f"{'/'.join(k)}: {np.shape(flat_l[k])} vs {np.shape(flat_t[k])}"
                       for k in flat_t.keys() & flat_l.keys() if np.shape(flat_l[k]) != np.shape(flat_t[k]))
    if missing or unexpected or misshaped:
        raise ValueError(f"init_from {component!r} <- {stage_dir}: the checkpoint's component does not match "
                         f"this model. missing={missing} unexpected={unexpected} misshaped={misshaped}")


def apply_init_from(trainable: dict, frozen: dict, sources: Mapping[str, str], *, use_ema: bool = True):
    """Replace components of (trainable, frozen) by those of other stages' checkpoints.

    ``sources`` maps a component path to an absolute stage directory. Returns new
    (trainable, frozen) nested dicts of NumPy arrays.
    """
    trees = {"trainable": flax.core.unfreeze(trainable), "frozen": flax.core.unfreeze(frozen)}
    for component, stage_dir in sources.items():
        loaded, step = load_component(stage_dir, component, use_ema=use_ema)
        keys = component.strip("/").split("/")
        holder_name = next((n for n, t in trees.items() if _has_path(t, keys)), None)
        if holder_name is None:
            raise KeyError(f"init_from: this stage has no component {component!r}")
        parent = _subtree(trees[holder_name], "/".join(keys[:-1]), "this stage") if len(keys) > 1 else trees[holder_name]
        _check_same_structure(loaded, parent[keys[-1]], component, stage_dir)
        parent[keys[-1]] = jax_free_copy(loaded)
        logging.info("init_from: %s <- %s (step %d)", component, stage_dir, step)
    return trees["trainable"], trees["frozen"]


def _has_path(tree, keys) -> bool:
    node = tree
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return False
        node = node[k]
    return True


def jax_free_copy(tree):
    """Nested dict of NumPy arrays (copies), whatever array type came in."""
    return {k: jax_free_copy(v) if isinstance(v, Mapping) else np.array(v) for k, v in tree.items()}
