"""End to end on a shrunken tiny config: data -> tokenizer -> vae -> pretrain -> sample.

Also: pretrain loss decreases on a fixed batch; the compiled generator equals a plain Python
Euler loop over the same model; the command line rejects unknown keys and bad values.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedream_jax.eval import curves
from seedream_jax.main import run_stages
from seedream_jax.sampling import sampler as sampler_lib
from seedream_jax.stages.sample import load_pipeline
from seedream_jax.training import loop
from seedream_jax.stages import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ['a large red circle', '一个蓝色正方形和文字“你好”']


def small_config():
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny
    cfg = tiny.get_config()
    cfg.stages = ("data", "tokenizer", "vae", "pretrain", "sample")  # the eval stage has its own tests
    cfg.data.num_images = 64
    cfg.data.image_size = 32
    cfg.model.resolution = 32
    cfg.model.mmdit.rope_base_grid = 4
    cfg.tokenizer.vocab_size = 512
    for stage in (cfg.vae, cfg.pretrain):
        stage.train.steps = 4
        stage.train.batch_size = 8
        stage.train.checkpoint_every = 2
        stage.train.log_every = 1
    cfg.pretrain.eval_prompts = PROMPTS
    cfg.pretrain.eval_steps = 2
    cfg.sample.prompts = PROMPTS
    cfg.sample.prompt_labels = ()
    cfg.sample.height = cfg.sample.width = 32
    cfg.sample.num_steps = 3
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiny"))
    cfg = small_config()
    return cfg, workdir, run_stages(cfg, workdir)


def test_all_stages_write_their_outputs(tiny_run):
    cfg, workdir, summary = tiny_run
    assert list(summary) == ["data", "tokenizer", "vae", "pretrain", "sample"]
    assert summary["data"]["num_images"] == 64
    assert os.path.exists(os.path.join(workdir, "tokenizer", "spm.model"))
    assert summary["vae"]["steps"] == 4 and summary["pretrain"]["steps"] == 4
    assert os.path.exists(os.path.join(workdir, "vae", "stage.json"))
    assert os.path.exists(os.path.join(workdir, "pretrain", "samples", "samples_step000004.png"))
    assert summary["sample"]["num_images"] == 2
    assert os.path.exists(summary["sample"]["grid"])
    for name in ("vae", "pretrain"):
        assert np.isfinite(summary[name]["final_metrics"]["loss"])
    # A rerun resumes: nothing left to train, same outputs.
    again = run_stages(cfg, workdir)
    assert again["pretrain"]["steps"] == 4


def test_pretrain_loss_decreases_on_a_fixed_batch(tiny_run, tmp_path):
    cfg, workdir, _ = tiny_run
    cfg = small_config()
    cfg.pretrain.optimizer.warmup_steps = 2
    cfg.pretrain.optimizer.lr = 2e-3
    cfg.pretrain.train.checkpoint_every = 0
    task = pretrain.build_task(cfg, cfg.pretrain, workdir)
    batch = next(task.data)

    class FixedBatch:
        def __next__(self):
            return batch

        def get_state(self):
            return {}

        def set_state(self, state):
            pass

    base_loss = task.loss_fn
    task.data = FixedBatch()
    task.loss_fn = lambda p, f, b, rng: base_loss(p, f, b, jax.random.PRNGKey(7))  # same t and noise
    task.evaluate = None
    cfg.pretrain.train.steps, cfg.pretrain.train.log_every = 30, 1
    result = loop.train(task, cfg, cfg.pretrain, str(tmp_path / "fixed"))  # one compile, every loss logged
    steps, losses = curves.read_scalars(str(tmp_path / "fixed" / "tensorboard"), ("loss",))["loss"]
    assert steps[0] == 1 and steps[-1] == 30 and losses[-1] == result.last_metrics["loss"]
    print(f"pretrain fixed-batch loss: step 1 {losses[0]:.4f} -> step 30 {losses[-1]:.4f}")
    assert losses[-1] < 0.5 * losses[0]


def test_compiled_sampler_matches_python_euler_loop(tiny_run):
    cfg, workdir, _ = tiny_run
    pipe, params = load_pipeline(cfg, workdir, "pretrain")
    from seedream_jax.models.conditioner import tokenize_prompts
    tokens = tokenize_prompts(PROMPTS, pipe.tokenizer, pipe.conditioner_cfg)
    uncond_tokens = tokenize_prompts([""], pipe.tokenizer, pipe.conditioner_cfg)
    cond, uncond = pipe.encode(params, tokens), pipe.encode(params, uncond_tokens)
    noise = sampler_lib.initial_noise(jax.random.PRNGKey(0), 2, pipe.latent_shape(32, 32))
    mu = pipe.mu(32, 32)
    compiled = sampler_lib.make_sampler(pipe.velocity, num_steps=6, solver="euler", guidance_scale=3.0)
    fast = jax.jit(compiled)(params, noise, cond, uncond, mu)
    slow = sampler_lib.reference_euler_sample(pipe.velocity, params, noise, cond, uncond, mu,
                                              num_steps=6, guidance_scale=3.0)
    diff = float(jnp.max(jnp.abs(fast - slow)))
    print(f"compiled vs python Euler (MMDiT, 6 steps, CFG 3): max abs diff {diff:.2e}")
    assert diff <= 1e-5


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "seedream_jax.main", "--config", "configs/tiny.py", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_unknown_keys_and_bad_values(tmp_path):
    out = _cli("--workdir", str(tmp_path), "--config.pretrain.train.stepz=3")
    assert out.returncode != 0 and "stepz" in out.stderr
    out = _cli("--workdir", str(tmp_path), "--config.stages=('data','nope')")
    assert out.returncode != 0 and "unknown stage" in out.stderr and "nope" in out.stderr


def test_export_samples_like_jax_in_pytorch(tiny_run, tmp_path):
    """The trained run's pretrain checkpoint, exported to HF / diffusers folders and sampled by a
    plain PyTorch Euler loop with CFG from the JAX sampler's noise, gives the JAX sampler's images."""
    from seedream_jax.interop.pipeline import export_checkpoint
    from seedream_jax.interop.verify import compare_with_torch
    cfg, workdir, _ = tiny_run
    export_checkpoint(cfg, workdir, str(tmp_path))
    pipe, params = load_pipeline(cfg, workdir, "pretrain")
    report = compare_with_torch(str(tmp_path), pipe, params, PROMPTS, height=32, width=32, num_steps=3,
                                guidance_scale=4.0)
    print(f"trained tiny run exported, PyTorch vs JAX sampler: max pixel diff {report['max_pixel_diff']}")
    assert report["max_pixel_diff"] <= 1


def test_export_reads_the_frozen_vae_from_the_vae_stage_where_it_is_stored(tiny_run, tmp_path):
    """pretrain's checkpoints leave its frozen VAE at the vae stage (``frozen_sources.json``): the
    export of pretrain still has the VAE, tensor for tensor the export of the vae stage's weights."""
    from seedream_jax.checkpoint.manager import restore_raw_state
    from seedream_jax.checkpoint.stage_dir import frozen_sources, select_weights
    from seedream_jax.interop import safetensors_io
    from seedream_jax.interop.pipeline import export_checkpoint, export_pipeline, stage_configs
    cfg, workdir, _ = tiny_run
    pretrain, vae = os.path.join(workdir, "pretrain"), os.path.join(workdir, "vae")
    assert frozen_sources(pretrain)["vae"]["source"] == vae
    assert "vae" not in (restore_raw_state(pretrain, metadata_only=True)[0].get("frozen") or {})
    result = export_checkpoint(cfg, workdir, str(tmp_path / "pretrain"))
    assert "vae" in result["files"]
    export_pipeline({"vae": select_weights(restore_raw_state(vae)[0])["vae"]}, *stage_configs(cfg, pretrain),
                    str(tmp_path / "source"), components=["vae"])
    got, want = (safetensors_io.LazyTensors(str(tmp_path / d / "vae")) for d in ("pretrain", "source"))
    assert set(got) == set(want) and len(want) > 0
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), name


def test_grid_captions_label_prompts_and_tiny_grid_follows_the_world():
    """A labelled prompt reads '[label] prompt' under its image; the tiny config's grid prompts
    are the world's own captions except the two labelled off-template ones."""
    from seedream_jax.data import synthetic
    from seedream_jax.stages.sample import grid_captions
    assert grid_captions(["a", "b", "c"], ("", "off-template")) == ["a", "[off-template] b", "c"]
    with pytest.raises(ValueError, match="prompt_labels has 2 labels for 1 prompts"):
        grid_captions(["a"], ("x", "y"))
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny
    cfg = tiny.get_config()
    labelled = dict(zip(cfg.sample.prompts, cfg.sample.prompt_labels))
    world = {synthetic.captions(scene)[lang][kind] for scene, kind, langs in tiny.GRID_SCENES for lang in langs}
    assert {p for p, label in labelled.items() if label != "off-template"} == world
    assert sum(label == "off-template" for label in labelled.values()) == 2 and len(world) == 14


def test_a_stage_directory_samples_the_same_whatever_cfg_model_says_now(tiny_run):
    cfg, workdir, _ = tiny_run
    pipe, params = load_pipeline(cfg, workdir, "pretrain")
    other = small_config()
    other.model.mmdit.num_heads = 2  # another DiT width: ignored, stage.json says what was trained
    other.model.vae.latent_channels = 8
    pipe2, params2 = load_pipeline(other, workdir, "pretrain")
    assert pipe2.mmdit_cfg == pipe.mmdit_cfg and pipe2.vae_cfg == pipe.vae_cfg
    a = pipe(params, PROMPTS, height=32, width=32, num_steps=2)
    b = pipe2(params2, PROMPTS, height=32, width=32, num_steps=2)
    np.testing.assert_array_equal(a, b)


def test_a_changed_tokenizer_or_source_fails_naming_it(tiny_run, tmp_path):
    import json
    import shutil
    from seedream_jax.checkpoint.stage_dir import open_stage
    cfg, workdir, _ = tiny_run
    stage = str(tmp_path / "pretrain")
    shutil.copytree(os.path.join(workdir, "pretrain"), stage)
    meta_path = os.path.join(stage, "stage.json")
    meta = json.load(open(meta_path))
    meta["tokenizer"]["sha256"] = "0" * 64
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(ValueError, match="spm.model is not the one it was trained with"):
        load_pipeline(cfg, workdir, stage)
    meta["init_from"]["vae"].update(stored="source", checksum="0" * 64)
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(ValueError, match=r"component 'vae' comes from .*/vae, whose stage.json checksum"):
        open_stage(stage)
