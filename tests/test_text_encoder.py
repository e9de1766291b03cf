"""Qwen2 text encoder: parity with HF Qwen2Model, checkpoint forms, padding, adapter, bf16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import max_abs_diff
from seedream_jax.interop import convert, safetensors_io
from seedream_jax.interop.qwen2 import export_qwen2, load_qwen2
from seedream_jax.models.text_encoder import Qwen2Config, Qwen2Model, TextEncoder, TextEncoderConfig

HF_KW = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6)


def _batch():
    r = np.random.default_rng(0)
    ids = r.integers(0, 256, size=(2, 9)).astype(np.int32)
    mask = np.ones((2, 9), bool)
    mask[1, 6:] = False  # right padding
    return ids, mask


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import Qwen2Config as HFConfig, Qwen2Model as HFModel
    torch.manual_seed(0)
    model = HFModel(HFConfig(**HF_KW)).eval()
    d = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(d)
    return str(d), model


def _hf_forward(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                    output_hidden_states=True)
    return out.last_hidden_state.numpy(), [h.numpy() for h in out.hidden_states]


def test_parity_with_hf_qwen2(hf_dir):
    path, model = hf_dir
    cfg, params = load_qwen2(path)
    ids, mask = _batch()
    ref_last, ref_hidden = _hf_forward(model, ids, mask)
    ours = Qwen2Model(cfg).apply({"params": params}, ids, mask)
    d = max(max_abs_diff(ours[0], ref_last[0]), max_abs_diff(ours[1, :6], ref_last[1, :6]))
    print(f"Qwen2 vs HF Qwen2Model (real positions): max abs diff {d:.2e}")
    assert d <= 1e-5
    for k in (0, 1):
        mid = Qwen2Model(cfg).apply({"params": params}, ids, mask, output_layer=k)
        dk = max_abs_diff(mid[0], ref_hidden[k][0])
        print(f"Qwen2 hidden_states[{k}] vs HF: max abs diff {dk:.2e}")
        assert dk <= 1e-5


def test_sharded_causal_lm_and_bf16_checkpoints(tmp_path, hf_dir):
    from transformers import Qwen2Config as HFConfig, Qwen2ForCausalLM
    torch.manual_seed(1)
    lm = Qwen2ForCausalLM(HFConfig(**HF_KW)).eval()
    lm.save_pretrained(tmp_path / "lm", max_shard_size="100KB")
    assert (tmp_path / "lm" / "model.safetensors.index.json").exists()
    cfg, params = load_qwen2(str(tmp_path / "lm"))
    ids, mask = _batch()
    with torch.no_grad():
        ref = lm.model(input_ids=torch.from_numpy(ids).long()).last_hidden_state.numpy()
    assert max_abs_diff(Qwen2Model(cfg).apply({"params": params}, ids, np.ones_like(mask)), ref) <= 1e-5
    lm.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    _, p16 = load_qwen2(str(tmp_path / "bf16"))
    np.testing.assert_array_equal(p16["embed_tokens"]["embedding"],
                                  lm.model.embed_tokens.weight.detach().float().numpy())


def test_export_loads_in_transformers(tmp_path, hf_dir):
    from transformers import Qwen2Model as HFModel
    cfg, params = load_qwen2(hf_dir[0])
    export_qwen2(params, cfg, str(tmp_path))
    model = HFModel.from_pretrained(str(tmp_path)).eval()
    ids, mask = _batch()
    ref, _ = _hf_forward(model, ids, mask)
    d = max_abs_diff(Qwen2Model(cfg).apply({"params": params}, ids, mask)[0], ref[0])
    print(f"Qwen2 export -> transformers from_pretrained: max abs diff {d:.2e}")
    assert d <= 1e-5


def test_mismatch_lists_keys(tmp_path, hf_dir):
    import shutil
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


def test_padding_invariance_and_adapters(hf_dir):
    cfg, params = load_qwen2(hf_dir[0])
    ids, mask = _batch()
    ids_pad = np.concatenate([ids, np.full((2, 4), 7, np.int32)], axis=1)
    mask_pad = np.concatenate([mask, np.zeros((2, 4), bool)], axis=1)
    a = Qwen2Model(cfg).apply({"params": params}, ids, mask)
    b = Qwen2Model(cfg).apply({"params": params}, ids_pad, mask_pad)
    d = max(max_abs_diff(a[0], b[0, :9]), max_abs_diff(a[1, :6], b[1, :6]))
    print(f"Qwen2 padding invariance: max abs diff {d:.2e}")
    assert d <= 1e-5
    for adapter in ("mlp", "transformer"):
        te_cfg = TextEncoderConfig(llm=cfg, adapter=adapter, adapter_layers=2)
        te = TextEncoder(te_cfg)
        te_params = te.init(jax.random.PRNGKey(0), ids, mask)["params"]
        te_params = {**te_params, "llm": params}
        tokens, out_mask = te.apply({"params": te_params}, ids, mask)
        assert tokens.shape == (2, 9, 64) and out_mask.dtype == bool
        np.testing.assert_allclose(tokens[0], a[0], atol=1e-6)  # identity at init
        assert float(jnp.abs(tokens[1, 6:]).max()) == 0.0       # padded rows zeroed


def test_bf16_compute_close_to_fp32(hf_dir):
    cfg, params = load_qwen2(hf_dir[0])
    ids, mask = _batch()
    ref = Qwen2Model(cfg).apply({"params": params}, ids, mask)
    bf = Qwen2Model(Qwen2Config(**{**cfg.__dict__, "dtype": "bfloat16"})).apply({"params": params}, ids, mask)
    rel = max_abs_diff(ref[0], bf[0]) / float(jnp.max(jnp.abs(ref[0])))
    print(f"Qwen2 bf16 vs fp32: max abs diff / max |out| = {rel:.3f}")
    assert bf.dtype == jnp.bfloat16 and rel < 0.05
