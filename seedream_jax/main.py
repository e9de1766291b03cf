"""Entry point: ``python -m seedream_jax.main --config configs/<stage>.py --workdir <dir>``.

The config's ``stages`` tuple lists what to run, in order: each entry is a stage name whose
kind is ``cfg.<name>.kind`` (default: the name; ``seedream_jax/stages/``), and each stage writes
under ``<workdir>/<name>/``. Overrides: ``--config.pretrain.train.steps=100``; unknown keys fail.
"""
import json
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from seedream_jax.parallel import distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for all outputs of this run (created if missing).")
flags.mark_flags_as_required(["config", "workdir"])


def run_stages(cfg, workdir: str) -> dict:
    """Run ``cfg.stages`` in order; returns {stage: summary dict} with wall times, also merged
    into ``<workdir>/summary.json`` by process 0 (entries of stages not run now are kept), whose
    ``eval_table`` lists the scores of every eval stage there (``eval.report.eval_table``)."""
    from seedream_jax.eval.report import eval_table
    from seedream_jax.stages import load_kind, stage_kind
    from seedream_jax.stages.runner import run_stage
    for name in cfg.stages:  # fail before any stage runs
        load_kind(stage_kind(cfg, name))
    os.makedirs(workdir, exist_ok=True)
    summaries = {}
    for name in cfg.stages:
        t0 = time.time()
        logging.info("==== stage %s ====", name)
        summary = run_stage(cfg, name, workdir)
        summary["wall_seconds"] = round(time.time() - t0, 1)
        summaries[name] = summary
        logging.info("stage %s done in %.1fs: %s", name, summary["wall_seconds"], summary)
        if summary.get("preempted"):
            logging.warning("stage %s was interrupted; rerun the same command to resume", name)
            break
    if not distributed.is_primary():  # one process writes the shared summary
        return summaries
    path = os.path.join(workdir, "summary.json")
    previous = {}
    if os.path.exists(path):  # a later command (e.g. only 'eval') keeps earlier stages' entries
        with open(path) as f:
            previous = json.load(f)
    merged = {**previous, **summaries}
    merged["eval_table"] = eval_table(merged)
    with open(path, "w") as f:
        json.dump(merged, f, indent=2, default=str, ensure_ascii=False)
    return summaries


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save INFO lines
    distributed.initialize(FLAGS.config)  # before anything touches a device
    from seedream_jax.checkpoint.manager import CheckpointReadError
    try:
        summaries = run_stages(FLAGS.config, os.path.abspath(FLAGS.workdir))
    except CheckpointReadError as e:  # the message names the step(s) and files; TensorStore's traceback would not help
        raise SystemExit(f"error: {e}") from None
    if not distributed.is_primary():
        return
    print("\nOutputs:")
    for name, s in summaries.items():
        where = {k: v for k, v in s.items() if k.endswith(("dir", "grid", "tokenizer"))}
        print(f"  {name:10s} {s['wall_seconds']:7.1f}s  " + "  ".join(f"{k}={v}" for k, v in where.items()))
    summary_path = os.path.join(os.path.abspath(FLAGS.workdir), "summary.json")
    print(f"  summary    {summary_path}")
    with open(summary_path) as f:
        table = json.load(f)["eval_table"]
    if table:
        from seedream_jax.eval.report import eval_table_markdown
        print("\nEval scores (object accuracy by category, language and split; exact text):\n")
        print(eval_table_markdown(table))
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
