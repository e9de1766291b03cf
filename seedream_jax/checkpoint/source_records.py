"""Where a stage's components come from: the ``init_from`` source records of ``stage.json`` and
``<stage_dir>/frozen_sources.json``, and the checks that a source still holds what was read.

A record (``source_record``) is {"source": stage dir, "step", "checksum": SHA-256 of the source's
``stage.json``, "stored": "checkpoint" | "source"}; a component stored at its source (a frozen
component taken whole from another stage, ``train.self_contained`` False, ``training/loop.py``)
also names its ``path`` in the source and the ``weights`` read ('ema' or 'raw'). The stage
directory's reader (``checkpoint/stage_dir.py``) and the cross-stage reader
(``checkpoint/init_from.py``) both follow these records.
"""
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional

from seedream_jax.checkpoint.manager import restore_raw_state

STAGE_FILE = "stage.json"
FROZEN_SOURCES_FILE = "frozen_sources.json"


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stage_checksum(stage_dir: str) -> str:
    """The checksum recorded for a stage used as a source: SHA-256 of its ``stage.json``."""
    return file_sha256(meta_path(stage_dir))


def meta_path(stage_dir: str) -> str:
    """``<stage_dir>/stage.json``."""
    return os.path.join(os.path.abspath(stage_dir), STAGE_FILE)


def write_json(path: str, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically (a temporary file renamed over it)."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
    os.replace(path + ".tmp", path)


def weights_key(state: Mapping[str, Any], use_ema: bool = True) -> str:
    """The saved tree a reader's parameters come from: 'ema_params' when ``use_ema`` and the
    state (a restored TrainState dict, or its metadata) keeps an EMA, else 'params'."""
    return "ema_params" if use_ema and state.get("ema_params") else "params"


def source_record(source_dir: str, *, step: Optional[int] = None, path: Optional[str] = None) -> Dict[str, Any]:
    """The ``init_from`` entry for a component taken from ``source_dir``: {"source", "step" (``step``,
    default its latest checkpoint's), "checksum", "stored": "checkpoint"}. With ``path`` (the
    component's path in the source) the entry of a component stored at its source: "stored":
    "source" plus "path" and "weights" ('ema' where that checkpoint keeps an EMA, else 'raw': what
    ``checkpoint.init_from`` reads)."""
    source_dir = os.path.abspath(source_dir)
    meta, step = restore_raw_state(source_dir, step, metadata_only=True)
    checksum = stage_checksum(source_dir) if os.path.exists(meta_path(source_dir)) else None
    record = {"source": source_dir, "step": step, "checksum": checksum, "stored": "checkpoint"}
    if path is not None:
        record.update(stored="source", path=path.strip("/"),
                      weights="ema" if weights_key(meta) == "ema_params" else "raw")
    return record


def write_frozen_sources(stage_dir: str, records: Mapping[str, dict]) -> None:
    """Write ``<stage_dir>/frozen_sources.json`` ({component: ``source_record(..., path=...)``});
    with no records, remove a stale one."""
    path = os.path.join(os.path.abspath(stage_dir), FROZEN_SOURCES_FILE)
    if records:
        write_json(path, dict(records))
    elif os.path.exists(path):
        os.remove(path)


def frozen_sources(stage_dir: str) -> Dict[str, dict]:
    """{component path: record} of the components ``stage_dir``'s checkpoints leave at their
    source (``<stage_dir>/frozen_sources.json``; {} when it has none). Unchecked: see ``check_source``."""
    path = os.path.join(os.path.abspath(stage_dir), FROZEN_SOURCES_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_source(stage_dir: str, component: str, record: Mapping[str, Any]) -> None:
    """Fail, naming the stage, the component, its source and step, when a component ``stage_dir``
    reads from its source (a ``stored: "source"`` record) can no longer be read as it was: the
    source's ``stage.json`` is missing or changed (checksum) or the recorded checkpoint step is gone."""
    source, step = record["source"], record.get("step")
    if record.get("checksum"):
        if not os.path.exists(meta_path(source)):
            raise FileNotFoundError(f"stage {stage_dir}: component {component!r} is read from {source} (step "
                                    f"{step}), whose {STAGE_FILE} is missing")
        if stage_checksum(source) != record["checksum"]:
            raise ValueError(f"stage {stage_dir}: component {component!r} comes from {source}, whose {STAGE_FILE} "
                             f"checksum no longer matches the recorded one (it was retrained or replaced since "
                             f"step {step} was read); rerun this stage or restore the source")
    checkpoints = os.path.join(source, "checkpoints")
    if step is not None and not os.path.isdir(os.path.join(checkpoints, str(step))):
        have = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit()) if os.path.isdir(checkpoints) else []
        raise FileNotFoundError(f"stage {stage_dir}: component {component!r} is read from {source} at step {step}, "
                                f"which is gone (steps there: {have}; keep_checkpoints deletes old steps); "
                                "restore that checkpoint or rerun this stage")
