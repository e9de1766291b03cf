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
(the source is provenance) or "source" when they are read from the source at open time: a frozen
component taken whole from another stage (``train.self_contained`` False, ``training/loop.py``).
Such a record also names the component's ``path`` in the source, the exact ``step`` and the
``weights`` read ('ema' or 'raw'); the loop writes these records to
``<stage_dir>/frozen_sources.json`` ({component: record}) before its first checkpoint, and the
source must still have that step and the recorded checksum when they are read (``check_source``).
"""
import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional

import flax

from seedream_jax.checkpoint.init_from import load_component
from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.checkpoint.source_records import (check_source, file_sha256, frozen_sources, meta_path, weights_key,
                                                    write_json)
from seedream_jax.models import components

FORMAT = 1


@dataclasses.dataclass
class StageDescription:
    """What a training stage's checkpoint holds (the content of ``stage.json``).

    components: {name: (Flax module class, config dataclass)}. schedule: the resolution time-shift
    parameters sampling must use (``schedules.resolution_shift`` keywords), or None. tokenizer:
    ``stage_dir.tokenizer_record(...)`` or None. init_from: {component: ``source_records.source_record``}
    (the stage runner adds one per source of the stage's ``init_from`` config and those of
    ``frozen_sources``, so a kind names only other sources here).
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
    write_json(meta_path(stage_dir), meta)
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
        parameters, plus the components stored at their source (``frozen_sources``), each read
        from there at the recorded step (and, if that stage stores it at its source, from there)."""
        from seedream_jax.models.partition import merge_params
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        state, _ = restore_raw_state(self.directory, self.step)
        params = select_weights(state, use_ema=weights == "ema")
        for component, record in frozen_sources(self.directory).items():
            check_source(self.directory, component, record)
            tree, _ = load_component(record["source"], record["path"], step=record["step"],
                                     use_ema=record["weights"] == "ema")
            key = tuple(component.strip("/").split("/"))
            params = merge_params(params, flax.traverse_util.unflatten_dict({key: tree}))
        return params

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
    return merge_params(state[weights_key(state, use_ema)], state.get("frozen") or {})


def _check_sources(stage_dir: str, meta: dict):
    """``check_source`` of every component the stage reads from its source (stage.json's
    ``stored: "source"`` records and ``frozen_sources.json``, which an unfinished stage's
    stage.json may not list yet)."""
    records = [(k, r) for k, r in (meta.get("init_from") or {}).items() if r.get("stored") == "source"]
    for component, record in records + list(frozen_sources(stage_dir).items()):
        check_source(stage_dir, component, record)


def open_stage(stage_dir: str, step: Optional[int] = None) -> Stage:
    """Open a stage directory written by the stage runner; fails naming what is missing. Its
    checkpoint (``step``, default the latest) is checked without reading its arrays: a damaged
    one raises ``CheckpointReadError`` naming the step and the file (``checkpoint/manager.py``)."""
    stage_dir = os.path.abspath(stage_dir)
    path = meta_path(stage_dir)
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
