"""Generic conversion between our Flax parameter trees and PyTorch state dicts.

A model's mapping is one function ``name_fn(flax_path) -> TorchParam`` saying which
PyTorch tensor a Flax leaf corresponds to and how its layout differs. Import and
export are then the same table read in two directions:

* ``import_params(tensors, abstract_params, name_fn)`` builds a parameter tree of the
  expected shapes, checking every key and shape, and raises ``CheckpointMismatchError``
  listing missing, unexpected and mis-shaped keys;
* ``export_params(params, name_fn)`` yields ``(torch_name, array)`` pairs one at a time.

Layouts: ``LINEAR`` (Flax [in, out] <-> torch [out, in]), ``CONV`` (Flax HWIO <->
torch OIHW), ``SAME`` (no change: embeddings, norms, biases).
"""
import re
from typing import Callable, Dict, Iterator, Mapping, NamedTuple, Tuple

import flax
import jax
import numpy as np

LINEAR, CONV, SAME = "linear", "conv", "same"


class TorchParam(NamedTuple):
    name: str          # PyTorch state-dict key, e.g. "layers.0.self_attn.q_proj.weight"
    layout: str = SAME  # one of LINEAR, CONV, SAME


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model; lists every difference."""

    def __init__(self, source: str, missing, unexpected, misshaped):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
        lines = [f"checkpoint {source} does not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {self.missing}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {self.unexpected}")
        if self.misshaped:
            lines.append("  mis-shaped keys (%d): %s" % (len(self.misshaped), [
                f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.misshaped]))
        super().__init__("\n".join(lines))


def to_torch_layout(arr: np.ndarray, layout: str) -> np.ndarray:
    """Convert a Flax-layout array to the PyTorch layout."""
    if layout == LINEAR:
        return arr.T
    if layout == CONV:
        return np.transpose(arr, (3, 2, 0, 1))
    return arr


def from_torch_layout(arr: np.ndarray, layout: str) -> np.ndarray:
    """Convert a PyTorch-layout array to the Flax layout."""
    if layout == LINEAR:
        return arr.T
    if layout == CONV:
        return np.transpose(arr, (2, 3, 1, 0))
    return arr


_INDEXED = re.compile(r"^(.*)_(\d+)$")


def default_torch_name(path: Tuple[str, ...], ndim: int) -> TorchParam:
    """The usual mapping: ``a/layers_3/proj/kernel`` -> ``a.layers.3.proj.weight``.

    Module names ending in ``_<int>`` become ``.<int>`` (Flax lists vs torch ModuleList);
    ``kernel`` becomes ``weight`` (LINEAR if 2-D, CONV if 4-D); ``scale`` and
    ``embedding`` become ``weight``. Models override the cases this gets wrong.
    """
    *modules, leaf = path
    parts = []
    for m in modules:
        match = _INDEXED.match(m)
        parts.extend([match.group(1), match.group(2)] if match else [m])
    if leaf == "kernel":
        return TorchParam(".".join(parts + ["weight"]), LINEAR if ndim == 2 else CONV)
    if leaf in ("scale", "embedding"):
        return TorchParam(".".join(parts + ["weight"]), SAME)
    return TorchParam(".".join(parts + [leaf]), SAME)


def _flat(tree) -> Dict[Tuple[str, ...], object]:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(flax.linen.meta.unbox(tree)))


def import_params(tensors: Mapping[str, np.ndarray], abstract_params, name_fn: Callable[[Tuple[str, ...], int], TorchParam],
                  *, source: str = "<tensors>", dtype=np.float32, allow_unexpected: Callable[[str], bool] = lambda k: False):
    """Build a Flax parameter tree shaped like ``abstract_params`` from PyTorch tensors.

    Args:
      tensors: torch state-dict names -> arrays (any float dtype incl. bf16/fp16).
      abstract_params: the model's parameter tree (arrays or ``jax.ShapeDtypeStruct``,
        boxed or not), e.g. ``jax.eval_shape(model.init, ...)['params']``.
      name_fn: maps a Flax path and the leaf's ndim to its ``TorchParam``.
      source: shown in error messages (file or directory name).
      allow_unexpected: predicate for checkpoint keys that may be ignored (e.g. lm_head).
    Returns: an unboxed nested dict of NumPy arrays in ``dtype``.
    Raises: CheckpointMismatchError listing every missing, unexpected and mis-shaped key.
    """
    flat = _flat(abstract_params)
    out, missing, misshaped, used = {}, [], [], set()
    for path, leaf in flat.items():
        tp = name_fn(path, len(leaf.shape))
        if tp.name not in tensors:
            missing.append(tp.name)
            continue
        used.add(tp.name)
        arr = from_torch_layout(np.asarray(tensors[tp.name]), tp.layout)
        if tuple(arr.shape) != tuple(leaf.shape):
            misshaped.append((tp.name, tuple(np.asarray(tensors[tp.name]).shape),
                              tuple(to_torch_layout(np.empty(leaf.shape, np.int8), tp.layout).shape)))
            continue
        out[path] = np.asarray(arr, dtype=dtype)
    unexpected = sorted(k for k in tensors if k not in used and not allow_unexpected(k))
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(source, sorted(missing), unexpected, misshaped)
    return flax.traverse_util.unflatten_dict(out)


def export_params(params, name_fn: Callable[[Tuple[str, ...], int], TorchParam],
                  *, dtype=None) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield ``(torch_name, array)`` for every leaf of ``params``, one tensor at a time.

    Each leaf is fetched to host only when yielded, so a caller writing tensors as they
    come never holds a second full copy of the model. ``dtype`` casts (e.g. bf16).
    """
    seen = {}
    for path, leaf in _flat(params).items():
        tp = name_fn(path, len(leaf.shape))
        if tp.name in seen:
            raise ValueError(f"two parameters map to torch key {tp.name!r}: {seen[tp.name]} and {path}")
        seen[tp.name] = path
        arr = to_torch_layout(np.asarray(jax.device_get(leaf)), tp.layout)
        if dtype is not None:
            arr = arr.astype(dtype)
        yield tp.name, np.ascontiguousarray(arr)
