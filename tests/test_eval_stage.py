"""The ``eval`` stage end to end: report JSON/Markdown, grids, TensorBoard scalars, summary merge;
a DiT checkpoint through the pipeline adapter, a VAE checkpoint as a round trip of the ground
truth; the generate contract (padding, shared noise)."""
import glob
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from seedream_jax import config_lib
from seedream_jax.checkpoint.manager import Checkpointer
from seedream_jax.checkpoint.stage_dir import StageDescription, write_stage_meta
from seedream_jax.data import synthetic as S
from seedream_jax.eval import suite as SU
from seedream_jax.main import run_stages
from seedream_jax.models.conditioner import Conditioner
from seedream_jax.models.mmdit import MMDiT
from seedream_jax.models.vae import AutoencoderKL
from seedream_jax.stages import eval as eval_stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny
    cfg = tiny.get_config()
    cfg.stages = ("eval",)
    cfg.eval.max_items_per_group = 1
    for k, v in overrides.items():
        cfg.eval[k] = v
    return cfg


def _tags(logdir):
    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in EventFileLoader(path).Load():
            tags |= {v.tag for v in event.summary.value}
    return tags


def test_ground_truth_eval_writes_the_report(tmp_path):
    workdir = str(tmp_path)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump({"pretrain": {"steps": 3}}, f)
    summary = run_stages(_config(checkpoint="ground_truth"), workdir)["eval"]
    out = os.path.join(workdir, "eval", "ground_truth_step0")
    assert summary["eval_dir"] == out and summary["objects_seen"] == 1.0 and summary["text_ra"] == 1.0
    with open(os.path.join(workdir, "summary.json")) as f:
        merged = json.load(f)
    assert set(merged) == {"pretrain", "eval", "eval_table"}  # earlier stages' entries are kept
    (row,) = merged["eval_table"]  # the renderer scores 1.0 everywhere
    assert (row.pop("eval"), row.pop("stage"), row.pop("step")) == ("eval", "ground_truth", 0)
    assert row == {**{c: 1.0 for c in SU.OBJECT_CATEGORIES}, "en": 1.0, "zh": 1.0, "seen": 1.0, "held-out": 1.0,
                   "text exact": 1.0}
    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert len(report["images"]) == 2 * 15 and len(report["pairs"]) == 15 and len(report["items"]) == 15
    for cat in SU.CATEGORIES:
        for metric, cell in report["metrics"][cat].items():
            assert cell["all"]["all"] == 1.0, (cat, metric)
    assert report["metrics"]["colour"]["accuracy"]["heldout"]["zh"] == 1.0
    assert report["metrics"]["text_en_word"]["ra"]["heldout"]["en"] is None  # text has no held-out split
    assert set(report["timing"]) == {"generate_s", "score_s", "write_images_s", "total_s"}
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "| category | metric | en seen | zh seen | en held-out | zh held-out | all | n |" in md
    assert "| colour | accuracy | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 2 x 2 |" in md
    assert sorted(os.listdir(os.path.join(out, "grids"))) == ["binding.png", "count.png", "groups.png", "position.png",
                                                             "relation.png", "single.png", "text.png"]
    assert len(os.listdir(os.path.join(out, "images"))) == 30
    tags = _tags(os.path.join(workdir, "eval", "tensorboard", "ground_truth"))
    assert {"eval/colour/accuracy/seen/en", "eval/text_zh_word/ra/all/all", "eval/consistency/count/all",
            "eval/headline/objects_heldout", "eval/grid/text"} <= tags


def _save(stage_dir, step, state, cfg, kind):
    """A stage directory: the checkpoint and its stage.json (components of ``kind`` from ``cfg.model``)."""
    ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), keep=1, async_save=False)
    ckpt.save(step, state, {"position": 0}, force=True)
    ckpt.wait()
    ckpt.close()
    conditioner, mmdit, vae = config_lib.build_model_configs(cfg.model)
    parts = {"vae": (AutoencoderKL, vae)}
    if kind == "pretrain":
        parts.update(conditioner=(Conditioner, conditioner), mmdit=(MMDiT, mmdit))
    write_stage_meta(stage_dir, kind, kind, StageDescription(components=parts))


class RenderingPipe:
    """Stands in for ``TextToImage``: renders each prompt's spec; records the calls."""

    def __init__(self, items):
        self.scenes = {it.prompt(lang): it.scene for it in items for lang in SU.LANGUAGES}
        self.calls = []

    def __call__(self, params, prompts, *, height, width, num_steps, solver, guidance_scale, seed):
        self.calls.append((len(prompts), seed, num_steps))
        return np.stack([S.render_scene(self.scenes[p], (height, width)) for p in prompts])


def test_eval_of_a_checkpoint_goes_through_the_pipeline(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    zeros = {"w": np.zeros(2, np.float32)}
    os.makedirs(os.path.join(workdir, "data", "synthetic"))
    with open(os.path.join(workdir, "data", "synthetic", "records.jsonl"), "w") as f:
        for colour in ("red", "blue"):  # a red star is held out
            f.write(json.dumps({"spec": {"objects": [{"colour": colour, "shape": "star"}]}}) + "\n")
    cfg = _config(batch_size=4, num_steps=5, seed=10)
    _save(os.path.join(workdir, "pretrain"), 7, {"params": {"mmdit": zeros, "conditioner": zeros},
                                                 "frozen": {"vae": zeros}}, cfg, "pretrain")
    items = eval_stage.select_items(SU.build_suite(0), 1)
    pipe = RenderingPipe(items)
    loaded = []

    def fake_load(cfg_, workdir_, checkpoint, use_ema):
        loaded.append((checkpoint, use_ema))
        return pipe, {"params": None}
    monkeypatch.setattr(eval_stage, "load_pipeline", fake_load)
    summary = run_stages(cfg, workdir)["eval"]
    assert loaded == [("pretrain", True)] and summary["step"] == 7
    assert summary["eval_dir"] == os.path.join(workdir, "eval", "pretrain_step7")
    assert summary["objects_seen"] == 1.0 and summary["objects_heldout"] == 1.0 and summary["text_exact"] == 1.0
    # 15 prompts per language in batches of 4, the last padded: 4 calls per language, seeds 10, 14, 18, 22.
    assert pipe.calls == [(4, 10, 5), (4, 14, 5), (4, 18, 5), (4, 22, 5)] * 2
    md = open(summary["report"], encoding="utf-8").read()
    assert "training records with a held-out pair: 1 of 2 records" in md


def test_generator_gives_both_languages_the_same_noise_per_position():
    class NoisePipe:  # image value = the noise a real pipeline would draw: (seed, index in batch)
        def __call__(self, params, prompts, *, height, width, num_steps, solver, guidance_scale, seed):
            return np.stack([np.full((height, width, 3), (seed * 8 + i) % 256, np.uint8) for i in range(len(prompts))])
    gen = eval_stage.pipeline_generator(NoisePipe(), None, batch_size=3, height=8, width=8, num_steps=1,
                                        solver="euler", guidance_scale=1.0, seed=0)
    en, zh = gen([f"en {i}" for i in range(7)]), gen([f"zh {i}" for i in range(7)])
    assert en.shape == (7, 8, 8, 3) and np.array_equal(en, zh)
    assert len({int(im[0, 0, 0]) for im in en}) == 7  # every position its own noise


def test_bad_generator_output_is_rejected():
    items = eval_stage.select_items(SU.build_suite(0), 1)[:2]
    from seedream_jax.eval.benchmark import generate_suite
    with pytest.raises(ValueError, match="expected uint8"):
        generate_suite(lambda prompts: np.zeros((len(prompts), 8, 8, 3), np.float32), items)


def test_eval_of_a_vae_checkpoint_round_trips_the_ground_truth(tmp_path):
    workdir = str(tmp_path)
    cfg = _config(checkpoint="vae")
    vae_cfg = config_lib.build_model_configs(cfg.model)[2]
    # Random weights of the right shapes (eval_shape: an op-by-op init takes ~20 s on a CPU).
    shapes = nn.meta.unbox(jax.eval_shape(AutoencoderKL(vae_cfg).init, jax.random.PRNGKey(0),
                                          jnp.zeros((1, 64, 64, 3)))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype), shapes)
    _save(os.path.join(workdir, "vae"), 3, {"params": {"vae": params}, "frozen": {}}, cfg, "vae")
    summary = run_stages(cfg, workdir)["eval"]
    assert summary["eval_dir"] == os.path.join(workdir, "eval", "vae_step3")
    with open(os.path.join(summary["eval_dir"], "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert "VAE round trip" in report["source"] and len(report["images"]) == 30
    # An untrained VAE decodes grey mush: nothing scores.
    assert report["headline"]["objects_seen"] == 0.0 and report["headline"]["text_exact"] == 0.0
