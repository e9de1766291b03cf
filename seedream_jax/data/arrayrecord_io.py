"""Sharded ArrayRecord datasets: a writer that resumes an interrupted write, and a reader.

A dataset is one directory::

    <dir>/records-00000.array_record   shard 0: records [0, n), n = records_per_shard
    <dir>/records-00001.array_record   shard 1: records [n, 2n) ... (the last shard may be shorter)
    <dir>/progress.json                finished shards and the producer's resume state (during a write)
    <dir>/manifest.json                written last: the dataset is complete iff it exists

Each entry is one encoded record (``data/records.py``). Shards are written under a temporary
name and renamed when closed; ``progress.json`` is replaced atomically after each rename. A
rerun of an interrupted write (``ShardedWriter`` on the same directory and config) keeps the
finished shards, deletes any partial one, and tells the producer where to continue:

- ``writer.resume_state``: the JSON value passed with the last record of the last finished
  shard (e.g. how many input items were consumed), so the producer skips that input; or
- ``writer.records_done``: the number of records already stored, for a deterministic producer
  that regenerates its output and drops that many records.

Either way the finished dataset is byte-identical to one written without interruption.

``ArrayRecordSource`` reads a complete dataset (or several) as one random-access data source
(``len``, ``__getitem__``, ``__getitems__``), picklable, usable by ``grain.MapDataset.source``
and ``grain.DataLoader``; entries are the encoded record bytes, or ``Record`` objects with
``decode=True``.
"""
import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Union

from array_record.python import array_record_data_source, array_record_module

from seedream_jax.data import records as records_lib

FORMAT = "seedream-arrayrecord"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
# group_size:1 makes every record one chunk (fast random access); images are already compressed.
DEFAULT_OPTIONS = "group_size:1,uncompressed"
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})\.array_record$")


class DatasetError(RuntimeError):
    """A dataset directory is incomplete, inconsistent with the requested config, or unreadable."""


def shard_name(prefix: str, index: int) -> str:
    """File name of shard ``index``: ``<prefix>-00007.array_record``."""
    return f"{prefix}-{index:05d}.array_record"


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclasses.dataclass
class ShardInfo:
    """One finished shard: file name (relative to the dataset dir) and number of records."""
    name: str
    num_records: int


class ShardedWriter:
    """Writes encoded records into shards of ``records_per_shard`` and resumes interrupted writes.

    Args:
      out_dir: dataset directory (created).
      records_per_shard: records per shard file (the last one may hold fewer).
      config: JSON dict describing the producer (input, settings). A rerun must pass the same
        config to resume; a different one is refused (delete the directory to start over).
      prefix: shard file prefix.
      options: ArrayRecord writer options string.

    Use: ``for rec in ...: writer.write(encoded, resume_state)`` then ``writer.close(summary)``.
    ``resume_state`` is the producer's JSON state *after* this record; the writer stores the one of
    the last record of each finished shard. When the directory already holds a complete dataset
    with the same config, ``complete`` is True and nothing may be written.
    """

    def __init__(self, out_dir: str, records_per_shard: int, config: Optional[dict] = None,
                 prefix: str = "records", options: str = DEFAULT_OPTIONS):
        if records_per_shard <= 0:
            raise ValueError(f"records_per_shard must be positive, got {records_per_shard}")
        self.out_dir = out_dir
        self.records_per_shard = int(records_per_shard)
        self.prefix = prefix
        self.options = options
        self.config = json.loads(json.dumps(config or {}, sort_keys=True))
        self.shards: List[ShardInfo] = []
        self.resume_state: Any = None
        self.complete = False
        self._writer = None
        self._in_shard = 0
        self._last_state: Any = None
        os.makedirs(out_dir, exist_ok=True)
        self._settings = {"records_per_shard": self.records_per_shard, "prefix": prefix,
                          "options": options, "config": self.config}
        self._load_existing()

    # -- resume -------------------------------------------------------------------------
    def _check_settings(self, found: dict, what: str) -> None:
        if found != self._settings:
            raise DatasetError(
                f"{self.out_dir} holds a {what} written with different settings:\n  found:     "
                f"{json.dumps(found, sort_keys=True)}\n  requested: {json.dumps(self._settings, sort_keys=True)}\n"
                f"rerun with the same settings to resume, or delete the directory to start over")

    def _load_existing(self) -> None:
        manifest_path = os.path.join(self.out_dir, MANIFEST)
        if os.path.exists(manifest_path):
            manifest = _read_json(manifest_path)
            self._check_settings(manifest.get("settings"), "complete dataset")
            self.shards = [ShardInfo(s["name"], s["num_records"]) for s in manifest["shards"]]
            self.complete = True
            return
        progress_path = os.path.join(self.out_dir, PROGRESS)
        if os.path.exists(progress_path):
            progress = _read_json(progress_path)
            self._check_settings(progress.get("settings"), "partial write")
            self.shards = [ShardInfo(s["name"], s["num_records"]) for s in progress["shards"]]
            self.resume_state = progress.get("resume_state")
        keep = {s.name for s in self.shards} | {PROGRESS}
        for name in os.listdir(self.out_dir):  # partial shards and temporary files of a killed run
            m = _SHARD_RE.match(name.removesuffix(".tmp"))
            if (m and m.group("prefix") == self.prefix and name not in keep) or name == PROGRESS + ".tmp":
                os.remove(os.path.join(self.out_dir, name))
        for s in self.shards:
            if not os.path.exists(os.path.join(self.out_dir, s.name)):
                raise DatasetError(f"{self.out_dir}: finished shard {s.name} listed in {PROGRESS} is missing; "
                                   f"delete the directory to start over")

    @property
    def records_done(self) -> int:
        """Records stored in finished shards (plus the open shard, while writing)."""
        return sum(s.num_records for s in self.shards) + self._in_shard

    # -- writing ------------------------------------------------------------------------
    def _tmp_path(self) -> str:
        return os.path.join(self.out_dir, shard_name(self.prefix, len(self.shards)) + ".tmp")

    def write(self, encoded: bytes, resume_state: Any = None) -> None:
        """Appends one encoded record.

        ``resume_state``: the producer's state after this record, a JSON value or a zero-argument
        callable returning one (called only when this record finishes a shard).
        """
        if self.complete:
            raise DatasetError(f"{self.out_dir} is already complete; nothing can be appended")
        if self._writer is None:
            self._writer = array_record_module.ArrayRecordWriter(self._tmp_path(), self.options)
        self._writer.write(encoded)
        self._in_shard += 1
        self._last_state = resume_state
        if self._in_shard == self.records_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        self._writer.close()
        self._writer = None
        name = shard_name(self.prefix, len(self.shards))
        os.replace(self._tmp_path(), os.path.join(self.out_dir, name))
        self.shards.append(ShardInfo(name, self._in_shard))
        self._in_shard = 0
        self.resume_state = self._last_state() if callable(self._last_state) else self._last_state
        _write_json(os.path.join(self.out_dir, PROGRESS), {
            "settings": self._settings, "resume_state": self.resume_state,
            "shards": [dataclasses.asdict(s) for s in self.shards]})

    def close(self, summary: Optional[dict] = None) -> dict:
        """Finishes the last shard and writes the manifest (last); returns the manifest dict."""
        if self.complete:
            return _read_json(os.path.join(self.out_dir, MANIFEST))
        if self._writer is not None:
            self._finish_shard()
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "record_schema_version": records_lib.SCHEMA_VERSION,
            "num_records": sum(s.num_records for s in self.shards),
            "shards": [dataclasses.asdict(s) for s in self.shards],
            "settings": self._settings, "summary": summary or {},
        }
        _write_json(os.path.join(self.out_dir, MANIFEST), manifest)
        progress = os.path.join(self.out_dir, PROGRESS)
        if os.path.exists(progress):
            os.remove(progress)
        self.complete = True
        return manifest

    def abort(self) -> None:
        """Closes the open shard file without finishing it (it is discarded on resume)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_manifest(path: str) -> dict:
    """The manifest of a complete dataset directory; ``DatasetError`` if absent or foreign."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest_path):
        partial = os.path.exists(os.path.join(path, PROGRESS))
        raise DatasetError(f"{path}: no {MANIFEST}; "
                           + ("the write was interrupted: rerun it to finish" if partial
                              else "not a seedream ArrayRecord dataset"))
    manifest = _read_json(manifest_path)
    if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DatasetError(f"{manifest_path}: format {manifest.get('format')!r} v{manifest.get('format_version')}, "
                           f"expected {FORMAT!r} v<={FORMAT_VERSION}")
    return manifest


class ArrayRecordSource:
    """Random-access data source over the shards of one or more complete datasets.

    ``source[i]`` is the ``i``-th record in shard order (dataset after dataset): the encoded bytes,
    or a ``records.Record`` if ``decode``. Picklable (the shard readers open lazily per process),
    so it can be handed to ``grain.MapDataset.source`` and multiprocess ``grain.DataLoader``.
    """

    def __init__(self, paths: Union[str, Sequence[str]], decode: bool = False):
        self.paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        self.decode = decode
        self.manifests = [read_manifest(p) for p in self.paths]
        self.files = [os.path.join(p, s["name"]) for p, m in zip(self.paths, self.manifests) for s in m["shards"]
                      if s["num_records"] > 0]
        self._len = sum(m["num_records"] for m in self.manifests)
        self._source = None

    def _open(self):
        if self._source is None:
            self._source = array_record_data_source.ArrayRecordDataSource(self.files)
            if len(self._source) != self._len:
                raise DatasetError(f"{self.paths}: shards hold {len(self._source)} records, manifests say {self._len}")
        return self._source

    def __len__(self) -> int:
        return self._len

    def _out(self, data: bytes):
        return records_lib.decode_record(data) if self.decode else data

    def __getitem__(self, index: int):
        if not -self._len <= index < self._len:
            raise IndexError(f"record index {index} out of range for {self._len} records")
        return self._out(self._open()[index % self._len])

    def __getitems__(self, indices: Sequence[int]) -> List:
        if not len(indices):
            return []
        return [self._out(d) for d in self._open().__getitems__(list(indices))]

    def __iter__(self):
        for i in range(self._len):
            yield self[i]

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.paths!r}, records={self._len}, shards={len(self.files)})"
