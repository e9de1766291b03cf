"""Cross-stage initialisation: start a stage from components of other stages' checkpoints.

A stage config names ``init_from = {target_path: source}``; paths are '/'-joined
(``'conditioner/byt5'``) and a source is

  ``'vae'``                      the same component path in the stage directory ``<workdir>/vae``;
  ``'sft:mmdit'``                component ``mmdit`` of ``<workdir>/sft``: a rename, e.g.
                                 ``{'ref/mmdit': 'sft:mmdit', 'conditioner/byt5': 'glyph_align:byt5'}``;
  ``'/runs/x/pretrain:mmdit'``   an absolute stage directory, with or without ``:component``.

``parse_source`` turns a value into ``(stage_dir, source_path)``. The component is read from the
source's latest checkpoint (one that does not read fails with ``CheckpointReadError`` naming the
entry, the step and the file): its EMA parameters (the raw ones when it keeps no EMA) merged with its
frozen parameters; it must have exactly the target's tree structure and shapes. A target may span
the trainable and the frozen trees. Where the source stage stores (part of) the component at its
own source (``<source>/frozen_sources.json``, ``checkpoint/stage_dir.py``), those leaves are read
from there at the recorded step, recursively, so 'pretrain:vae' works whether or not pretrain's
checkpoints hold its VAE. Two ways in:

  ``restore_sharded``: the arrays straight into the target shardings, reading only those leaves
    (the loop's fresh start with ``Task.init_sources``; nothing passes through one host);
  ``apply_init_from``: the host form over NumPy trees (a ``Task.initialise`` hook).

New parameters (``keep_init``): a stage that adds parameters to a component (the continued-training
stage adds the style adapter to the MMDiT) starts that component from a source that lacks them by
naming them: ``with_keep_init(sources, patterns)`` attaches regexes (``re.fullmatch`` on the full
'/'-joined target path, e.g. ``r'mmdit/.*style_.*'``) to every source, written as a third element
``(stage_dir, source_path, patterns)``. A target leaf the source lacks keeps its initialisation when
a pattern matches it (logged) and fails as before, naming the leaf and ``keep_init``, when none
does; a leaf the source has is loaded whether or not a pattern matches (so a later stage whose
source has the adapter loads it), and source leaves the target lacks still fail.

Grown parameters (``pad_init``): a stage that widens a parameter (the refiner's patch embedding
``mmdit/x_embedder/kernel`` gains input rows for its conditioning channels, ``stages/refiner.py``)
names it in ``with_keep_init(sources, keep, pad_init=patterns)`` (a fourth element). A target leaf
matching one whose shape is at least the source's on every axis (same rank) gets the source in its
leading block ``[:s_0, :s_1, ...]`` and zeros elsewhere, so the new rows contribute nothing at
the start; a leaf of another shape still fails as misshaped, naming it.
"""
import contextlib
import logging
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax
import jax
import numpy as np

from seedream_jax.checkpoint.manager import CheckpointReadError, restore_raw_state, restore_subset
from seedream_jax.checkpoint.source_records import check_source, frozen_sources, weights_key
from seedream_jax.models.partition import merge_params

Source = Tuple[str, str]  # (stage directory, component path[, keep_init patterns[, pad_init patterns]])
Key = Tuple[str, ...]


def with_keep_init(sources: Mapping[str, tuple], patterns: Sequence[str],
                   pad_init: Sequence[str] = ()) -> Dict[str, tuple]:
    """``sources`` ({target: (stage_dir, source_path)}, ``parse_sources``) with ``patterns`` attached
    to each: target leaves whose full path matches one may be missing in the source and keep their
    initialisation; with ``pad_init`` too, target leaves matching one of those may be larger than
    the source's and are zero-padded (module docstring). No patterns: ``sources`` unchanged."""
    patterns, pad_init = tuple(str(p) for p in patterns), tuple(str(p) for p in pad_init)
    for p in patterns + pad_init:
        re.compile(p)  # a bad regex fails here, naming itself
    if not patterns and not pad_init:
        return dict(sources)
    return {target: (src[0], src[1], patterns, pad_init) for target, src in sources.items()}


def _split_source(src) -> Tuple[str, str, Tuple[str, ...], Tuple[str, ...]]:
    return (src[0], src[1], tuple(src[2]) if len(src) > 2 else (), tuple(src[3]) if len(src) > 3 else ())


def _matching(keys, target: str, patterns: Sequence[str]) -> set:
    """The ``keys`` (keys under ``target``) whose full '/'-joined path matches one of ``patterns``."""
    compiled = [re.compile(p) for p in patterns]
    full = lambda k: "/".join((target.strip("/"),) + tuple(k)) if k else target.strip("/")
    return {k for k in keys if any(c.fullmatch(full(k)) for c in compiled)}


def _padded(source_shapes: Mapping[Key, tuple], target_shapes: Mapping[Key, tuple], target: str,
            patterns: Sequence[str], where: str) -> set:
    """The keys present in both whose target shape is larger than the source's on some axis and no
    smaller on any (same rank) and whose path matches a pad_init pattern; logs them."""
    grown = {k for k in source_shapes.keys() & target_shapes.keys()
             if len(source_shapes[k]) == len(target_shapes[k]) and tuple(source_shapes[k]) != tuple(target_shapes[k])
             and all(s <= t for s, t in zip(source_shapes[k], target_shapes[k]))}
    padded = _matching(grown, target, patterns)
    for k in sorted(padded):
        logging.info("init_from: %s <- %s: %s %s zero-padded to %s (pad_init %s)", target, where, "/".join(k),
                     tuple(source_shapes[k]), tuple(target_shapes[k]), list(patterns))
    return padded


def zero_padded(array, shape) -> np.ndarray:
    """``array`` in the leading block of a zero array of ``shape`` (every axis at least as long)."""
    array = np.asarray(array)
    out = np.zeros(tuple(shape), array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def parse_source(value: str, target_path: str, workdir: Optional[str]) -> Source:
    """``'stage'`` or ``'stage:component/path'`` -> (stage_dir, source_path).

    The component defaults to ``target_path``; a relative stage resolves inside ``workdir``
    (an absolute one stays as it is). A value naming an existing directory as a whole is a
    stage directory, even with a ':' in its name.
    """
    value = str(value).strip()
    stage, sep, path = value.rpartition(":")
    whole = value if os.path.isabs(value) or workdir is None else os.path.join(workdir, value)
    if not sep or os.path.isdir(whole):
        stage, path = value, target_path
    path = path.strip("/")
    if not stage or not path:
        raise ValueError(f"init_from {target_path!r}: {value!r} is neither 'stage' nor 'stage:component/path'")
    if not os.path.isabs(stage):
        if workdir is None:
            raise ValueError(f"init_from {target_path!r}: {value!r} names a stage relative to the workdir, "
                             "but no workdir was given")
        stage = os.path.join(workdir, stage)
    return stage, path


def parse_sources(init_from: Mapping[str, Union[str, Source]], workdir: Optional[str]) -> Dict[str, Source]:
    """{target_path: (stage_dir, source_path)} of a config's ``init_from``; empty values are left
    out and values already parsed pass through."""
    return {target: tuple(value) if isinstance(value, (tuple, list)) else parse_source(value, target, workdir)
            for target, value in init_from.items() if value}


def _keep_missing(source_keys, target_keys, target: str, patterns: Sequence[str], where: str) -> set:
    """The target keys the source lacks that keep their initialisation (they match ``patterns``);
    logs them. The others are left for ``_check_same_structure`` to report."""
    kept = _matching(set(target_keys) - set(source_keys), target, patterns)
    if kept:
        logging.info("init_from: %s <- %s: %d leaves not in the source keep their initialisation (keep_init %s), "
                     "e.g. %s", target, where, len(kept), list(patterns), "/".join(sorted(kept)[0]))
    return kept


def _subtree(tree: Mapping, path: str, where: str):
    node = tree
    for key in _key(path):  # '' is the whole tree
        if not isinstance(node, Mapping) or key not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise KeyError(f"init_from: {where} has no component {path!r} (at {key!r}; found {have})")
        node = node[key]
    return node


def _flat(tree) -> Dict[Key, Any]:
    """{key tuple: leaf}; a bare leaf is {(): leaf}."""
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)) if isinstance(tree, Mapping) else {(): tree}


def _unflat(flat: Mapping[Key, Any]):
    return flat[()] if () in flat else flax.traverse_util.unflatten_dict(dict(flat))


def _located(trees: Mapping[str, Any]) -> dict:
    """The merge of named trees whose leaves are (tree name, key inside it, leaf)."""
    tagged = [_unflat({k: (name, k, v) for k, v in _flat(tree).items()}) if tree else {}
              for name, tree in trees.items()]
    merged = {}
    for t in tagged:
        merged = merge_params(merged, t)
    return merged


def _component(trees: Mapping[str, Any], path: str, where: str) -> Dict[Key, Tuple[str, Key, Any]]:
    """{key under ``path``: (tree name, full key, leaf)} of ``path`` in the merge of ``trees``."""
    return _flat(_subtree(_located(trees), path, where))


@contextlib.contextmanager
def _source_context(target: str, stage_dir: str, source_path: str):
    """A source checkpoint that does not read fails naming the init_from entry it serves."""
    try:
        yield
    except CheckpointReadError as e:
        raise CheckpointReadError(f"init_from {target!r} <- {stage_dir}:{source_path}: {e}", e.failures) from None


def _key(path: str) -> Key:
    return tuple(k for k in path.strip("/").split("/") if k)


def _overlap(a: str, b: str) -> bool:
    """Whether '/'-paths ``a`` and ``b`` are one path or one lies under the other."""
    a, b = _key(a), _key(b)
    return a[:len(b)] == b or b[:len(a)] == a


def source_leaves(stage_dir: str, source_path: str = "", use_ema: bool = True, step: Optional[int] = None):
    """Where each leaf of component ``source_path`` ('' for all the parameters) of ``stage_dir``'s
    checkpoint ``step`` (default the latest) is saved: ({key under the component: ((stage dir,
    step, state key), key in that state tree, array metadata)}, step). Leaves of components the
    stage stores at their source (``frozen_sources``, checked first) are those of that source at
    the recorded step and weights, recursively. Readers group the leaves by (stage dir, step): a
    partial restore of each checkpoint (``restore_component``, ``interop/orbax_io.OrbaxSource``)."""
    meta, step = restore_raw_state(stage_dir, step, metadata_only=True)
    weights = weights_key(meta, use_ema)
    flat = _flat(_located({(stage_dir, step, weights): meta[weights], (stage_dir, step, "frozen"): meta.get("frozen")}))
    for target, record in frozen_sources(stage_dir).items():
        if _overlap(target, source_path):
            check_source(stage_dir, target, record)
            leaves, _ = source_leaves(record["source"], record["path"], record["weights"] == "ema", record["step"])
            flat.update({_key(target) + k: v for k, v in leaves.items()})
    return _flat(_subtree(_unflat(flat), source_path, f"checkpoint {stage_dir} (step {step})")), step


def _check_same_structure(source_shapes: Mapping[Key, tuple], target_shapes: Mapping[Key, tuple],
                          target: str, where: str):
    missing = sorted("/".join(k) for k in target_shapes.keys() - source_shapes.keys())
    unexpected = sorted("/".join(k) for k in source_shapes.keys() - target_shapes.keys())
    misshaped = sorted(f"{'/'.join(k)}: {tuple(source_shapes[k])} vs {tuple(target_shapes[k])}"
                       for k in target_shapes.keys() & source_shapes.keys()
                       if tuple(source_shapes[k]) != tuple(target_shapes[k]))
    if missing or unexpected or misshaped:
        hint = (" (parameters new in this stage may be listed in its keep_init patterns to keep their "
                "initialisation)" if missing else "")
        raise ValueError(f"init_from {target!r} <- {where}: the checkpoint's component does not match "
                         f"this model. missing={missing} unexpected={unexpected} misshaped={misshaped}{hint}")


def _grown(array, leaf):
    """A source array zero-padded to the abstract ``leaf`` (a ``jax.ShapeDtypeStruct``), placed in
    its sharding (each process builds only its shards) when it has one."""
    full = zero_padded(np.asarray(array), leaf.shape).astype(leaf.dtype)
    if getattr(leaf, "sharding", None) is None:
        return full
    return jax.make_array_from_callback(tuple(leaf.shape), leaf.sharding, lambda index: full[index])


def restore_component(stage_dir: str, source_path: str, abstract_subtree, *, use_ema: bool = True,
                      step: Optional[int] = None, target_path: Optional[str] = None, keep_init: Sequence[str] = (),
                      pad_init: Sequence[str] = ()):
    """Component ``source_path`` of ``stage_dir``'s checkpoint ``step`` (default the latest), read
    straight into ``abstract_subtree`` (a tree, or one leaf, of ``jax.ShapeDtypeStruct`` with
    shardings, of the component's structure and shapes). Returns (the same tree of ``jax.Array``,
    step); with ``keep_init`` patterns the target leaves the source lacks that match one are left
    out of it; leaves matching a ``pad_init`` pattern may be larger than the source's (zero-padded)."""
    source, step = source_leaves(stage_dir, source_path, use_ema, step)
    target = _flat(abstract_subtree)
    where, name = f"{stage_dir}:{source_path}", target_path or source_path
    kept = _keep_missing(source, target, name, keep_init, where)
    target = {k: v for k, v in target.items() if k not in kept}
    source_shapes = {k: tuple(m.shape) for k, (_, _, m) in source.items()}
    padded = _padded(source_shapes, {k: tuple(t.shape) for k, t in target.items()}, name, pad_init, where)
    _check_same_structure({k: target[k].shape if k in padded else s for k, s in source_shapes.items()},
                          {k: t.shape for k, t in target.items()}, name, where)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    out = {}
    for checkpoint in sorted({source[k][0][:2] for k in target}):  # (stage dir, step): a partial restore each
        keys = [k for k in target if source[k][0][:2] == checkpoint]
        saved = {k: (source[k][0][2],) + source[k][1] for k in keys}  # its key in that checkpoint's state
        request = _unflat({saved[k]: jax.ShapeDtypeStruct(source_shapes[k], target[k].dtype, sharding=cpu)
                           if k in padded else target[k] for k in keys})
        restored = _flat(restore_subset(checkpoint[0], request, step=checkpoint[1]))
        out.update({k: restored[saved[k]] for k in keys})
    return _unflat({k: _grown(v, target[k]) if k in padded else v for k, v in out.items()}), step


def load_component(stage_dir: str, component: str, *, use_ema: bool = True,
                   step: Optional[int] = None) -> Tuple[Any, int]:
    """(NumPy parameters of ``component`` (a '/'-path like 'vae') of ``stage_dir``'s checkpoint
    ``step`` (default the latest), step); only that component's arrays are read."""
    source, step = source_leaves(stage_dir, component, use_ema, step)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = _unflat({k: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu) for k, (_, _, m) in source.items()})
    tree, step = restore_component(stage_dir, component, abstract, use_ema=use_ema, step=step)
    return jax.tree_util.tree_map(np.asarray, tree), step


def restore_sharded(abstract_params, abstract_frozen, sources: Mapping[str, Source], *,
                    use_ema: bool = True, step: Optional[int] = None) -> Dict[str, Dict[Key, jax.Array]]:
    """The ``sources`` components read into the shardings of the abstract (trainable, frozen) trees.

    ``abstract_*``: trees of ``jax.ShapeDtypeStruct`` with ``.sharding`` (``StateLayout.abstract``).
    ``step``: the checkpoint step read from the sources (default each one's latest).
    Returns {'params' | 'frozen': {key tuple of a leaf: jax.Array}} for the leaves replaced.
    """
    out = {"params": {}, "frozen": {}}
    for target, src in sources.items():
        stage_dir, source_path, keep_init, pad_init = _split_source(src)
        leaves = _component({"params": abstract_params, "frozen": abstract_frozen}, target, "this stage")
        with _source_context(target, stage_dir, source_path):
            restored, read = restore_component(stage_dir, source_path,
                                               _unflat({k: v for k, (_, _, v) in leaves.items()}),
                                               use_ema=use_ema, step=step, target_path=target, keep_init=keep_init,
                                               pad_init=pad_init)
        restored = _flat(restored) if restored is not None else {}
        for k, (holder, key, _) in leaves.items():
            if k in restored:
                out[holder][key] = restored[k]
        logging.info("init_from: %s <- %s:%s (step %d, restored sharded)", target, stage_dir, source_path, read)
    return out


def frozen_targets(abstract_params, abstract_frozen, sources: Mapping[str, Source]) -> Dict[str, Source]:
    """The ``sources`` whose target a stage can leave at its source: every leaf in the frozen tree,
    read unchanged (no keep_init / pad_init pattern matches one of its leaves) and no other
    target overlapping it. ``abstract_*``: the stage's (trainable, frozen) trees."""
    out = {}
    for target, src in sources.items():
        _, _, keep_init, pad_init = _split_source(src)
        leaves = _component({"params": abstract_params, "frozen": abstract_frozen}, target, "this stage")
        if (all(holder == "frozen" for holder, _, _ in leaves.values())
                and not _matching(leaves, target, keep_init + pad_init)
                and not any(_overlap(target, other) for other in sources if other != target)):
            out[target] = src
    return out


def apply_init_from(trainable, frozen, sources: Mapping[str, Union[str, Source]], *,
                    workdir: Optional[str] = None, use_ema: bool = True):
    """Replace components of (trainable, frozen) by those of other stages' checkpoints, on the host.

    ``sources``: {target_path: raw config value (``parse_source``; relative ones need ``workdir``)
    or (stage_dir, source_path[, keep_init patterns])}. Returns new (trainable, frozen) nested dicts of NumPy arrays.
    """
    flat = {"params": _flat(trainable) if trainable else {}, "frozen": _flat(frozen) if frozen else {}}
    for target, src in parse_sources(sources, workdir).items():
        stage_dir, source_path, keep_init, pad_init = _split_source(src)
        leaves = _component({"params": trainable, "frozen": frozen}, target, "this stage")
        with _source_context(target, stage_dir, source_path):
            loaded, step = load_component(stage_dir, source_path, use_ema=use_ema)
        loaded, where = _flat(loaded), f"{stage_dir}:{source_path}"
        kept = _keep_missing(loaded, leaves, target, keep_init, where)
        leaves = {k: v for k, v in leaves.items() if k not in kept}
        target_shapes = {k: np.shape(v) for k, (_, _, v) in leaves.items()}
        for k in _padded({k: np.shape(v) for k, v in loaded.items()}, target_shapes, target, pad_init, where):
            loaded[k] = zero_padded(loaded[k], target_shapes[k])
        _check_same_structure({k: np.shape(v) for k, v in loaded.items()}, target_shapes, target, where)
        for k, (holder, key, _) in leaves.items():
            flat[holder][key] = loaded[k]
        logging.info("init_from: %s <- %s:%s (step %d)", target, stage_dir, source_path, step)
    return tuple(_unflat({k: np.array(v) for k, v in flat[h].items()}) if flat[h] else {}
                 for h in ("params", "frozen"))
