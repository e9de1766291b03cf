"""Logical-axis rules -> shardings for parameters, optimizer state and activations.

Models annotate parameters with logical names (``seedream_jax.parallel.axes``); the config's
``sharding.rules`` table maps each logical name to a mesh axis (or None = replicated). The
presets below are the common strategies; a config may give its own table.
"""
from typing import Any, Optional, Sequence, Tuple

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


def _mesh_axes(rules: Rules, logical: str) -> set:
    """The mesh axes the first rule for ``logical`` names (empty when none or None)."""
    for name, target in rules:
        if name == logical:
            return set() if target is None else ({target} if isinstance(target, str) else set(target))
    return set()


def gathered_axes(logical_axes: Sequence[Any], rules: Optional[Rules] = None) -> tuple:
    """The layout of a parameter at its use: its logical axes, with None for each axis whose rule
    splits it over a mesh axis the batch is also split over ('fsdp' in the presets: the ``embed``
    width). A weight constrained to this before its matmul is all-gathered over the FSDP axis, as
    ZeRO-3 does, and stays split over the others ('heads', 'mlp', 'vocab' over 'tensor').
    ``rules`` defaults to the current ``nn.logical_axis_rules``; with none it changes nothing.

    XLA needs this: its SPMD partitioner (jax 0.10.2, Shardy and GSPMD alike) miscompiles one case
    that FSDP + tensor parallelism leaves to it otherwise. On a mesh with data, fsdp and tensor all
    > 1, x [batch over (data, fsdp), ..., K over tensor] times w [K over tensor, N over fsdp], with
    the result's N over tensor (a row-parallel projection whose output is reduce-scattered), comes
    back with the batch shards (data=0, fsdp=1) and (data=1, fsdp=0) swapped. With the kernel
    gathered that case never reaches the partitioner; docs/xla_row_parallel_swap.md has the
    standalone reproducer.
    """
    rules = nn.get_logical_axis_rules() if rules is None else rules
    batch = _mesh_axes(rules, axes.BATCH)
    return tuple(None if a is not None and a != axes.BATCH and _mesh_axes(rules, a) & batch else a
                 for a in logical_axes)


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
