"""configs/tiny_chain.py end to end through the command line, shrunk by overrides to
test_pipeline's small tiny config: SIGTERM in the middle stage (pretrain), then the same command
resumes there and finishes the chain; summary.json's eval table has one row per eval stage,
printed as Markdown at the end."""
import json
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "configs"))

import pytest  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

import tiny_chain  # noqa: E402
from seedream_jax.eval.suite import OBJECT_CATEGORIES  # noqa: E402
from conftest import FAST_COMPILE  # noqa: E402
from test_pipeline import small_config  # noqa: E402

PRETRAIN_STEPS = 12


def chain_config():
    """The chain on 32 px images with one block per stack and a narrow 4x VAE (as
    record_configs.tiny_record_config), 4 VAE and 12 DiT steps, no sampling during training,
    evals of one item per (category, split) sampled in 2 steps."""
    cfg = tiny_chain.add_chain(small_config())
    cfg.model.mmdit.update(dict(num_double_blocks=1, num_single_blocks=1, patch_size=2))
    cfg.model.llm.num_hidden_layers = cfg.model.byt5.num_layers = 1
    cfg.model.vae.block_out_channels = (8, 8, 8)
    cfg.pretrain.train.update(dict(steps=PRETRAIN_STEPS, checkpoint_every=4))
    cfg.pretrain.eval_prompts = ()
    cfg.sample.num_steps = 2
    for stage in tiny_chain.TRAINING_STAGES:
        cfg[f"eval_{stage}"].update(dict(max_items_per_group=1, num_steps=2, height=32, width=32))
    return cfg


def _flat(cfg: ConfigDict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, ConfigDict) else {prefix + key: value})
    return out


def _overrides() -> list:
    """``--config.<key>=<value>`` for every field where ``chain_config`` differs from the chain's defaults."""
    default, wanted = _flat(tiny_chain.get_config()), _flat(chain_config())
    return [f"--config.{k}={v if isinstance(v, str) else repr(v)}" for k, v in wanted.items() if default[k] != v]


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.mark.slow  # the whole chain, compiled twice: 87 s alone on the 2-core machine (2026-12-08)
def test_chain_resumes_in_the_middle_stage_after_sigterm(tmp_path):
    assert len(_overrides()) > 20  # the shrinking reaches the command line
    workdir = str(tmp_path / "run")
    command = [sys.executable, "-m", "seedream_jax.main", "--config", os.path.join(REPO, "configs", "tiny_chain.py"),
               "--workdir", workdir, *_overrides()]
    # One CPU device, as on a laptop; the second command reuses the first one's compiled programs.
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", XLA_FLAGS=FAST_COMPILE,
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # preempt once pretrain has logged its first step
        seen.append(line)
        if "[pretrain] [step 1]" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    first = _summary(workdir)
    stopped_at = first["pretrain"]["steps"]
    assert first["pretrain"]["preempted"] and 1 <= stopped_at < PRETRAIN_STEPS, first["pretrain"]
    assert "sample" not in first and [row["eval"] for row in first["eval_table"]] == ["eval_vae"]

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[pretrain] resumed from {workdir}/pretrain/checkpoints at step {stopped_at}" in again.stderr
    summary = _summary(workdir)
    assert summary["pretrain"]["steps"] == PRETRAIN_STEPS and not summary["pretrain"]["preempted"]
    assert summary["sample"]["num_images"] == 2
    table = summary["eval_table"]
    assert [(r["eval"], r["stage"], r["step"]) for r in table] == \
        [("eval_vae", "vae", 4), ("eval_pretrain", "pretrain", PRETRAIN_STEPS)]
    for row in table:
        scores = [row[c] for c in OBJECT_CATEGORIES] + [row[c] for c in ("en", "zh", "seen", "held-out", "text exact")]
        assert all(0.0 <= s <= 1.0 for s in scores), row
    header = "| eval | stage | step | " + " | ".join(OBJECT_CATEGORIES) + " | en | zh | seen | held-out | text exact |"
    assert header in again.stdout and f"| eval_pretrain | pretrain | {PRETRAIN_STEPS} |" in again.stdout, again.stdout
