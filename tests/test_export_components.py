"""Export per component, beyond the per-model export tests (test_text_encoder / test_byt5 / test_vae /
test_mmdit): the conditioner layers in PyTorch, Qwen2ForCausalLM and sharded export, the Flux
text mask through ``joint_attention_kwargs``, and streaming from an Orbax checkpoint.

Each PyTorch side is loaded with ``from_pretrained`` from the exported folder and compared in
float32 with our JAX forward (max abs diff <= 1e-5).
"""
import json
import os

import flax
import jax
import ml_dtypes
import numpy as np
import pytest
import torch

from conftest import max_abs_diff
from seedream_jax.interop import convert, flux, orbax_io, pipeline, qwen2, safetensors_io, torch_pipeline
from seedream_jax.models.byt5 import ByT5Config
from seedream_jax.models.conditioner import Conditioner, ConditionerConfig, tokenize_prompts
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig
from seedream_jax.models.text_encoder import Qwen2Config, Qwen2Model, TextEncoderConfig
from seedream_jax.models.vae import VAEConfig

LLM = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=10000.0)
BYT5 = ByT5Config(vocab_size=384, d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)
MMDIT = MMDiTConfig(in_channels=4, patch_size=2, num_heads=2, head_dim=16, num_double_blocks=1, num_single_blocks=1,
                    context_dim=40, pooled_dim=40, axes_dims=(4, 6, 6), rope_base_grid=4)
VAE = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4)
PROMPTS = ['a red circle', 'the text "HI" and “你好” in red', '', "don't 'x'"]


def cond_config(adapter: str, output_layer: int = -1, glyph_hidden: int = 0) -> ConditionerConfig:
    te = TextEncoderConfig(llm=LLM, adapter=adapter, adapter_layers=2, adapter_heads=4, output_layer=output_layer)
    return ConditionerConfig(text_encoder=te, byt5=BYT5, context_dim=40, glyph_mapper_hidden=glyph_hidden,
                             llm_max_length=12, byt5_max_length=10)


def byte_tokenizer(texts, max_length):
    """Stand-in LLM tokenizer: UTF-8 bytes + 1 (ids < 257), right-padded with 0."""
    ids, mask = np.zeros((len(texts), max_length), np.int32), np.zeros((len(texts), max_length), bool)
    for i, t in enumerate(texts):
        b = list(t.encode("utf-8"))[:max_length]
        ids[i, :len(b)], mask[i, :len(b)] = np.array(b, dtype=np.int32) + 1, True
    return ids, mask


def random_params(shapes, seed=0, scale=0.1):
    """Random float32 values for every leaf (zero-initialised adapter outputs included)."""
    rng = np.random.default_rng(seed)
    flat = convert.flatten(shapes)
    return flax.traverse_util.unflatten_dict({
        p: ((1.0 if p[-1] == "scale" else 0.0) + scale * rng.standard_normal(s.shape)).astype(np.float32)
        for p, s in flat.items()})


@pytest.fixture(scope="module")
def conditioner_case(tmp_path_factory):
    """{adapter: (cfg, params, folder)} with text_encoder/, byt5/, conditioner/ exported."""
    from seedream_jax.interop import conditioner_layers
    out = {}
    for adapter, output_layer, hidden in (("transformer", -1, 0), ("mlp", 2, 20)):
        cfg = cond_config(adapter, output_layer, hidden)
        params = random_params(conditioner_layers.abstract_params(cfg))
        folder = str(tmp_path_factory.mktemp(f"cond_{adapter}"))
        pipeline.export_pipeline({"conditioner": params}, cfg, MMDIT, VAE, folder,
                                 components=["text_encoder", "byt5", "conditioner"])
        out[adapter] = (cfg, params, folder)
    return out


@pytest.mark.parametrize("adapter", ["transformer", "mlp"])
def test_conditioner_layers_parity_in_pytorch(conditioner_case, adapter):
    """LLM (HF Qwen2Model) + ByT5 (HF T5EncoderModel) + ConditionerLayers from the exported folders
    == our Conditioner, on prompts with and without quoted text and the empty prompt."""
    from transformers import Qwen2Model as HFQwen2, T5EncoderModel
    cfg, params, folder = conditioner_case[adapter]
    tokens = tokenize_prompts(PROMPTS, byte_tokenizer, cfg)
    ctx, mask, pooled = jax.jit(lambda p, t: Conditioner(cfg).apply({"params": p}, **t))(params, tokens)
    kw = dict(use_safetensors=True, local_files_only=True)
    torch_pipe = torch_pipeline.SeedreamPipeline(
        folder, HFQwen2.from_pretrained(os.path.join(folder, "text_encoder"), dtype=torch.float32, **kw).eval(),
        T5EncoderModel.from_pretrained(os.path.join(folder, "byt5"), dtype=torch.float32, **kw).eval(),
        torch_pipeline.ConditionerLayers.from_pretrained(os.path.join(folder, "conditioner")), None, None, None, {})
    t_ctx, t_mask, t_pooled = torch_pipe.encode(tokens)
    np.testing.assert_array_equal(t_mask.numpy(), np.asarray(mask))
    assert not torch.isnan(t_ctx).any() and float(t_ctx[2].abs().max()) == 0.0  # empty prompt: all zero
    d = max(max_abs_diff(ctx, t_ctx), max_abs_diff(pooled, t_pooled))
    print(f"conditioner ({adapter} adapter, output_layer {cfg.text_encoder.output_layer}) export -> "
          f"transformers + torch ConditionerLayers: max abs diff {d:.2e}")
    assert d <= 1e-5
    with open(os.path.join(folder, "conditioner", "config.json")) as f:
        assert json.load(f)["adapter"] == adapter


def test_truncated_llm_is_refused(tmp_path):
    cfg = cond_config("none", output_layer=1)
    with pytest.raises(ValueError, match="output_layer 1 < num_hidden_layers 2"):
        pipeline.export_pipeline({"conditioner": {}}, cfg, MMDIT, VAE, str(tmp_path), components=["text_encoder"])


def test_conditioner_layers_file_layout(conditioner_case):
    cfg, params, folder = conditioner_case["transformer"]
    t = safetensors_io.LazyTensors(os.path.join(folder, "conditioner"))
    assert set(t) == {"glyph_mapper.norm.weight", "glyph_mapper.norm.bias", "context_proj.weight", "context_proj.bias",
                      *(f"glyph_mapper.linear_{i}.{w}" for i in (1, 2, 3) for w in ("weight", "bias")),
                      *(f"adapter.layers.{i}.{n}" for i in (0, 1) for n in (
                          "attn_norm.weight", "mlp_norm.weight",
                          *(f"{p}.{w}" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
                            for w in ("weight", "bias"))))}
    np.testing.assert_array_equal(t["adapter.layers.1.fc1.weight"],
                                  params["text_encoder"]["adapter"]["layers_1"]["fc1"]["kernel"].T)
    assert t["glyph_mapper.linear_1.weight"].shape == (32, 24)  # [W, Db]


def test_qwen2_causal_lm_and_sharded_export(tmp_path, conditioner_case):
    from transformers import Qwen2ForCausalLM
    _, params, _ = conditioner_case["transformer"]
    llm = params["text_encoder"]["llm"]
    ids, mask = byte_tokenizer(["hello world", "汉字"], 9)
    ours = Qwen2Model(LLM).apply({"params": llm}, ids, mask)
    folder = str(tmp_path / "causal")
    files = qwen2.export_qwen2(llm, LLM, folder, max_shard_bytes=30_000, causal_lm=True)
    assert any(f.endswith(".index.json") for f in files) and len(files) > 3
    model, info = Qwen2ForCausalLM.from_pretrained(folder, output_loading_info=True, dtype=torch.float32,
                                                   use_safetensors=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    with torch.no_grad():
        ref = model.model(input_ids=torch.from_numpy(ids).long(),
                          attention_mask=torch.from_numpy(mask).long()).last_hidden_state
    d = max(max_abs_diff(np.asarray(ours)[0], ref[0]), max_abs_diff(np.asarray(ours)[1, :6], ref[1, :6]))
    print(f"Qwen2ForCausalLM sharded export -> from_pretrained: max abs diff {d:.2e}")
    assert d <= 1e-5
    # An untied LM head is copied from the source checkpoint.
    head = np.random.default_rng(1).standard_normal((LLM.vocab_size, LLM.hidden_size)).astype(np.float32)
    safetensors_io.save_tensors({"lm_head.weight": head}, str(tmp_path / "src"))
    qwen2.export_qwen2(llm, LLM, str(tmp_path / "untied"), causal_lm=True, lm_head_from=str(tmp_path / "src"))
    model = Qwen2ForCausalLM.from_pretrained(str(tmp_path / "untied"), dtype=torch.float32)
    np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(), head)
    assert not model.config.tie_word_embeddings


def test_flux_text_mask_via_joint_attention_kwargs(tmp_path):
    """Padded text tokens: our key mask == diffusers' attention_mask in joint_attention_kwargs,
    with the position ids of ``flux_position_ids`` (which torch_pipeline mirrors)."""
    from diffusers import FluxTransformer2DModel
    r = np.random.default_rng(0)
    lat = r.normal(size=(3, 8, 12, 4)).astype(np.float32)
    t = np.array([0.9, 0.3, 0.5], np.float32)
    ctx = r.normal(size=(3, 7, 40)).astype(np.float32)
    mask = np.ones((3, 7), bool)
    mask[1, 4:] = False
    mask[2] = False  # the unconditional embedding: every text token masked
    pooled = r.normal(size=(3, 40)).astype(np.float32)
    params = random_params(flux.abstract_params(MMDIT), seed=2)
    ours = MMDiT(MMDIT).apply({"params": params}, lat, t, ctx, mask, pooled)
    flux.export_mmdit(params, MMDIT, str(tmp_path))
    model = FluxTransformer2DModel.from_pretrained(str(tmp_path), use_safetensors=True).eval()
    img_ids, txt_ids = flux.flux_position_ids(MMDIT, 8, 12, 7)
    out = torch_pipeline.flux_velocity(model, torch_pipeline.pack_latents(torch.from_numpy(lat)), torch.from_numpy(t),
                                       torch.from_numpy(ctx), torch.from_numpy(mask), torch.from_numpy(pooled),
                                       torch.from_numpy(img_ids), torch.from_numpy(txt_ids))
    d = max_abs_diff(ours, torch_pipeline.unpack_latents(out, 8, 12))
    print(f"MMDiT with padded / fully masked text vs diffusers Flux + attention_mask: max abs diff {d:.2e}")
    assert d <= 1e-5


def test_streaming_export_from_orbax_is_identical_and_bounded(tmp_path):
    """Export from an Orbax checkpoint (OrbaxSource, chunked partial restores) writes the same
    tensors as from memory, bf16 included, and never reads more than a chunk (or one tensor) at once."""
    params = {"mmdit": random_params(flux.abstract_params(MMDIT), seed=3)}
    orbax_io.write_params_checkpoint(str(tmp_path / "stage"), params, step=7)
    source = orbax_io.OrbaxSource(str(tmp_path / "stage"))
    assert source.step == 7 and not source.used_ema
    reads = []
    base_read = source.read

    def spy(paths):
        got = base_read(paths)
        reads.append(sum(v.nbytes for v in got.values()))
        return got

    source.read = spy
    largest = max(int(np.prod(s.shape)) * 4 for s in source.shapes().values())
    for dtype in (np.float32, ml_dtypes.bfloat16):
        reads.clear()
        convert.write_component(source.scoped("mmdit"), str(tmp_path / "a"), name_fn=flux.flux_name_fn,
                                    dtype=dtype, chunk_bytes=20_000)
        flux.export_mmdit(params["mmdit"], MMDIT, str(tmp_path / "b"), dtype=dtype)
        ta, tb = safetensors_io.LazyTensors(str(tmp_path / "a")), safetensors_io.LazyTensors(str(tmp_path / "b"))
        assert set(ta) == set(tb)
        for k in ta:
            assert ta[k].dtype == np.dtype(dtype) and ta[k].tobytes() == tb[k].tobytes(), k
        assert len(reads) > 3 and max(reads) <= max(20_000, largest)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 3"):
        orbax_io.OrbaxSource(str(tmp_path / "stage"), step=3)
    with pytest.raises(convert.CheckpointMismatchError, match="transformer_blocks_1"):
        wider = MMDiTConfig(**{**MMDIT.__dict__, "num_double_blocks": 2})
        pipeline.export_pipeline(source, cond_config("none"), wider, VAE, str(tmp_path / "c"),
                                 components=["transformer"])


def test_streaming_writer_checks_and_replaces_stale_shards(tmp_path):
    spec = [safetensors_io.TensorSpec("a", (2, 3), np.dtype(np.float32)),
            safetensors_io.TensorSpec("b", (4,), np.dtype(ml_dtypes.bfloat16))]
    arrays = [np.ones((2, 3), np.float32), np.arange(4).astype(ml_dtypes.bfloat16)]
    files = safetensors_io.save_tensor_stream(spec, iter(arrays), str(tmp_path), max_shard_bytes=10)
    assert len(files) == 3 and files[-1].endswith(".index.json")
    from safetensors.torch import load_file
    assert load_file(files[1])["b"].dtype == torch.bfloat16
    files = safetensors_io.save_tensor_stream(spec, iter(arrays), str(tmp_path))  # one file replaces the shards
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    with pytest.raises(ValueError, match="tensor 'a': got"):
        safetensors_io.save_tensor_stream(spec, iter([np.ones((3, 2), np.float32)] + arrays[1:]), str(tmp_path))
    with pytest.raises(ValueError, match="ended before 'b'"):
        safetensors_io.save_tensor_stream(spec, iter(arrays[:1]), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]  # a failed write leaves the old file alone
