"""End to end: a pretrain-stage Orbax checkpoint (the stage's own tree, random weights, a
transformer adapter and the glyph branch), exported with the CLI, sampled with plain PyTorch
(transformers / diffusers modules + the conditioner layers in torch, Euler loop with CFG) from
the JAX sampler's noise: the images match the JAX sampler's. (The same check on a *trained* tiny
run is ``test_pipeline.py::test_export_samples_like_jax_in_pytorch``.)

Also: the NumPy mirrors in ``interop/torch_pipeline.py`` (text inputs, position ids, time grid)
equal the JAX code they mirror, and the export folder holds safetensors only.
"""
import json
import os
import sys

import flax
import jax
import numpy as np
import pytest

from seedream_jax.checkpoint.manager import Checkpointer
from seedream_jax.checkpoint.stage_dir import write_stage_meta
from seedream_jax.interop import safetensors_io, torch_pipeline
from seedream_jax.interop.pipeline import PIPELINE_FILE, TORCH_FILE
from seedream_jax.interop.verify import compare_with_torch
from seedream_jax.main import run_stages
from seedream_jax.models import byt5 as byt5_lib
from seedream_jax.models import conditioner as conditioner_lib
from seedream_jax.models import rope
from seedream_jax.models.partition import merge_params
from seedream_jax.sampling import schedules
from seedream_jax.stages import pretrain
from seedream_jax.stages.sample import load_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import export_weights  # noqa: E402

PROMPTS = ['a large red circle', '一个蓝色正方形和文字“你好”']


# configs/tiny.py shrunk (fewer layers: less XLA compile time), with a transformer adapter.
OVERRIDES = {"data.image_size": 32, "model.resolution": 32, "model.mmdit.rope_base_grid": 4,
             "model.mmdit.num_double_blocks": 1, "model.mmdit.num_single_blocks": 1,
             "model.llm.num_hidden_layers": 1, "model.byt5.num_layers": 1, "model.vae.block_out_channels": (16, 32),
             "model.adapter": "transformer", "tokenizer.vocab_size": 512, "sample.height": 32, "sample.width": 32,
             "sample.num_steps": 4}


def mini_run_config():
    """The run config: configs/tiny.py with OVERRIDES, 16 images, no VAE stage."""
    from seedream_jax.config_lib import load_run_config
    cfg = load_run_config(os.path.join(REPO, "configs", "tiny.py"),
                          overrides=[f"{k}={v!r}" for k, v in OVERRIDES.items()])
    cfg.stages = ("data", "tokenizer")
    cfg.data.num_images = 16
    cfg.pretrain.init_from.vae = ""        # random frozen VAE: no VAE stage needed
    return cfg


def random_like(shapes, rng, scale=0.1):
    """NumPy arrays for a tree of ShapeDtypeStructs: norms' scales near 1, everything else N(0, scale^2)."""
    flat = flax.traverse_util.flatten_dict(shapes)
    return flax.traverse_util.unflatten_dict({
        p: ((1.0 if p[-1] == "scale" else 0.0) + scale * rng.standard_normal(s.shape)).astype(np.float32)
        for p, s in flat.items()})


def write_stage_checkpoint(cfg, workdir: str, step: int = 2):
    """A pretrain-stage checkpoint without compiling a training step: the stage's own parameter
    tree (``pretrain.build_task(...).init_params`` shapes, trainable / frozen split of the config)
    with random values (zero-initialised layers made non-zero), EMA = 0.5 raw, an optimizer-state
    stand-in, saved with the loop's Checkpointer, and the stage's stage.json. Returns (raw params, ema params) merged trees."""
    task = pretrain.build_task(cfg, cfg.pretrain, workdir)
    trainable, frozen = flax.linen.meta.unbox(jax.eval_shape(task.init_params, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    trainable, frozen = random_like(trainable, rng), random_like(frozen, rng)
    ema = jax.tree_util.tree_map(lambda x: 0.5 * x, trainable)
    state = {"step": np.int32(step), "params": trainable, "frozen": frozen, "ema_params": ema,
             "opt_state": {"mu": jax.tree_util.tree_map(np.zeros_like, trainable)}, "rng": np.zeros(2, np.uint32)}
    ckpt = Checkpointer(os.path.join(workdir, "pretrain", "checkpoints"), async_save=False)
    ckpt.save(step, state, {"note": "test checkpoint"}, force=True)
    ckpt.wait()
    ckpt.close()
    stage_dir = os.path.join(workdir, "pretrain")
    write_stage_meta(stage_dir, "pretrain", "pretrain", pretrain.describe(cfg, cfg.pretrain, workdir, stage_dir))
    return merge_params(trainable, frozen), merge_params(ema, frozen)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    cfg = mini_run_config()
    run_stages(cfg, workdir)  # data and tokenizer
    raw, ema = write_stage_checkpoint(cfg, workdir)
    return cfg, workdir, raw, ema


def cli_args(workdir: str, out: str, *extra: str) -> list:
    """tools/export_weights.py arguments for the mini run (configs/tiny.py with OVERRIDES)."""
    args = ["--config", os.path.join(REPO, "configs", "tiny.py"), "--workdir", workdir, "--out", out, *extra]
    for key, value in OVERRIDES.items():
        args += ["--set", f"{key}={value!r}"]
    return args


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export"))
    assert export_weights.main(cli_args(run[1], out, "--overwrite", "--weights", "raw")) == 0
    return out


def test_pytorch_euler_loop_reproduces_the_jax_sampler(run, exported):
    cfg, workdir = run[:2]
    pipe, params = load_pipeline(cfg, workdir, "pretrain", use_ema=False)
    report = compare_with_torch(exported, pipe, params, PROMPTS + ["the text \"OPEN\""], height=32, width=32,
                                num_steps=4, guidance_scale=3.0, seed=3)
    print(f"pretrain-stage checkpoint exported, PyTorch Euler+CFG vs JAX sampler (4 steps, 32 px): max pixel diff "
          f"{report['max_pixel_diff']} (uint8 levels), mean {report['mean_pixel_diff']:.2e}; conditioner context "
          f"max abs diff {report['max_context_diff']:.2e} (max |context| {report['max_abs_context']:.1f}), pooled "
          f"{report['max_pooled_diff']:.2e}")
    tol = 1e-5 * max(1.0, report["max_abs_context"])  # float32 rounding grows with the values' scale
    assert report["max_context_diff"] <= tol and report["max_pooled_diff"] <= tol
    assert report["max_pixel_diff"] <= 1
    assert report["jax_images"].std() > 1.0  # not a blank image


def test_export_folder_is_complete_and_pickle_free(exported):
    with open(os.path.join(exported, PIPELINE_FILE)) as f:
        info = json.load(f)
    assert info["source"]["weights"] == "raw" and info["source"]["step"] == 2
    for sub in ("text_encoder", "byt5", "conditioner", "transformer", "vae"):
        assert os.path.isfile(os.path.join(exported, sub, "config.json"))
    assert os.path.isfile(os.path.join(exported, "tokenizer", "spm.model"))
    readme = open(os.path.join(exported, "README.md"), encoding="utf-8").read()
    for needle in ("FluxTransformer2DModel", "T5EncoderModel", "adapter.layers.0.q_proj.weight", "Position ids"):
        assert needle in readme
    with open(torch_pipeline.__file__, "rb") as a, open(os.path.join(exported, TORCH_FILE), "rb") as b:
        assert a.read() == b.read()
    files = [os.path.join(d, f) for d, _, fs in os.walk(exported) for f in fs]
    assert not [f for f in files if f.endswith(safetensors_io.PICKLE_SUFFIXES)]
    for f in files:
        if f.endswith(".safetensors"):
            safetensors_io.LazyTensors(f)  # parses


def _llm_tokenizer(run):
    from seedream_jax.stages.common import load_tokenizer
    return load_tokenizer(run[0], run[1])


def test_text_inputs_positions_and_times_mirror_the_jax_code(run, exported):
    prompts = ['a sign saying "OPEN"', "招牌上写着“你好”和「世界」", "『山水』 and 'tea' but don't split it's",
               "", "   ", 'empty "" quotes', "x" * 80, '"🎨 emoji" 汉字截断测试']
    for p in prompts:
        assert torch_pipeline.extract_quoted_text(p) == conditioner_lib.extract_quoted_text(p)
    for n in (1, 5, 24):
        texts = [conditioner_lib.glyph_text(p) for p in prompts]
        for a, b in zip(torch_pipeline.byt5_tokenize(texts, n), byt5_lib.byt5_tokenize(texts, n)):
            np.testing.assert_array_equal(a, b)
    with open(os.path.join(exported, "conditioner", "config.json")) as f:
        ccfg = json.load(f)
    with open(os.path.join(exported, PIPELINE_FILE)) as f:
        tok = torch_pipeline.LLMTokenizer(exported, json.load(f)["tokenizer"])
    ours = conditioner_lib.tokenize_prompts(prompts, _llm_tokenizer(run), mini_config_conditioner(run))
    theirs = torch_pipeline.text_inputs(prompts, tok, ccfg)
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])
    for rule in ("scaled", "centered", "interpolate"):
        for gh, gw, base in ((4, 4, 4), (6, 10, 4), (32, 48, 32), (3, 5, 8)):
            np.testing.assert_array_equal(torch_pipeline.image_position_ids(gh, gw, rule, base),
                                          rope.image_position_ids(gh, gw, rule=rule, base_grid=base))
            for scheme in ("diagonal", "zeros"):
                np.testing.assert_array_equal(
                    torch_pipeline.text_position_ids(7, gh, gw, scheme, rule, base),
                    rope.text_position_ids(7, gh, gw, scheme=scheme, rule=rule, base_grid=base))
    for n_tokens, steps in ((16, 4), (1024, 28), (4096, 50)):
        mu = torch_pipeline.resolution_shift(n_tokens, 256, 4096, 0.5, 1.15)
        assert abs(mu - float(schedules.resolution_shift(n_tokens))) < 1e-12
        ours_t = np.asarray(schedules.sampling_times(steps, mu))
        np.testing.assert_allclose(torch_pipeline.sampling_times(steps, mu).numpy(), ours_t, rtol=0, atol=1e-6)


def mini_config_conditioner(run):
    from seedream_jax import config_lib
    return config_lib.build_model_configs(run[0].model)[0]


def test_weights_flag_dtype_and_cli_errors(run, tmp_path, capsys):
    import ml_dtypes
    _, workdir, raw, ema = run
    for weights, tree in (("ema", ema), ("raw", raw)):
        out = str(tmp_path / weights)
        assert export_weights.main(cli_args(workdir, out, "--weights", weights, "--dtype", "bfloat16",
                                            "--components", "transformer", "vae")) == 0
        assert sorted(os.listdir(out)) == ["README.md", PIPELINE_FILE, "transformer", "vae"]
        got = safetensors_io.LazyTensors(os.path.join(out, "transformer"))
        assert got["proj_out.weight"].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got["proj_out.weight"],
                                      tree["mmdit"]["proj_out"]["kernel"].T.astype(ml_dtypes.bfloat16))
        vae = safetensors_io.LazyTensors(os.path.join(out, "vae"))  # frozen: the same either way
        np.testing.assert_array_equal(vae["decoder.conv_out.bias"],
                                      raw["vae"]["decoder"]["conv_out"]["bias"].astype(ml_dtypes.bfloat16))
    capsys.readouterr()
    assert export_weights.main(cli_args(workdir, str(tmp_path / "ema"), "--weights", "raw")) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert export_weights.main(cli_args(workdir, str(tmp_path / "x"), "--stage", "nope")) == 1
    assert "no checkpoints directory" in capsys.readouterr().err
    # The stage directory says what it holds (stage.json): a run config changed since exports the same.
    changed = cli_args(workdir, str(tmp_path / "y"), "--weights", "raw", "--dtype", "bfloat16", "--components",
                       "transformer") + ["--set", "model.mmdit.num_double_blocks=2"]
    assert export_weights.main(changed) == 0
    a = safetensors_io.LazyTensors(os.path.join(tmp_path, "y", "transformer"))
    b = safetensors_io.LazyTensors(os.path.join(tmp_path, "raw", "transformer"))
    assert set(a) == set(b) and not any(k.startswith("transformer_blocks.1.") for k in a)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert export_weights.main(cli_args(workdir, str(tmp_path / "z")) + ["--set", "model.nope=1"]) == 1
    assert "model.nope" in capsys.readouterr().err


def _rewrite_tensors(folder: str, basename: str, change) -> None:
    """Apply ``change`` (dict of NumPy tensors -> None, in place) to a component folder's weights."""
    tensors = safetensors_io.load_tensors(folder)
    change(tensors)
    for f in os.listdir(folder):
        if f.endswith(".safetensors") or f.endswith(".safetensors.index.json"):
            os.remove(os.path.join(folder, f))
    safetensors_io.save_tensors(tensors, folder, basename=basename, metadata={"format": "pt"})


def _exported_torch_module(folder: str):
    """The export's own ``seedream_torch.py``, imported from the folder (as a PyTorch user does)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"seedream_torch_{abs(hash(folder))}",
                                                  os.path.join(folder, TORCH_FILE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seedream_torch_refuses_missing_unexpected_and_misshaped_tensors(exported, tmp_path):
    import shutil
    from seedream_jax.interop import autoencoder_kl, conditioner_layers, flux

    def drop(t):
        del t["proj_out.weight"]

    def add_and_reshape_vae(t):
        t["decoder.extra.weight"] = np.zeros(1, np.float32)
        t["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)

    def add_and_reshape_conditioner(t):
        t["glyph_mapper.extra"] = np.zeros(2, np.float32)
        t["context_proj.bias"] = t["context_proj.bias"][:3]

    cases = [("transformer", flux.WEIGHTS_NAME, drop, ["missing keys (1): ['proj_out.weight']"]),
             ("vae", autoencoder_kl.WEIGHTS_NAME, add_and_reshape_vae,
              ["unexpected keys (1): ['decoder.extra.weight']", "quant_conv.weight: files (8, 8, 3, 3) vs model"]),
             ("conditioner", conditioner_layers.WEIGHTS_NAME, add_and_reshape_conditioner,
              ["unexpected keys (1): ['glyph_mapper.extra']", "context_proj.bias: files (3,) vs model"])]
    for component, basename, change, needles in cases:
        bad = str(tmp_path / component)
        shutil.copytree(exported, bad)
        _rewrite_tensors(os.path.join(bad, component), basename, change)
        module = _exported_torch_module(bad)
        with pytest.raises(module.StrictLoadError) as e:
            module.SeedreamPipeline.from_pretrained(bad)
        message = str(e.value)
        print(f"{component}: {message[:300]}")
        assert message.startswith(f"{component} (") and "Refusing to load it" in message
        for needle in needles:
            assert needle in message, message
    # The intact export loads.
    assert _exported_torch_module(exported).SeedreamPipeline.from_pretrained(exported).transformer is not None


def test_verify_fails_beyond_the_tolerance_and_on_a_damaged_export(run, tmp_path, capsys, monkeypatch):
    import re
    from seedream_jax.interop import flux
    workdir = run[1]
    real_export = export_weights.pipeline.export_checkpoint

    def export_then(change):
        def export(cfg, workdir, out_dir, **kw):
            result = real_export(cfg, workdir, out_dir, **kw)
            _rewrite_tensors(os.path.join(out_dir, "transformer"), flux.WEIGHTS_NAME, change)
            return result
        return export

    verify = ["--weights", "raw", "--verify", PROMPTS[0]]
    # Intact: passes within the float32 tolerance.
    assert export_weights.main(cli_args(workdir, str(tmp_path / "good"), *verify)) == 0
    assert "verify passed: max pixel difference" in capsys.readouterr().out
    # One tensor deleted: the strict PyTorch load fails, naming it.
    monkeypatch.setattr(export_weights.pipeline, "export_checkpoint",
                        export_then(lambda t: t.pop("proj_out.weight")))
    assert export_weights.main(cli_args(workdir, str(tmp_path / "dropped"), *verify)) == 1
    err = capsys.readouterr().err
    assert "error: --verify" in err and "missing keys (1): ['proj_out.weight']" in err, err
    # One tensor changed: loads, samples differ, the failure says by how much.
    monkeypatch.setattr(export_weights.pipeline, "export_checkpoint",
                        export_then(lambda t: t.update({"proj_out.weight": 3.0 * t["proj_out.weight"]})))
    assert export_weights.main(cli_args(workdir, str(tmp_path / "scaled"), *verify)) == 1
    out, err = capsys.readouterr()
    diff = json.loads(out.split("same noise): ", 1)[1].splitlines()[0])["max_pixel_diff"]
    print(f"scaled proj_out.weight: max pixel diff {diff}; {err.strip()}")
    assert diff > 1
    assert re.search(rf"max pixel difference {diff} \(uint8 levels, mean [0-9.e+-]+\) exceeds the tolerance 1 by "
                     rf"{diff - 1}\b", err), err
