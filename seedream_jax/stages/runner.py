"""The one runner of every stage: resolve its kind, run it, describe its directory, summarise.

A training kind gives a ``Task`` (``build_task``); the runner trains it in ``<workdir>/<name>``
with the shared loop, writes ``stage.json`` (``checkpoint/stage_dir.py``) from the kind's
``describe`` at the start (so an unfinished stage's checkpoints can be sampled) and again at the
end (after the kind's ``finish``, which may change the description: the VAE fits its latent
normalisation there), and returns the summary. Other kinds run themselves (``run``).
The description's ``init_from`` records are the runner's: one ``source_record`` per source of the
stage's ``init_from`` config, then those of the components the loop left at their source
(``frozen_sources.json``, ``stored: "source"``), which replace them.
"""
import dataclasses
import os

from seedream_jax.checkpoint.init_from import parse_sources
from seedream_jax.checkpoint.source_records import frozen_sources, source_record
from seedream_jax.checkpoint.stage_dir import write_stage_meta
from seedream_jax.stages import load_kind, stage_kind, stage_section
from seedream_jax.training import loop


def _describe(module, cfg, stage_cfg, workdir, stage_dir, name, kind, finished=None):
    if not hasattr(module, "describe"):
        return
    description = module.describe(cfg, stage_cfg, workdir, stage_dir, finished)
    sources = {k: source_record(src[0]) for k, src in parse_sources(stage_cfg.get("init_from") or {}, workdir).items()}
    records = {**sources, **description.init_from, **frozen_sources(stage_dir)}
    write_stage_meta(stage_dir, name, kind, dataclasses.replace(description, init_from=records))


def run_stage(cfg, name: str, workdir: str) -> dict:
    """Run stage ``name`` of ``cfg`` in ``workdir``; returns its summary dict."""
    kind = stage_kind(cfg, name)
    module = load_kind(kind)
    stage_cfg = stage_section(cfg, name)
    if not hasattr(module, "build_task"):
        return module.run(cfg, stage_cfg, workdir, name)
    stage_dir = os.path.join(workdir, name)
    os.makedirs(stage_dir, exist_ok=True)
    task = module.build_task(cfg, stage_cfg, workdir)
    task.name = name
    _describe(module, cfg, stage_cfg, workdir, stage_dir, name, kind)
    result = loop.train(task, cfg, stage_cfg, stage_dir)
    summary = {"stage_dir": stage_dir, "kind": kind, "steps": result.step, "preempted": result.preempted,
               "steps_per_second": result.steps_per_second, "final_metrics": result.last_metrics,
               "train_seconds": round(result.wall_seconds, 1)}
    if result.preempted:
        return summary
    finished = module.finish(cfg, stage_cfg, workdir, stage_dir, result) if hasattr(module, "finish") else {}
    summary.update(finished)
    _describe(module, cfg, stage_cfg, workdir, stage_dir, name, kind, finished)
    return summary
