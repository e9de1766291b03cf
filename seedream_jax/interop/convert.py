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

Streaming export: a ``ParamSource`` knows every leaf's shape up front and reads leaves on
request (``TreeSource`` over an in-memory tree, ``orbax_io.OrbaxSource`` over a training
checkpoint); ``write_component`` plans the output tensors from the shapes alone, then reads a
bounded chunk of leaves at a time, converts and writes each tensor and drops it, so exporting
never holds a second copy of the model.
"""
import abc
import json
import os
import re
from typing import Callable, Dict, Iterator, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax
import jax
import ml_dtypes
import numpy as np

from seedream_jax.interop import safetensors_io

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


def flatten(tree) -> Dict[Tuple[str, ...], object]:
    """{path tuple: leaf} of a (boxed or frozen) parameter tree; empty sub-dicts vanish."""
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
    flat = flatten(abstract_params)
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


def to_export_array(arr, layout: str, dtype=None) -> np.ndarray:
    """One Flax leaf (NumPy or device array) -> contiguous PyTorch-layout NumPy array in ``dtype``."""
    out = to_torch_layout(np.asarray(jax.device_get(arr)), layout)
    if dtype is not None:
        out = out.astype(dtype, copy=False)
    return np.ascontiguousarray(out).reshape(out.shape)  # a 0-d leaf (a logit scale) stays 0-d


def export_params(params, name_fn: Callable[[Tuple[str, ...], int], TorchParam],
                  *, dtype=None) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield ``(torch_name, array)`` for every leaf of ``params``, one tensor at a time.

    Each leaf is fetched to host only when yielded, so a caller writing tensors as they
    come never holds a second full copy of the model. ``dtype`` casts (e.g. bf16).
    """
    flat = flatten(params)
    plan = _plan(flat, name_fn)
    for path, tp, _ in plan:
        yield tp.name, to_export_array(flat[path], tp.layout, dtype)


# ----------------------------------------------------------------------------- streaming export

EXPORT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                 "float16": np.dtype(np.float16)}
_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16"}


def export_dtype(dtype) -> np.dtype:
    """Validate an export dtype: ``np.float32``, ``ml_dtypes.bfloat16``, ``np.float16`` or a name
    ('float32', 'fp32', 'bfloat16', 'bf16', 'float16', 'fp16')."""
    name = _DTYPE_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r} not supported; expected one of {sorted(EXPORT_DTYPES)}")
    return EXPORT_DTYPES[name]


Path = Tuple[str, ...]


class ParamSource(abc.ABC):
    """Parameters readable leaf by leaf.

    ``shapes()`` gives every leaf's ``jax.ShapeDtypeStruct`` keyed by its Flax path (a tuple of
    names) without reading data; ``read(paths)`` returns {path: NumPy array} for those leaves.
    ``describe`` names the source in error messages.
    """
    describe = "<parameters>"

    @abc.abstractmethod
    def shapes(self) -> Dict[Path, jax.ShapeDtypeStruct]:
        """Every leaf's shape and dtype, keyed by its Flax path."""

    @abc.abstractmethod
    def read(self, paths: Sequence[Path]) -> Dict[Path, np.ndarray]:
        """{path: NumPy array} for ``paths``."""

    def scoped(self, prefix) -> "ParamSource":
        """The leaves under ``prefix`` ('a/b' or a tuple), with paths relative to it."""
        prefix = tuple(prefix.strip("/").split("/")) if isinstance(prefix, str) else tuple(prefix)
        mapping = {p[len(prefix):]: p for p in self.shapes() if p[:len(prefix)] == prefix}
        if not mapping:
            tops = sorted({"/".join(p[:len(prefix)]) for p in self.shapes()})
            raise KeyError(f"{self.describe} has no component {'/'.join(prefix)!r} (found {tops})")
        return _View(self, mapping, f"{self.describe}:{'/'.join(prefix)}")

    def select(self, keep: Callable[[Path], bool]) -> "ParamSource":
        """The leaves whose path satisfies ``keep`` (paths unchanged)."""
        return _View(self, {p: p for p in self.shapes() if keep(p)}, self.describe)


class TreeSource(ParamSource):
    """A source over an in-memory tree (boxed or not; NumPy or device arrays, fetched per leaf)."""

    def __init__(self, params, describe: str = "<parameters>"):
        self._flat = flatten(params)
        self.describe = describe

    def shapes(self):
        return {p: jax.ShapeDtypeStruct(np.shape(v), v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype)
                for p, v in self._flat.items()}

    def read(self, paths):
        return {p: np.asarray(jax.device_get(self._flat[p])) for p in paths}


class _View(ParamSource):
    def __init__(self, base: ParamSource, mapping: Dict[Path, Path], describe: str):
        self._base, self._map, self.describe = base, mapping, describe
        base_shapes = base.shapes()
        self._shapes = {p: base_shapes[q] for p, q in mapping.items()}

    def shapes(self):
        return dict(self._shapes)

    def read(self, paths):
        got = self._base.read([self._map[p] for p in paths])
        return {p: got[self._map[p]] for p in paths}


def as_source(params_or_source) -> ParamSource:
    """A ``ParamSource`` as given, or a ``TreeSource`` over a parameter tree."""
    return params_or_source if isinstance(params_or_source, ParamSource) else TreeSource(params_or_source)


def check_shapes(source: ParamSource, abstract_params, *, where: str) -> None:
    """Raise ``CheckpointMismatchError`` (with Flax '/'-paths) unless ``source`` has exactly the
    leaves and shapes of ``abstract_params`` (e.g. ``abstract_params(cfg)`` of a model)."""
    have = {"/".join(p): tuple(s.shape) for p, s in source.shapes().items()}
    want = {"/".join(p): tuple(s.shape) for p, s in flatten(abstract_params).items()}
    missing = sorted(want.keys() - have.keys())
    unexpected = sorted(have.keys() - want.keys())
    misshaped = [(k, have[k], want[k]) for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(where, missing, unexpected, misshaped)


def _plan(flat_shapes: Mapping[Path, object], name_fn) -> list:
    """[(path, TorchParam, torch shape)] for every leaf; duplicate torch keys are an error."""
    seen, plan = {}, []
    for path, leaf in flat_shapes.items():
        shape = tuple(leaf.shape)
        tp = name_fn(path, len(shape))
        if tp.name in seen:
            raise ValueError(f"two parameters map to torch key {tp.name!r}: {seen[tp.name]} and {path}")
        seen[tp.name] = path
        plan.append((path, tp, tuple(to_torch_layout(np.empty(shape, np.int8), tp.layout).shape)))
    return plan


class ExtraTensor(NamedTuple):
    """A tensor written besides the parameters (e.g. an LM head): its spec and a loader."""
    spec: safetensors_io.TensorSpec
    load: Callable[[], np.ndarray]


def write_component(params_or_source, folder: str, *, name_fn: Callable[[Path, int], TorchParam],
                    config: Optional[dict] = None, basename: str = "model", dtype=np.float32,
                    key_prefix: str = "", extra: Sequence[ExtraTensor] = (), max_shard_bytes: int = 5 * 2**30,
                    chunk_bytes: int = 256 * 2**20, config_name: str = "config.json") -> list:
    """Write ``config`` as ``folder/config.json`` and the parameters as PyTorch safetensors, streaming.

    Args:
      params_or_source: a parameter tree or a ``ParamSource`` (e.g. an Orbax checkpoint).
      name_fn: the component's Flax path -> ``TorchParam`` table; ``key_prefix`` is prepended to
        every key (``'model.'`` for a CausalLM layout).
      dtype: stored dtype (``export_dtype``); the parameters are cast tensor by tensor.
      extra: further tensors appended after the parameters (loaded when written).
      chunk_bytes: leaves are read from the source in chunks of at most this many bytes (a larger
        tensor alone); host memory holds one chunk plus the tensor being written.
    Returns the files written (config first).
    """
    source = as_source(params_or_source)
    dt = export_dtype(dtype)
    os.makedirs(folder, exist_ok=True)
    files = []
    if config is not None:
        path = os.path.join(folder, config_name)
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
        files.append(path)
    shapes = source.shapes()
    plan = _plan(shapes, name_fn)
    specs = [safetensors_io.TensorSpec(key_prefix + tp.name, shape, dt) for _, tp, shape in plan]
    specs += [e.spec for e in extra]

    def chunks():
        """Consecutive runs of the plan holding at most chunk_bytes (or one larger tensor)."""
        chunk, size = [], 0
        for path, tp, shape in plan:
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(shapes[path].dtype).itemsize
            if chunk and size + nbytes > chunk_bytes:
                yield chunk
                chunk, size = [], 0
            chunk.append((path, tp))
            size += nbytes
        if chunk:
            yield chunk

    def arrays():
        for chunk in chunks():
            got = source.read([p for p, _ in chunk])
            for p, t in chunk:
                yield to_export_array(got.pop(p), t.layout, dt)
        for e in extra:
            yield np.asarray(e.load()).astype(e.spec.dtype, copy=False)

    return files + safetensors_io.save_tensor_stream(specs, arrays(), folder, basename=basename,
                                                     max_shard_bytes=max_shard_bytes)
