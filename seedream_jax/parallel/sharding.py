"""Logical-axis rules -> shardings for parameters, optimizer state and activations.

Models annotate parameters with logical names (``seedream_jax.parallel.axes``); the config's
``sharding.rules`` table maps each logical name to a mesh axis (or None = replicated). The
presets below are the common strategies; a config may give its own table.
"""
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seedream_jax.parallel import axes

Rules = Sequence[Tuple[str, Any]]

# Pure data parallel: every parameter replicated, activations split over the batch.
DATA_PARALLEL: Rules = tuple((a, None) for a in axes.ALL_PARAM_AXES) + (
    (axes.BATCH, ("data", "fsdp")), (axes.LENGTH, None), (axes.ACT_EMBED, None), (axes.ACT_HEADS, None))
# FSDP (ZeRO-3 style): the model width of every matrix sharded over 'fsdp'; the other
# dimension over 'tensor' when that axis is > 1 (Megatron-style column/row split).
FSDP_TENSOR: Rules = (
    (axes.EMBED, "fsdp"),
    (axes.MLP, "tensor"),
    (axes.HEADS, "tensor"),
    (axes.KV, "tensor"),
    (axes.VOCAB, "tensor"),
    (axes.NORM, None),
    (axes.CONV_IN, None),
    (axes.CONV_OUT, "fsdp"),
    (axes.RELPOS, None),
    (axes.BATCH, ("data", "fsdp")),
    (axes.LENGTH, None),
    (axes.ACT_EMBED, None),
    (axes.ACT_HEADS, "tensor"),
)
PRESETS = {"data_parallel": DATA_PARALLEL, "fsdp": FSDP_TENSOR}


def resolve_rules(rules) -> Rules:
    """A preset name or an explicit [(logical, mesh_axis_or_None), ...] table."""
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise ValueError(f"unknown sharding rules preset {rules!r}; expected one of {sorted(PRESETS)}")
        return PRESETS[rules]
    return tuple((str(k), None if v is None else (tuple(v) if isinstance(v, (list, tuple)) else str(v)))
                 for k, v in rules)


def _fit_spec(spec: P, shape, mesh: Mesh) -> P:
    """Drop mesh axes that do not divide the dimension they shard (keeps tiny models runnable)."""
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        size = 1
        for n in names:
            size *= mesh.shape[n]
        fitted.append(entry if size > 1 and dim % size == 0 else None)
    return P(*fitted)


def tree_shardings(abstract_tree, mesh: Mesh, rules: Rules):
    """NamedShardings for a (boxed) abstract tree from ``jax.eval_shape``.

    Leaves annotated with ``nn.LogicallyPartitioned`` follow the rules; unannotated leaves
    (step counters, RNG keys, optimizer scalars) are replicated. A mesh axis that does not
    divide a dimension is dropped for that dimension.
    """
    specs = nn.get_partition_spec(abstract_tree)
    logical = nn.logical_to_mesh(specs, rules)
    shapes = nn.meta.unbox(abstract_tree)

    def to_sharding(spec, leaf):
        spec = spec if isinstance(spec, P) else P()
        return NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh))

    return jax.tree_util.tree_map(to_sharding, logical, shapes,
                                  is_leaf=lambda x: isinstance(x, P) or x is None)
