"""Read and write safetensors checkpoints (single file or sharded with an index).

Only safetensors is read: no pickle, so loading an untrusted checkpoint never runs code
from it. Tensors come back as NumPy arrays; bf16 arrives as ``ml_dtypes.bfloat16``.

Writing streams: ``save_tensor_stream`` takes the list of tensor specs (name, shape, dtype)
up front, writes each shard's header, then the tensors one at a time as an iterator produces
them, so a caller never holds more than the tensor being written (no second copy of a model,
no in-memory serialisation of a whole shard). ``LazyTensors`` reads the same way: a mapping
whose values are loaded from disk only when asked for.
"""
import json
import os
import struct
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import ml_dtypes
import numpy as np
from safetensors import safe_open

INDEX_SUFFIX = ".safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_REFUSED = "pickled checkpoints (.bin/.pt/.pth/.ckpt/.pkl) are refused: unpickling can execute code"

# numpy dtype name <-> safetensors dtype code
_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
          "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16",
          "uint8": "U8", "bool": "BOOL"}
_DTYPES = {code: (np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name))
           for name, code in _CODES.items()}


class TensorSpec(NamedTuple):
    """What will be written for one tensor: its key, shape and dtype (decided before any data)."""
    name: str
    shape: Tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def dtype_code(dtype) -> str:
    """safetensors dtype code (``'F32'``, ``'BF16'`` ...) of a NumPy / ml_dtypes dtype."""
    dt = np.dtype(dtype)
    if dt.name not in _CODES or dt.byteorder == ">":
        raise ValueError(f"dtype {dt} cannot be stored in safetensors (supported: {sorted(_CODES)}, little-endian)")
    return _CODES[dt.name]


def _pickles_in(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(PICKLE_SUFFIXES))


def _shard_files(path: str) -> list:
    """Resolve ``path`` (a .safetensors file, an index json, or a directory) to shard files."""
    if os.path.isdir(path):
        indices = sorted(f for f in os.listdir(path) if f.endswith(INDEX_SUFFIX))
        singles = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if indices:
            return _shard_files(os.path.join(path, indices[0]))
        if not singles:
            pickles = _pickles_in(path)
            extra = (f"; it holds only {pickles}: {_REFUSED}. Convert them to safetensors in an environment "
                     "you trust") if pickles else ""
            raise FileNotFoundError(f"no *.safetensors or *{INDEX_SUFFIX} file in directory {path}{extra}")
        return [os.path.join(path, f) for f in singles]
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".json"):
        with open(path) as f:
            index = json.load(f)
        if "weight_map" not in index:
            raise ValueError(f"{path}: not a safetensors index (no 'weight_map' key)")
        folder = os.path.dirname(path)
        files = sorted(set(index["weight_map"].values()))
        bad = [f for f in files if not f.endswith(".safetensors")]
        if bad:
            raise ValueError(f"{path} names non-safetensors shard files {bad}: {_REFUSED}")
        missing = [f for f in files if not os.path.exists(os.path.join(folder, f))]
        if missing:
            raise FileNotFoundError(f"{path} names shard files that do not exist: {missing}")
        return [os.path.join(folder, f) for f in files]
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a .safetensors file, an index json or a directory "
                         f"({_REFUSED})")
    return [path]


class LazyTensors(Mapping):
    """Read-only mapping name -> NumPy array over a safetensors checkpoint (file, index or folder).

    Only the headers are read on construction; ``lazy[name]`` loads that one tensor. ``rename``
    maps a stored key to the key exposed here (None hides it), e.g. to strip a ``model.`` prefix.
    Raises ValueError if two stored tensors end up under the same key.
    """

    def __init__(self, path: str, rename: Optional[Callable[[str], Optional[str]]] = None):
        self.path = path
        self._where: Dict[str, Tuple[str, str]] = {}
        for shard in _shard_files(path):
            with safe_open(shard, framework="numpy") as f:
                for stored in f.keys():
                    key = rename(stored) if rename else stored
                    if key is None:
                        continue
                    if key in self._where:
                        raise ValueError(f"{path}: tensor {key!r} appears more than once "
                                         f"({self._where[key][1]} in {self._where[key][0]} and {stored} in {shard})")
                    self._where[key] = (shard, stored)

    def renamed(self, rename: Callable[[str], Optional[str]]) -> "LazyTensors":
        """A view with keys passed through ``rename`` (None hides a key)."""
        out = LazyTensors.__new__(LazyTensors)
        out.path, out._where = self.path, {}
        for key, where in self._where.items():
            new = rename(key)
            if new is None:
                continue
            if new in out._where:
                raise ValueError(f"{self.path}: two tensors map to {new!r}")
            out._where[new] = where
        return out

    def __getitem__(self, key: str) -> np.ndarray:
        shard, stored = self._where[key]
        with safe_open(shard, framework="numpy") as f:
            return f.get_tensor(stored)

    def spec(self, key: str) -> TensorSpec:
        """Shape and dtype of a tensor without loading it."""
        shard, stored = self._where[key]
        with safe_open(shard, framework="numpy") as f:
            sl = f.get_slice(stored)
            return TensorSpec(key, tuple(sl.get_shape()), _DTYPES[sl.get_dtype()])

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key) -> bool:
        return key in self._where


def iter_tensors(path: str) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (name, array) for every tensor of a safetensors checkpoint, one at a time."""
    lazy = LazyTensors(path)
    for name in lazy:
        yield name, lazy[name]


def load_tensors(path: str) -> Dict[str, np.ndarray]:
    """Load all tensors of a safetensors checkpoint into a dict name -> NumPy array."""
    return dict(iter_tensors(path))


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> List[List[TensorSpec]]:
    """Split specs, in order, into shards of at most ``max_shard_bytes`` (a larger tensor gets its own)."""
    shards, current, size = [], [], 0
    for s in specs:
        if current and size + s.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(s)
        size += s.nbytes
    shards.append(current)
    return shards


def _header(specs: Sequence[TensorSpec], metadata: Mapping[str, str]) -> bytes:
    """The safetensors header: u64 little-endian length, then JSON padded with spaces to 8 bytes."""
    header, offset = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}, 0
    for s in specs:
        header[s.name] = {"dtype": dtype_code(s.dtype), "shape": [int(d) for d in s.shape],
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _remove_stale(folder: str, basename: str, keep: Sequence[str]) -> None:
    """Delete earlier outputs with this basename (a sharded set replaced by one file, or vice versa)."""
    keep = {os.path.basename(k) for k in keep}
    for f in os.listdir(folder):
        stale = f == f"{basename}.safetensors" or f == f"{basename}{INDEX_SUFFIX}" or (
            f.startswith(f"{basename}-") and f.endswith(".safetensors") and "-of-" in f)
        if stale and f not in keep:
            os.remove(os.path.join(folder, f))


def _write_one(f, spec: TensorSpec, arrays: Iterator[np.ndarray]) -> None:
    """Take the next array from ``arrays``, check it against ``spec`` and append its bytes to ``f``."""
    try:
        arr = np.asarray(next(arrays))
    except StopIteration:
        raise ValueError(f"the tensor stream ended before {spec.name!r}") from None
    if tuple(arr.shape) != tuple(spec.shape) or arr.dtype != np.dtype(spec.dtype):
        raise ValueError(f"tensor {spec.name!r}: got {arr.shape} {arr.dtype}, expected {tuple(spec.shape)} "
                         f"{np.dtype(spec.dtype)}")
    f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)


def save_tensor_stream(specs: Sequence[TensorSpec], arrays: Iterable[np.ndarray], folder: str, *,
                       basename: str = "model", max_shard_bytes: int = 5 * 2**30,
                       metadata: Optional[Mapping[str, str]] = None) -> list:
    """Write tensors as ``{basename}.safetensors``, or as HF-style shards plus an index, streaming.

    Args:
      specs: every tensor's (name, shape, dtype), in the order ``arrays`` produces them.
      arrays: yields one array per spec; each is written and dropped before the next is asked for.
        A shape or dtype that differs from its spec is a ValueError naming the tensor.
      max_shard_bytes: shard above this size (``{basename}-00001-of-00003.safetensors`` and
        ``{basename}.safetensors.index.json``).
    Returns the list of files written. Each file is written under a temporary name and renamed
    when complete; earlier ``{basename}`` files in ``folder`` are removed.
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate tensor names {dup}")
    os.makedirs(folder, exist_ok=True)
    meta = {"format": "pt", **(metadata or {})}
    shards = plan_shards(list(specs), max_shard_bytes)
    single = len(shards) == 1
    fnames = [f"{basename}.safetensors"] if single else [
        f"{basename}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    it = iter(arrays)
    written = []
    for shard, fname in zip(shards, fnames):
        path = os.path.join(folder, fname)
        try:
            with open(path + ".tmp", "wb") as f:
                f.write(_header(shard, meta))
                for s in shard:
                    _write_one(f, s, it)
        except BaseException:  # leave no partial file and no incomplete shard set of this write
            for p in [path + ".tmp"] + written:
                if os.path.exists(p):
                    os.remove(p)
            raise
        os.replace(path + ".tmp", path)
        written.append(path)
    if next(it, None) is not None:
        raise ValueError("the tensor stream produced more arrays than specs")
    if not single:
        index_path = os.path.join(folder, f"{basename}{INDEX_SUFFIX}")
        weight_map = {s.name: fname for shard, fname in zip(shards, fnames) for s in shard}
        with open(index_path, "w") as f:
            json.dump({"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}, f, indent=2)
        written.append(index_path)
    _remove_stale(folder, basename, written)
    return written


def save_tensors(tensors: Mapping[str, np.ndarray], folder: str, *, basename: str = "model",
                 max_shard_bytes: int = 5 * 2**30, metadata: Optional[Mapping[str, str]] = None) -> list:
    """Write an in-memory dict of tensors (``save_tensor_stream`` over its values).

    Returns the list of files written. Shard names follow the HF convention
    ``{basename}-00001-of-00003.safetensors`` with ``{basename}.safetensors.index.json``.
    """
    specs = [TensorSpec(k, tuple(np.shape(v)), np.asarray(v).dtype) for k, v in tensors.items()]
    return save_tensor_stream(specs, (tensors[s.name] for s in specs), folder, basename=basename,
                              max_shard_bytes=max_shard_bytes, metadata=metadata)
