"""Qwen2 text encoder: parity with HF Qwen2Model, checkpoint forms, export, padding, adapter, bf16."""
import dataclasses
import functools
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from conftest import max_abs_diff
from seedream_jax.interop import convert, safetensors_io
from seedream_jax.interop.qwen2 import export_qwen2, load_qwen2, qwen2_config_from_hf, qwen2_to_hf_config
from seedream_jax.models.text_encoder import Adapter, Qwen2Config, Qwen2Model, TextEncoder, TextEncoderConfig
from seedream_jax.parallel import axes

HF_KW = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6)
REAL = 6  # real tokens of row 1 (row 0 is all real)


def _batch():
    """ids [2, 9] int32 and a right-padded mask: row 0 full, row 1 with REAL real tokens."""
    ids = np.random.default_rng(0).integers(0, 256, size=(2, 9)).astype(np.int32)
    mask = np.ones((2, 9), bool)
    mask[1, REAL:] = False
    return ids, mask


def _real_diff(a, b) -> float:
    """Max abs diff of two [2, L, D] outputs of _batch() over real positions only."""
    return max(max_abs_diff(a[0], b[0]), max_abs_diff(a[1, :REAL], b[1, :REAL]))


@functools.lru_cache(maxsize=None)
def _jitted(module, static_argnames=()):
    """jit(module.apply), cached per (hashable) module: one compile per shape, cheaper than eager."""
    return jax.jit(module.apply, static_argnames=static_argnames)


def _llm(cfg, params, ids, mask, output_layer=-1):
    """Qwen2Model(cfg) hidden states [B, L, hidden]."""
    return _jitted(Qwen2Model(cfg), ("output_layer",))({"params": params}, ids, mask, output_layer=output_layer)


def _hf_forward(model, ids, mask):
    """(last_hidden_state, [hidden_states...]) of an HF Qwen2Model as NumPy."""
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                    output_hidden_states=True)
    return out.last_hidden_state.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import Qwen2Config as HFConfig, Qwen2Model as HFModel
    torch.manual_seed(0)
    model = HFModel(HFConfig(**HF_KW)).eval()
    d = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(d)
    return str(d), model


@pytest.fixture(scope="module")
def loaded(hf_dir):
    return load_qwen2(hf_dir[0])


def test_parity_with_hf_qwen2(hf_dir, loaded):
    cfg, params = loaded
    ids, mask = _batch()
    ref_last, ref_hidden = _hf_forward(hf_dir[1], ids, mask)
    # HF's last hidden_states entry is the normed last_hidden_state; output_layer mirrors that.
    np.testing.assert_array_equal(ref_hidden[-1], ref_last)
    d = _real_diff(_llm(cfg, params, ids, mask), ref_last)
    print(f"Qwen2 vs HF Qwen2Model last_hidden_state (real positions): max abs diff {d:.2e}")
    assert d <= 1e-5
    for k in range(cfg.num_hidden_layers + 1):
        dk = _real_diff(_llm(cfg, params, ids, mask, k), ref_hidden[k])
        print(f"Qwen2 output_layer={k} vs HF hidden_states[{k}]: max abs diff {dk:.2e}")
        assert dk <= 1e-5


def test_sharded_causal_lm_and_half_precision_checkpoints(tmp_path):
    from transformers import Qwen2Config as HFConfig, Qwen2ForCausalLM
    torch.manual_seed(1)
    lm = Qwen2ForCausalLM(HFConfig(**HF_KW)).eval()
    lm.save_pretrained(tmp_path / "lm", max_shard_size="100KB")
    assert (tmp_path / "lm" / "model.safetensors.index.json").exists()
    assert "lm_head.weight" in safetensors_io.load_tensors(str(tmp_path / "lm"))
    cfg, params = load_qwen2(str(tmp_path / "lm"))
    ids, mask = _batch()
    ref, _ = _hf_forward(lm.model, ids, mask)
    d = _real_diff(_llm(cfg, params, ids, mask), ref)
    print(f"Qwen2 sharded Qwen2ForCausalLM checkpoint vs HF: max abs diff {d:.2e}")
    assert d <= 1e-5
    for torch_dtype in (torch.bfloat16, torch.float16):
        lm.to(torch_dtype).save_pretrained(tmp_path / str(torch_dtype))
        _, p = load_qwen2(str(tmp_path / str(torch_dtype)))
        assert p["layers_1"]["self_attn"]["q_proj"]["kernel"].dtype == np.float32
        np.testing.assert_array_equal(p["layers_1"]["self_attn"]["q_proj"]["kernel"],
                                      lm.model.layers[1].self_attn.q_proj.weight.detach().float().numpy().T)


def test_export_loads_in_transformers(tmp_path, loaded):
    from transformers import Qwen2Model as HFModel
    cfg, params = loaded
    ids, mask = _batch()
    ours = _llm(cfg, params, ids, mask)
    for dtype, tol in ((np.float32, 1e-5), (ml_dtypes.bfloat16, None)):
        folder = tmp_path / np.dtype(dtype).name
        export_qwen2(params, cfg, str(folder), dtype=dtype)
        model, info = HFModel.from_pretrained(str(folder), output_loading_info=True, dtype=torch.float32)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        ref, _ = _hf_forward(model.eval(), ids, mask)
        if tol is None:  # bf16 storage: exact round trip of the rounded weights
            _, back = load_qwen2(str(folder))
            rounded = jax.tree.map(lambda p: np.asarray(p.astype(ml_dtypes.bfloat16), np.float32), params)
            assert jax.tree.all(jax.tree.map(np.array_equal, back, rounded))
            continue
        d = _real_diff(ours, ref)
        print(f"Qwen2 export -> transformers Qwen2Model.from_pretrained: max abs diff {d:.2e}")
        assert d <= tol


def test_mismatch_lists_keys(tmp_path, hf_dir):
    shutil.copytree(hf_dir[0], tmp_path / "m")
    t = safetensors_io.load_tensors(str(tmp_path / "m"))
    del t["norm.weight"]
    t["layers.0.extra.weight"] = np.zeros(2, np.float32)
    t["layers.1.mlp.up_proj.weight"] = np.zeros((3, 64), np.float32)
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    safetensors_io.save_tensors(t, str(tmp_path / "m"))
    with pytest.raises(convert.CheckpointMismatchError) as err:
        load_qwen2(str(tmp_path / "m"))
    assert err.value.missing == ["norm.weight"] and err.value.unexpected == ["layers.0.extra.weight"]
    assert err.value.misshaped == [("layers.1.mlp.up_proj.weight", (3, 64), (128, 64))]
    assert "norm.weight" in str(err.value) and "layers.1.mlp.up_proj.weight" in str(err.value)


def _padded(ids, mask, extra=4):
    """Append ``extra`` pad tokens (id 7, mask False) to every row."""
    return (np.concatenate([ids, np.full((2, extra), 7, np.int32)], axis=1),
            np.concatenate([mask, np.zeros((2, extra), bool)], axis=1))


def test_padding_invariance(loaded):
    cfg, params = loaded
    ids, mask = _batch()
    ids_pad, mask_pad = _padded(ids, mask)
    d = _real_diff(_llm(cfg, params, ids, mask), _llm(cfg, params, ids_pad, mask_pad)[:, :9])
    te = TextEncoder(TextEncoderConfig(llm=cfg, adapter="transformer", adapter_layers=2))
    shapes = nn.meta.unbox(jax.eval_shape(te.init, jax.random.PRNGKey(0), ids, mask)["params"]["adapter"])
    rng = np.random.default_rng(1)  # random, non-identity ("trained") adapter
    adapter = jax.tree.map(lambda x: 0.2 * rng.standard_normal(x.shape).astype(np.float32), shapes)
    variables = {"params": {"llm": params, "adapter": adapter}}
    (a, _), (b, _) = _jitted(te)(variables, ids, mask), _jitted(te)(variables, ids_pad, mask_pad)
    assert max_abs_diff(a[0], _llm(cfg, params, ids, mask)[0]) > 1e-2  # adapter acts
    d_te = _real_diff(a, b[:, :9])
    assert not np.any(a[1, REAL:]) and not np.any(b[:, 9:])  # padded rows zeroed
    print(f"Qwen2 padding invariance: max abs diff {d:.2e}; TextEncoder (trained-like adapter) {d_te:.2e}")
    assert d <= 1e-5 and d_te <= 1e-5


@pytest.mark.parametrize("adapter", ["mlp", "transformer"])
def test_adapter_identity_at_init(loaded, adapter):
    cfg, params = loaded
    ids, mask = _batch()
    te_cfg = TextEncoderConfig(llm=cfg, adapter=adapter, adapter_layers=2)
    te = TextEncoder(te_cfg)
    shapes = jax.eval_shape(te.init, jax.random.PRNGKey(0), ids, mask)["params"]
    assert set(shapes) == {"llm", "adapter"} and set(shapes["adapter"]) == {"layers_0", "layers_1"}
    llm_out = _llm(cfg, params, ids, mask)
    adapter_params = nn.meta.unbox(jax.jit(Adapter(te_cfg).init)(jax.random.PRNGKey(0), llm_out, mask)["params"])
    assert jax.tree.structure(adapter_params) == jax.tree.structure(nn.meta.unbox(shapes["adapter"]))
    tokens, out_mask = _jitted(te)({"params": {"llm": params, "adapter": adapter_params}}, ids, mask)
    assert tokens.shape == (2, 9, 64) and tokens.dtype == jnp.float32
    assert out_mask.dtype == bool and np.array_equal(out_mask, mask)
    np.testing.assert_array_equal(tokens[0], llm_out[0])             # identity at init
    np.testing.assert_array_equal(tokens[1, :REAL], llm_out[1, :REAL])
    assert float(jnp.abs(tokens[1, REAL:]).max()) == 0.0              # padded rows zeroed


def test_logical_axes(loaded):
    cfg, _ = loaded
    ids, mask = _batch()
    te = TextEncoder(TextEncoderConfig(llm=cfg, adapter="transformer"))
    specs = jax.tree.map(tuple, nn.get_partition_spec(jax.eval_shape(te.init, jax.random.PRNGKey(0), ids, mask)),
                         is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))["params"]
    layer = specs["llm"]["layers_0"]
    assert specs["llm"]["embed_tokens"]["embedding"] == (axes.VOCAB, axes.EMBED)
    assert layer["self_attn"]["q_proj"]["kernel"] == (axes.EMBED, axes.HEADS)
    assert layer["self_attn"]["k_proj"]["kernel"] == layer["self_attn"]["v_proj"]["kernel"] == (axes.EMBED, axes.KV)
    assert layer["self_attn"]["o_proj"]["kernel"] == (axes.HEADS, axes.EMBED)
    assert layer["mlp"]["gate_proj"]["kernel"] == layer["mlp"]["up_proj"]["kernel"] == (axes.EMBED, axes.MLP)
    assert layer["mlp"]["down_proj"]["kernel"] == (axes.MLP, axes.EMBED)
    assert layer["input_layernorm"]["scale"] == specs["llm"]["norm"]["scale"] == (axes.NORM,)


def test_config_validation_and_sliding_window():
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        Qwen2Config(hidden_size=60, num_attention_heads=8)
    with pytest.raises(ValueError, match="not divisible by num_key_value_heads"):
        Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=3)
    small = Qwen2Config(**HF_KW)
    with pytest.raises(ValueError, match="adapter_heads 5"):
        TextEncoderConfig(llm=small, adapter="transformer", adapter_heads=5)
    with pytest.raises(ValueError, match="adapter must be"):
        TextEncoderConfig(llm=small, adapter="lora")
    hf = qwen2_to_hf_config(small)
    assert qwen2_config_from_hf(hf) == small
    # use_sliding_window with max_window_layers >= num layers: every layer is full attention.
    assert qwen2_config_from_hf({**hf, "layer_types": None, "use_sliding_window": True, "sliding_window": 16,
                                 "max_window_layers": 2}) == small
    with pytest.raises(ValueError, match=r"layers \[1\]"):
        qwen2_config_from_hf({**hf, "layer_types": None, "use_sliding_window": True, "sliding_window": 16,
                              "max_window_layers": 1})
    with pytest.raises(ValueError, match="sliding-window"):
        qwen2_config_from_hf({**hf, "layer_types": ["full_attention", "sliding_attention"], "sliding_window": 16})
    with pytest.raises(ValueError, match="RoPE scaling"):
        qwen2_config_from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})


def test_bf16_compute_close_to_fp32(loaded):
    cfg, params = loaded
    ids, mask = _batch()
    ref = _llm(cfg, params, ids, mask)
    bf = _llm(dataclasses.replace(cfg, dtype="bfloat16"), params, ids, mask)
    rel = _real_diff(ref, bf.astype(jnp.float32)) / float(jnp.max(jnp.abs(ref)))
    print(f"Qwen2 bf16 vs fp32 compute: max abs diff / max |out| = {rel:.2e} (tolerance 3e-2)")
    assert bf.dtype == jnp.bfloat16 and rel < 3e-2
