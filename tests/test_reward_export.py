"""Reward-model export: each reward stage kind (``reward``, ``aesthetic``, ``glyph_align``) exported from
a stage directory to safetensors (HF Qwen2Model / T5EncoderModel text towers, our CNN towers and
heads) and run in plain PyTorch: the forwards match JAX at float32 (max abs diff <= 1e-5), the
exported ``seedream_rewards_torch.py`` loads strictly, and ``tools/export_weights.py`` exports and
verifies a reward stage.

Stage directories are written without training: the model's parameter tree (``jax.eval_shape`` of
its ``init``) with random values, saved by ``orbax_io.write_params_checkpoint`` with the stage's
``stage.json``, as the stage runner would leave them.
"""
import importlib.util
import json
import os
import shutil
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seedream_jax.checkpoint.stage_dir import StageDescription, tokenizer_record, write_stage_meta
from seedream_jax.data import synthetic as S
from seedream_jax.data.tokenizer import train_sentencepiece
from seedream_jax.interop import convert, orbax_io, rewards_export, rewards_verify, safetensors_io, torch_rewards
from seedream_jax.models.byt5 import ByT5Config
from seedream_jax.models.glyph import GlyphAligner, GlyphAlignConfig, roi_align
from seedream_jax.models.rewards import (AestheticReward, AestheticRewardConfig, AlignmentReward,
                                         AlignmentRewardConfig, ImageTowerConfig)
from seedream_jax.models.text_encoder import Qwen2Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import export_weights  # noqa: E402

TOLERANCE = 1e-5
ALIGNMENT = AlignmentRewardConfig(
    llm=Qwen2Config(vocab_size=640, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4),
    image_size=32, patch_size=4, image_channels=(8, 16), groups=4, embed_dim=32, max_length=24)
AESTHETIC = AestheticRewardConfig(tower=ImageTowerConfig(image_size=32, patch_size=2, image_channels=(8, 16, 16),
                                                         groups=4, embed_dim=24))
GLYPH = GlyphAlignConfig(byt5=ByT5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
                                         relative_attention_num_buckets=8, relative_attention_max_distance=16),
                         image_size=32, image_channels=(8, 16), groups=4, roi_size=(2, 6), embed_dim=32, max_length=40)
CASES = {"reward": (AlignmentReward, ALIGNMENT), "aesthetic": (AestheticReward, AESTHETIC),
         "glyph_align": (GlyphAligner, GLYPH)}
PROMPTS = ["a red circle", "一个蓝色的正方形和文字“你好”", 'the text "OPEN" above two green triangles',
           "", "a very long prompt " * 12]


def random_params(shapes, seed: int):
    """Random float32 values for a parameter tree of ShapeDtypeStructs: norm scales near 1, biases and
    embeddings small, kernels N(0, 1/fan_in), the logit scale near log(1/0.07)."""
    rng = np.random.default_rng(seed)

    def value(path, s):
        n = rng.standard_normal(s.shape)
        if path[-1] == "scale":
            return 1.0 + 0.1 * n
        if path[-1] == "kernel":
            return n / np.sqrt(np.prod(s.shape[:-1]))
        if path[-1] == "logit_scale":
            return np.log(1 / 0.07) + 0.1 * n
        return 0.3 * n
    return flax.traverse_util.unflatten_dict({p: value(p, s).astype(np.float32)
                                              for p, s in convert.flatten(shapes).items()})


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    world = S.SyntheticWorldConfig(num_images=120, seed=3, text_probability=0.5)
    texts = S.caption_texts({"captions": S.captions(S.scene_at(world, i))} for i in range(world.num_images))
    return train_sentencepiece(texts, str(tmp_path_factory.mktemp("spm") / "spm"), 640,
                               user_defined_symbols=S.zh_caption_words())


@pytest.fixture(scope="module")
def stages(tmp_path_factory, tokenizer_path):
    """{kind: (stage_dir, params)}: a finished stage directory per reward kind, random weights."""
    root = tmp_path_factory.mktemp("run")
    out = {}
    for seed, (kind, (cls, config)) in enumerate(CASES.items()):
        spec = rewards_export.SPECS[kind]
        params = random_params(rewards_export.abstract_params(spec, cls(config), config), seed)
        stage_dir = str(root / kind)
        orbax_io.write_params_checkpoint(stage_dir, {spec.component: params}, step=3)
        tok = tokenizer_record("sentencepiece", tokenizer_path) if kind == "reward" else None
        write_stage_meta(stage_dir, kind, kind, StageDescription(components={spec.component: (cls, config)},
                                                                 tokenizer=tok))
        out[kind] = (stage_dir, params)
    return out


@pytest.fixture(scope="module")
def exports(stages, tmp_path_factory):
    out = {}
    for kind, (stage_dir, _) in stages.items():
        folder = str(tmp_path_factory.mktemp(f"export_{kind}"))
        result = rewards_export.export_reward(stage_dir, folder)
        assert result["step"] == 3 and not result["used_ema"] and result["kind"] == kind
        out[kind] = folder
    return out


def exported_module(folder: str):
    """The export's own ``seedream_rewards_torch.py``, imported from the folder as a PyTorch user does
    (it finds ``seedream_torch.py`` beside it)."""
    spec = importlib.util.spec_from_file_location(f"seedream_rewards_torch_{abs(hash(folder))}",
                                                  os.path.join(folder, rewards_export.TORCH_FILE))
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.pop("seedream_torch", None)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("seedream_torch", None)
        if saved is not None:
            sys.modules["seedream_torch"] = saved
    return module


@pytest.mark.parametrize("kind", list(CASES))
def test_pytorch_forward_matches_jax(stages, exports, kind):
    report = rewards_verify.compare_reward_with_torch(exports[kind], stages[kind][0], PROMPTS, seed=1, count=6)
    print(f"{kind} ({report['model']}) export -> PyTorch vs JAX, float32: max abs diff {report['max_abs_diff']:.2e} "
          + json.dumps({k: f"{v:.1e}" for k, v in report["diffs"].items()}))
    assert report["max_abs_diff"] <= TOLERANCE
    assert rewards_verify.tolerance_failure(report) is None
    assert all(np.isfinite(v) for v in report["diffs"].values())


def test_layout_and_the_folders_own_copy(stages, exports):
    folder = exports["reward"]
    assert sorted(os.listdir(folder)) == sorted(["README.md", rewards_export.REWARD_FILE, rewards_export.TORCH_FILE,
                                                 "seedream_torch.py", "alignment", "text_encoder", "tokenizer"])
    assert sorted(os.listdir(os.path.join(folder, "tokenizer"))) == ["spm.model", "spm.vocab"]
    assert sorted(os.listdir(exports["glyph_align"])) == sorted(["README.md", rewards_export.REWARD_FILE,
                                                                 rewards_export.TORCH_FILE, "seedream_torch.py",
                                                                 "glyph", "byt5"])
    heads = safetensors_io.LazyTensors(os.path.join(folder, "alignment"))
    assert not any(k.startswith("text.llm.") for k in heads) and heads["logit_scale"].shape == ()
    params = stages["reward"][1]
    np.testing.assert_array_equal(heads["image.down.1.weight"],
                                  params["image"]["down_1"]["kernel"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(heads["text.proj.weight"], params["text"]["proj"]["kernel"].T)
    glyph = safetensors_io.LazyTensors(os.path.join(exports["glyph_align"], "glyph"))
    assert {"image_encoder.stem.weight", "roi_head.weight", "text_proj.bias", "logit_scale"} <= set(glyph)
    with open(os.path.join(folder, rewards_export.REWARD_FILE)) as f:
        info = json.load(f)
    assert info["model"] == "alignment"
    assert info["tokenizer"] == {"kind": "sentencepiece", "path": "tokenizer/spm.model"}
    assert "| `image.head.weight` | [64, " in open(os.path.join(folder, "README.md")).read()
    # The folder's own copy (plain PyTorch, no seedream_jax) loads and scores what the package's module does.
    module = exported_module(folder)
    for name in (rewards_export.TORCH_FILE, "seedream_torch.py"):  # plain PyTorch: no JAX, no seedream_jax
        with open(os.path.join(folder, name)) as f:
            imports = {line.split()[1].split(".")[0] for line in f if line.startswith(("import ", "from "))}
        assert imports <= {"importlib", "json", "os", "re", "sys", "typing", "numpy", "torch"}, (name, imports)
    images = S.render_scene(S.sample_scene(np.random.default_rng(0), S.SyntheticWorldConfig()), 32)[None]
    ours = torch_rewards.load_reward(folder).score_prompts(images, PROMPTS[:1])
    theirs = module.load_reward(folder).score_prompts(images, PROMPTS[:1])
    assert float((ours - theirs).detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match=r"images must be \[B, 32, 32, 3\]"):
        module.load_reward(folder).encode_image(np.zeros((1, 64, 64, 3), np.uint8))


def test_roi_align_mirror_on_wide_tall_and_clipped_boxes():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5, 8, 8, 3)).astype(np.float32)
    boxes = np.array([[2, 1, 10, 30], [0, 3, 31, 12], [4, 4, 12, 12], [-6, -3, 40, 20], [20.5, 7.25, 23.5, 8.75]],
                     np.float32)  # wide, tall, square (along = left to right), beyond the image, sub-cell
    ours = jax.jit(roi_align, static_argnums=(2, 3))(jnp.asarray(features), jnp.asarray(boxes), (3, 5), 4)
    theirs = torch_rewards.roi_align(torch.from_numpy(features), torch.from_numpy(boxes), (3, 5), 4)
    d = float(np.abs(np.asarray(ours) - theirs.numpy()).max())
    print(f"roi_align JAX vs torch mirror: max abs diff {d:.1e}")
    assert d <= 1e-6


def test_group_norm_on_a_low_variance_group_matches_jax():
    """A near-constant group (std 0.2 around 1, as a flat world background gives): the export's GroupNorm
    (float64 statistics) is exact to float32 rounding and within 1e-5 of JAX's; torch's own float32
    kernel (one-pass statistics) drifts further."""
    from seedream_jax.models import layers
    rng = np.random.default_rng(0)
    x = (1.0 + 0.2 * rng.standard_normal((2, 32, 32, 8))).astype(np.float32)
    x[:, :4, :4] += 1.0  # a small object
    params = {"scale": (1 + 0.1 * rng.standard_normal(8)).astype(np.float32),
              "bias": (0.1 * rng.standard_normal(8)).astype(np.float32)}
    ours = np.asarray(jax.jit(layers.GroupNorm(4).apply)({"params": params}, x))
    groups = x.astype(np.float64).reshape(2, 32, 32, 4, 2)
    mean = groups.mean(axis=(1, 2, 4), keepdims=True)
    exact = ((groups - mean) / np.sqrt(((groups - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True) + 1e-6)).reshape(
        x.shape) * params["scale"] + params["bias"]
    norm = torch_rewards.GroupNorm(4, 8, eps=1e-6)
    norm.load_state_dict({"weight": torch.from_numpy(params["scale"]), "bias": torch.from_numpy(params["bias"])})
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        theirs = norm(t).permute(0, 2, 3, 1).numpy()
        native = torch.nn.GroupNorm.forward(norm, t).permute(0, 2, 3, 1).numpy()
    d, d_exact, d_native = (float(np.abs(a - b).max()) for a, b in ((ours, theirs), (theirs, exact), (ours, native)))
    print(f"GroupNorm on a low-variance group (max |y| {np.abs(exact).max():.1f}): export vs JAX {d:.1e}, export vs "
          f"float64 {d_exact:.1e}, JAX vs float64 {float(np.abs(ours - exact).max()):.1e}, torch's kernel vs JAX "
          f"{d_native:.1e}")
    assert d_exact <= 2e-6 and d <= TOLERANCE  # float32 rounding at |y| ~ 6 is 4.8e-7


def _rewrite(folder: str, basename: str, change) -> None:
    tensors = safetensors_io.load_tensors(folder)
    change(tensors)
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(folder, f))
    safetensors_io.save_tensors(tensors, folder, basename=basename)


def test_a_missing_extra_or_misshaped_tensor_is_refused(exports, tmp_path):
    cases = [("reward", "alignment", "alignment", lambda t: t.pop("image.block.1.norm2.bias"),
              "missing keys (1): ['image.block.1.norm2.bias']"),
             ("reward", "text_encoder", "model", lambda t: t.pop("layers.1.mlp.up_proj.weight"),
              "'layers.1.mlp.up_proj.weight'"),
             ("aesthetic", "aesthetic", "aesthetic", lambda t: t.update({"score.extra": np.zeros(2, np.float32)}),
              "unexpected keys (1): ['score.extra']"),
             ("glyph_align", "glyph", "glyph", lambda t: t.update({"roi_proj.bias": t["roi_proj.bias"][:5]}),
              "roi_proj.bias: files (5,) vs model (32,)"),
             ("glyph_align", "byt5", "model", lambda t: t.pop("encoder.final_layer_norm.weight"),
              "'encoder.final_layer_norm.weight'")]
    for i, (kind, part, basename, change, needle) in enumerate(cases):
        bad = str(tmp_path / f"{i}")
        shutil.copytree(exports[kind], bad)
        _rewrite(os.path.join(bad, part), basename, change)
        module = exported_module(bad)
        with pytest.raises(module.StrictLoadError) as e:
            module.load_reward(bad)
        message = str(e.value)
        print(f"{kind}/{part}: {message[:200]}")
        assert message.startswith(f"{part} (") and needle in message and "Refusing to load it" in message, message


def test_export_tool_exports_and_verifies_a_reward_stage(stages, tmp_path, capsys, monkeypatch):
    stage_dir = stages["aesthetic"][0]
    args = lambda out, *extra: ["--workdir", str(tmp_path), "--stage", stage_dir, "--out", str(tmp_path / out),
                                *extra]
    assert export_weights.main(args("good", "--verify")) == 0
    out = capsys.readouterr().out
    assert "verify passed: max abs difference" in out and "aesthetic" in out
    assert export_weights.main(args("good", "--components", "vae")) == 2  # not empty
    assert export_weights.main(args("other", "--components", "vae")) == 1
    assert "--components" in capsys.readouterr().err
    # A changed tensor loads, scores differ: exit 1 saying by how much.
    real = export_weights.rewards_export.export_reward

    def scaled(stage_dir, out_dir, **kw):
        result = real(stage_dir, out_dir, **kw)
        _rewrite(os.path.join(out_dir, "aesthetic"), "aesthetic",
                 lambda t: t.update({"score.weight": 3.0 * t["score.weight"]}))
        return result
    monkeypatch.setattr(export_weights.rewards_export, "export_reward", scaled)
    assert export_weights.main(args("scaled", "--verify")) == 1
    err = capsys.readouterr().err
    print(err.strip())
    assert "error: --verify failed: max abs difference" in err and "(in scores) exceeds the tolerance 1e-05" in err
