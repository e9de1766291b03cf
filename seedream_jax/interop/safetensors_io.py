"""Read and write safetensors checkpoints (single file or sharded with an index).

Only safetensors is read: no pickle, so loading an untrusted checkpoint never runs code
from it. Tensors come back as NumPy arrays; bf16 arrives as ``ml_dtypes.bfloat16``.
"""
import json
import os
from typing import Dict, Iterator, Mapping, Tuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX_SUFFIX = ".safetensors.index.json"


def _shard_files(path: str) -> list:
    """Resolve ``path`` (a .safetensors file, an index json, or a directory) to shard files."""
    if os.path.isdir(path):
        indices = sorted(f for f in os.listdir(path) if f.endswith(INDEX_SUFFIX))
        singles = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if indices:
            return _shard_files(os.path.join(path, indices[0]))
        if not singles:
            raise FileNotFoundError(f"no *.safetensors or *{INDEX_SUFFIX} file in directory {path}")
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
        missing = [f for f in files if not os.path.exists(os.path.join(folder, f))]
        if missing:
            raise FileNotFoundError(f"{path} names shard files that do not exist: {missing}")
        return [os.path.join(folder, f) for f in files]
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a .safetensors file, an index json or a directory "
                         "(pickled .bin/.pt checkpoints are refused: they can execute code)")
    return [path]


def iter_tensors(path: str) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (name, array) for every tensor of a safetensors checkpoint, one at a time."""
    for shard in _shard_files(path):
        with safe_open(shard, framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_tensors(path: str) -> Dict[str, np.ndarray]:
    """Load all tensors of a safetensors checkpoint into a dict name -> NumPy array."""
    out: Dict[str, np.ndarray] = {}
    for name, arr in iter_tensors(path):
        if name in out:
            raise ValueError(f"{path}: tensor {name!r} appears in more than one shard")
        out[name] = arr
    return out


def save_tensors(tensors: Mapping[str, np.ndarray], folder: str, *, basename: str = "model",
                 max_shard_bytes: int = 5 * 2**30, metadata: Mapping[str, str] | None = None) -> list:
    """Write tensors as ``{basename}.safetensors``, or as shards plus an index above a size.

    Returns the list of files written. Shard names follow the HF convention
    ``{basename}-00001-of-00003.safetensors`` with ``{basename}.safetensors.index.json``.
    """
    os.makedirs(folder, exist_ok=True)
    shards, current, size = [], {}, 0
    for name in tensors:
        arr = np.ascontiguousarray(tensors[name])
        if current and size + arr.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
    shards.append(current)
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        path = os.path.join(folder, f"{basename}.safetensors")
        save_file(shards[0], path, metadata=meta)
        return [path]
    written, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"{basename}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, fname), metadata=meta)
        written.append(os.path.join(folder, fname))
        weight_map.update({k: fname for k in shard})
    index_path = os.path.join(folder, f"{basename}{INDEX_SUFFIX}")
    total = int(sum(np.asarray(t).nbytes for t in tensors.values()))
    with open(index_path, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return written + [index_path]
