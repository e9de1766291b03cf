"""Self-describing stage directories: ``<stage_dir>/stage.json`` and the one reader ``open_stage``.

``stage.json`` says what a stage's checkpoint holds, so sampling, eval and export work from the
directory alone, whatever the run's config says now::

    {"format": 1, "name": "sft", "kind": "pretrain",
     "components": {"mmdit": {"class": ..., "config_class": ..., "config": {...}}, ...},
     "schedule": {"base_tokens": 256, "max_tokens": 4096, "base_shift": 0.5, "max_shift": 1.15},
     "tokenizer": {"kind": "sentencepiece", "path": ".../spm.model", "sha256": "..."},
     "init_from": {"vae": {"source": "/run/vae", "step": 800, "checksum": "...",
                           "stored": "checkpoint"}}}

The VAE's latent normalisation lives in its config (``scaling_factor``, ``shift_factor``).
``stored`` is "checkpoint" when the component's weights are saved in this stage's checkpoint
(the source is provenance) or "source" when they are read from the source at open time (then the
source must exist with the recorded checksum).
"""
import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional

from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.models import components

STAGE_FILE = "stage.json"
FORMAT = 1


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stage_checksum(stage_dir: str) -> str:
    """The checksum recorded for a stage used as a source: SHA-256 of its ``stage.json``."""
    return file_sha256(_meta_path(stage_dir))


def _meta_path(stage_dir: str) -> str:
    return os.path.join(os.path.abspath(stage_dir), STAGE_FILE)


def source_record(source_dir: str, *, stored: str = "checkpoint") -> Dict[str, Any]:
    """The ``init_from`` entry for a component taken from ``source_dir`` (its step and checksum)."""
    if stored not in ("checkpoint", "source"):
        raise ValueError(f"stored must be 'checkpoint' or 'source', got {stored!r}")
    source_dir = os.path.abspath(source_dir)
    _, step = restore_raw_state(source_dir, metadata_only=True)
    checksum = stage_checksum(source_dir) if os.path.exists(_meta_path(source_dir)) else None
    return {"source": source_dir, "step": step, "checksum": checksum, "stored": stored}


@dataclasses.dataclass
class StageDescription:
    """What a training stage's checkpoint holds (the content of ``stage.json``).

    components: {name: (Flax module class, config dataclass)}. schedule: the resolution time-shift
    parameters sampling must use (``schedules.resolution_shift`` keywords), or None. tokenizer:
    ``stage_dir.tokenizer_record(...)`` or None. init_from: {component: ``stage_dir.source_record``}.
    settings: JSON-able values the stage's users need besides the model configs (e.g. the prompt
    rewriter's generation limits), stored under ``settings``.
    """
    components: Mapping[str, Any]
    schedule: Optional[Dict[str, float]] = None
    tokenizer: Optional[Dict[str, str]] = None
    init_from: Mapping[str, dict] = dataclasses.field(default_factory=dict)
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def write_stage_meta(stage_dir: str, name: str, kind: str, description: StageDescription) -> dict:
    """Write ``<stage_dir>/stage.json`` for stage ``name`` of ``kind``; returns its content."""
    d = description
    meta = {"format": FORMAT, "name": name, "kind": kind,
            "components": {k: components.describe(cls, c) for k, (cls, c) in d.components.items()},
            "schedule": d.schedule, "tokenizer": d.tokenizer, "init_from": dict(d.init_from),
            "settings": dict(d.settings)}
    os.makedirs(stage_dir, exist_ok=True)
    tmp = _meta_path(stage_dir) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False, default=str)
    os.replace(tmp, _meta_path(stage_dir))
    return meta


def tokenizer_record(kind: str, path: str) -> Dict[str, Any]:
    """{'kind', 'path', 'sha256'} of a SentencePiece model file or an HF tokenizer directory."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        digest = hashlib.sha256()
        for name in sorted(os.listdir(path)):
            if os.path.isfile(os.path.join(path, name)):
                digest.update(name.encode() + file_sha256(os.path.join(path, name)).encode())
        sha = digest.hexdigest()
    else:
        sha = file_sha256(path)
    return {"kind": kind, "path": path, "sha256": sha}


@dataclasses.dataclass
class Stage:
    """An opened stage directory: its ``meta`` (stage.json) and the latest checkpoint's step."""
    directory: str
    meta: Dict[str, Any]
    step: int

    def params(self, weights: str = "ema") -> dict:
        """The parameters {component: tree} as host NumPy arrays: EMA weights where the
        checkpoint keeps them (``weights='ema'``), else the raw ones, merged with the frozen
        parameters, plus components stored at their source."""
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        state, _ = restore_raw_state(self.directory, self.step)
        return select_weights(state, use_ema=weights == "ema")

    def has_ema(self) -> bool:
        state, _ = restore_raw_state(self.directory, self.step, metadata_only=True)
        return bool(state.get("ema_params"))

    def component(self, name: str, **overrides):
        """(Flax module, config) of component ``name`` as this stage recorded it; ``overrides``
        (e.g. the reader's ``attention_impl``) replace top-level config fields."""
        described = self.meta["components"]
        if name not in described:
            raise KeyError(f"stage {self.directory} has no component {name!r} (it has {sorted(described)})")
        return components.build(described[name], **overrides)

    def has_component(self, name: str) -> bool:
        return name in self.meta["components"]

    def tokenizer(self) -> Dict[str, str]:
        """The recorded tokenizer {'kind', 'path', 'sha256'}; fails if it is missing or changed since
        training (another tokenizer would silently change every prompt's ids)."""
        rec = self.meta.get("tokenizer")
        if not rec:
            raise ValueError(f"stage {self.directory} records no tokenizer")
        now = tokenizer_record(rec["kind"], rec["path"]) if os.path.exists(rec["path"]) else None
        if now is None or now["sha256"] != rec["sha256"]:
            raise ValueError(f"stage {self.directory}: its tokenizer {rec['path']} is "
                             f"{'missing' if now is None else 'not the one it was trained with (checksum differs)'}")
        return rec

    @property
    def kind(self) -> str:
        return self.meta["kind"]


def select_weights(state: Mapping[str, Any], *, use_ema: bool = True) -> dict:
    """The one 'EMA else raw, merged with frozen' rule over a restored TrainState dict."""
    from seedream_jax.models.partition import merge_params
    source = state["ema_params"] if use_ema and state.get("ema_params") else state["params"]
    return merge_params(source, state.get("frozen") or {})


def _check_sources(stage_dir: str, meta: dict):
    for component, record in (meta.get("init_from") or {}).items():
        if record.get("stored") != "source":
            continue
        source = record["source"]
        if not os.path.exists(_meta_path(source)):
            raise FileNotFoundError(f"stage {stage_dir}: component {component!r} is read from {source}, whose "
                                    f"{STAGE_FILE} is missing")
        if record.get("checksum") and stage_checksum(source) != record["checksum"]:
            raise ValueError(f"stage {stage_dir}: component {component!r} comes from {source}, whose "
                             f"{STAGE_FILE} checksum no longer matches the recorded one (it was retrained or "
                             "replaced); rerun this stage or restore the source")


def open_stage(stage_dir: str, step: Optional[int] = None) -> Stage:
    """Open a stage directory written by the stage runner; fails naming what is missing. Its
    checkpoint (``step``, default the latest) is checked without reading its arrays: a damaged
    one raises ``CheckpointReadError`` naming the step and the file (``checkpoint/manager.py``)."""
    stage_dir = os.path.abspath(stage_dir)
    path = _meta_path(stage_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: {stage_dir} is not a finished stage directory "
                                "(stage.json is written when a stage ends; rerun the stage's command)")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, this version reads format {FORMAT}")
    _check_sources(stage_dir, meta)
    _, latest = restore_raw_state(stage_dir, step, metadata_only=True)
    return Stage(directory=stage_dir, meta=meta, step=latest)
