"""Import: HF / diffusers folders -> our trees -> export is bit-identical to the source tensors
(fp32, bf16 and fp16 sources); whole-pipeline export -> import -> export round trip; import into an
Orbax stage directory that ``init_from`` starts from; the import CLI's checks; no pickle is ever read.
"""
import json
import os
import pickle
import shutil
import sys

import flax
import jax
import ml_dtypes
import numpy as np
import pytest
import torch

from seedream_jax.checkpoint.init_from import apply_init_from, load_component
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.interop import (autoencoder_kl, conditioner_layers, convert, flux, pipeline, qwen2,
                                  safetensors_io, t5)
from seedream_jax.models.byt5 import ByT5Config
from seedream_jax.models.conditioner import ConditionerConfig
from seedream_jax.models.mmdit import MMDiTConfig
from seedream_jax.models.text_encoder import Qwen2Config, TextEncoderConfig
from seedream_jax.models.vae import VAEConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import import_weights  # noqa: E402

LLM = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=10000.0)
BYT5 = ByT5Config(vocab_size=384, d_model=24, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)
MMDIT = MMDiTConfig(in_channels=4, patch_size=2, num_heads=2, head_dim=16, num_double_blocks=1, num_single_blocks=1,
                    context_dim=40, pooled_dim=40, axes_dims=(4, 6, 6), rope_base_grid=4)
VAE = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                scaling_factor=0.7, shift_factor=0.2)
COND = ConditionerConfig(text_encoder=TextEncoderConfig(llm=LLM, adapter="transformer", adapter_layers=1),
                         byt5=BYT5, context_dim=40, llm_max_length=8, byt5_max_length=6)
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _hf_models():
    """name -> (build a random HF / diffusers model, our loader, our exporter, stored basename)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import Qwen2Config as HFQwen2Config, Qwen2ForCausalLM, Qwen2Model, T5Config, T5EncoderModel

    def qwen(causal):
        hf = HFQwen2Config(**{k: v for k, v in qwen2.qwen2_to_hf_config(LLM).items()
                              if k not in ("architectures", "dtype", "torch_dtype")})
        return (Qwen2ForCausalLM if causal else Qwen2Model)(hf)

    def noisy(model):
        with torch.no_grad():  # non-trivial norms and biases too
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        return model

    cfg = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}
    return {
        "qwen2": (lambda: qwen(False), qwen2.load_qwen2, qwen2.export_qwen2, {}),
        "qwen2_causal_lm": (lambda: qwen(True), qwen2.load_qwen2, qwen2.export_qwen2, {"causal_lm": True}),
        "t5": (lambda: T5EncoderModel(T5Config(**{k: v for k, v in t5.t5_to_hf_config(BYT5).items()
                                                  if k != "architectures"})), t5.load_byt5, t5.export_byt5, {}),
        "vae": (lambda: noisy(AutoencoderKL(**cfg(autoencoder_kl.vae_to_diffusers_config(VAE)))),
                autoencoder_kl.load_vae, autoencoder_kl.export_vae, {}),
        "flux": (lambda: noisy(FluxTransformer2DModel(**cfg(flux.mmdit_to_diffusers_config(MMDIT)))),
                 lambda p: flux.load_mmdit(p, rope_base_grid=4), flux.export_mmdit, {}),
    }


@pytest.mark.parametrize("name", ["qwen2", "qwen2_causal_lm", "t5", "vae", "flux"])
def test_import_then_export_is_bit_identical(tmp_path, name):
    build, load, export, kwargs = _hf_models()[name]
    torch.manual_seed(0)
    model = build().eval()
    for dtype in ("float32", "bfloat16") + (("float16",) if name == "flux" else ()):
        src = str(tmp_path / f"src_{dtype}")
        model.to(TORCH_DTYPES[dtype]).save_pretrained(src, safe_serialization=True)
        cfg, params = load(src)
        assert all(np.asarray(x).dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
        extra = {"lm_head_from": src} if name == "qwen2_causal_lm" else {}
        export(params, cfg, str(tmp_path / f"out_{dtype}"), dtype=dtype, **kwargs, **extra)
        source = safetensors_io.LazyTensors(src)
        ours = safetensors_io.LazyTensors(str(tmp_path / f"out_{dtype}"))
        # HF saves T5's tied encoder.embed_tokens once, as shared.weight (or both): we write shared.weight.
        tied = {"encoder.embed_tokens.weight"} if name == "t5" else set()
        assert set(source) - tied == set(ours), (set(source) ^ set(ours))
        for k in ours:
            a, b = source[k], ours[k]
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), (dtype, k)
        print(f"{name}: {dtype} source -> import -> export: {len(ours)} tensors bit-identical")


def _random_tree(shapes, seed):
    """Random float32 arrays shaped like an abstract (boxed) parameter tree."""
    rng = np.random.default_rng(seed)
    return flax.traverse_util.unflatten_dict({p: (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
                                              for p, s in convert.flatten(shapes).items()})


@pytest.fixture(scope="module")
def pipeline_export(tmp_path_factory):
    """A whole-pipeline bf16 export of a random tree, with an HF-tokenizer folder stand-in."""
    params = {"conditioner": _random_tree(conditioner_layers.abstract_params(COND), 1),
              "mmdit": _random_tree(flux.abstract_params(MMDIT), 2),
              "vae": _random_tree(autoencoder_kl.abstract_params(VAE), 3)}
    out = str(tmp_path_factory.mktemp("export"))
    tok = tmp_path_factory.mktemp("tok")
    (tok / "tokenizer.json").write_text("{}")
    (tok / "evil.py").write_text("raise SystemExit('never copied')")
    pipeline.export_pipeline(params, COND, MMDIT, VAE, out, dtype="bfloat16",
                             tokenizer=pipeline.TokenizerFiles("hf", str(tok)))
    return params, out


def test_pipeline_export_import_export_round_trip(pipeline_export, tmp_path):
    params, out = pipeline_export
    assert sorted(os.listdir(os.path.join(out, "tokenizer"))) == ["tokenizer.json"]  # code is not copied
    cond, mmdit, vae, back = pipeline.import_pipeline(out)
    assert cond == COND and vae == VAE and mmdit == MMDIT
    rounded = jax.tree_util.tree_map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
    flat_a, flat_b = convert.flatten(rounded), convert.flatten(back)
    assert flat_a.keys() == flat_b.keys()
    assert all(np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)
    again = str(tmp_path / "again")
    pipeline.export_pipeline(back, cond, mmdit, vae, again, dtype="bfloat16",
                             tokenizer=pipeline.TokenizerFiles("hf", os.path.join(out, "tokenizer")))
    n = 0
    for sub in ("text_encoder", "byt5", "conditioner", "transformer", "vae"):
        a, b = safetensors_io.LazyTensors(os.path.join(out, sub)), safetensors_io.LazyTensors(os.path.join(again, sub))
        assert set(a) == set(b)
        for k in a:
            assert a[k].tobytes() == b[k].tobytes() and a[k].dtype == b[k].dtype == ml_dtypes.bfloat16
            n += 1
    print(f"pipeline bf16 export -> import -> export: {n} tensors bit-identical")


def test_import_cli_writes_a_stage_that_init_from_reads(pipeline_export, tmp_path, capsys):
    params, out = pipeline_export
    stage = str(tmp_path / "imported")
    assert import_weights.main(["--pipeline", out, "--out", stage]) == 0
    assert "conditioner/text_encoder/llm" in capsys.readouterr().out
    rounded = jax.tree_util.tree_map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
    llm, step = load_component(stage, "conditioner/text_encoder/llm")
    assert step == 0
    want = rounded["conditioner"]["text_encoder"]["llm"]
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, llm, want))
    assert open_stage(stage).component("vae")[1] == VAE  # stage.json records what was imported
    # A stage starts from it: the LLM and the VAE replace freshly initialised ones.
    fresh = jax.tree_util.tree_map(np.zeros_like, params)
    trainable, frozen = apply_init_from({"conditioner": fresh["conditioner"], "mmdit": fresh["mmdit"]},
                                        {"vae": fresh["vae"]},
                                        {"conditioner/text_encoder/llm": stage, "vae": stage})
    np.testing.assert_array_equal(trainable["conditioner"]["text_encoder"]["llm"]["norm"]["scale"],
                                  rounded["conditioner"]["text_encoder"]["llm"]["norm"]["scale"])
    np.testing.assert_array_equal(frozen["vae"]["decoder"]["conv_out"]["bias"],
                                  rounded["vae"]["decoder"]["conv_out"]["bias"])
    assert not np.any(trainable["mmdit"]["proj_out"]["kernel"])  # not imported: untouched
    # Refusals: an existing checkpoint, nothing to do, a config that does not fit.
    assert import_weights.main(["--pipeline", out, "--out", stage]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    assert import_weights.main(["--out", str(tmp_path / "x")]) == 2
    assert import_weights.main(["--text-encoder", os.path.join(out, "text_encoder"), "--size", "tiny",
                                "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "text_encoder.hidden_size: imported 32 vs expected 128" in err and not os.path.exists(tmp_path / "y")
    # Component folders: the conditioner layers take the LLM / ByT5 configs from their folders.
    assert import_weights.main(["--text-encoder", os.path.join(out, "text_encoder"), "--byt5",
                                os.path.join(out, "byt5"), "--conditioner", os.path.join(out, "conditioner"),
                                "--out", str(tmp_path / "z")]) == 0
    cond, _ = load_component(str(tmp_path / "z"), "conditioner")
    assert convert.flatten(cond).keys() == convert.flatten(params["conditioner"]).keys()


def test_import_lists_missing_unexpected_and_misshaped_keys(pipeline_export, tmp_path, capsys):
    _, out = pipeline_export
    bad = str(tmp_path / "vae")
    shutil.copytree(os.path.join(out, "vae"), bad)
    t = safetensors_io.load_tensors(bad)
    del t["decoder.conv_out.bias"]
    t["decoder.extra.weight"] = np.zeros(1, np.float32)
    t["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    safetensors_io.save_tensors(t, bad, basename=autoencoder_kl.WEIGHTS_NAME)
    assert import_weights.main(["--vae", bad, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    for needle in ("missing keys (1): ['decoder.conv_out.bias']", "unexpected keys (1): ['decoder.extra.weight']",
                   "quant_conv.weight: checkpoint (8, 8, 3, 3) vs model (8, 8, 1, 1)", bad):
        assert needle in err


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_never_loaded(pipeline_export, tmp_path, capsys):
    _, out = pipeline_export
    marker = tmp_path / "code_ran"
    only_pickle = tmp_path / "only_pickle"
    shutil.copytree(os.path.join(out, "text_encoder"), only_pickle)
    for f in only_pickle.glob("*.safetensors"):
        f.unlink()
    with open(only_pickle / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    assert import_weights.main(["--text-encoder", str(only_pickle), "--out", str(tmp_path / "o1")]) == 1
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "refused" in err and "execute code" in err
    # Beside safetensors, a pickle is ignored (never opened); an index naming one is refused.
    both = tmp_path / "both"
    shutil.copytree(os.path.join(out, "text_encoder"), both)
    shutil.copy(only_pickle / "pytorch_model.bin", both / "pytorch_model.bin")
    assert import_weights.main(["--text-encoder", str(both), "--out", str(tmp_path / "o2")]) == 0
    (both / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"norm.weight": "pytorch_model.bin"}}))
    with pytest.raises(ValueError, match="non-safetensors shard files"):
        qwen2.load_qwen2(str(both))
    with pytest.raises(ValueError, match="refused"):
        safetensors_io.load_tensors(str(both / "pytorch_model.bin"))
    assert not marker.exists()


def test_cli_help_explains(capsys):
    for tool in (import_weights, __import__("export_weights")):
        with pytest.raises(SystemExit) as e:
            tool.main(["--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "safetensors" in text and "--out" in text
