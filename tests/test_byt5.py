"""ByT5 glyph encoder: parity with HF T5EncoderModel, tokenizer equality, checkpoints, padding, bf16."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import max_abs_diff
from seedream_jax.interop import convert, safetensors_io
from seedream_jax.interop.t5 import export_byt5, load_byt5, t5_to_hf_config
from seedream_jax.models.byt5 import ByT5Config, ByT5Encoder, byt5_tokenize

CFG = ByT5Config(vocab_size=384, d_model=48, d_kv=32, d_ff=64, num_layers=2, num_heads=3,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20)
TEXTS = ["你好, world", "山水画 and the text OPEN ", "A"]


def _hf_config():
    from transformers import T5Config
    return T5Config(**{k: v for k, v in t5_to_hf_config(CFG).items() if k != "architectures"})


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from transformers import T5EncoderModel
    torch.manual_seed(0)
    model = T5EncoderModel(_hf_config()).eval()
    d = tmp_path_factory.mktemp("byt5")
    model.save_pretrained(d)
    return str(d), model


def _hf_forward(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()


def test_tokenizer_matches_transformers():
    from transformers import ByT5Tokenizer
    tok = ByT5Tokenizer()
    texts = TEXTS + ["🎨 emoji", "x" * 40]
    ref = tok(texts, padding="max_length", truncation=True, max_length=24, return_tensors="np")
    ids, mask = byt5_tokenize(texts, 24)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))


def test_parity_with_hf_t5_encoder(hf):
    path, model = hf
    cfg, params = load_byt5(path)
    assert cfg == CFG
    ids, mask = byt5_tokenize(TEXTS, 32)
    ours = ByT5Encoder(cfg).apply({"params": params}, ids, mask)
    ref = _hf_forward(model, ids, mask)
    d = max(max_abs_diff(ours[i][mask[i]], ref[i][mask[i]]) for i in range(len(TEXTS)))
    print(f"ByT5 vs HF T5EncoderModel (real positions): max abs diff {d:.2e}")
    assert d <= 1e-5


def test_padding_invariance(hf):
    cfg, params = load_byt5(hf[0])
    ids, mask = byt5_tokenize(TEXTS, 32)
    ids2, mask2 = byt5_tokenize(TEXTS, 48)
    a = ByT5Encoder(cfg).apply({"params": params}, ids, mask)
    b = ByT5Encoder(cfg).apply({"params": params}, ids2, mask2)
    d = max(max_abs_diff(a[i][mask[i]], b[i][mask2[i]]) for i in range(len(TEXTS)))
    print(f"ByT5 padding invariance: max abs diff {d:.2e}")
    assert d <= 1e-5


def test_export_and_full_t5_checkpoint(tmp_path, hf):
    from transformers import T5EncoderModel, T5ForConditionalGeneration
    cfg, params = load_byt5(hf[0])
    export_byt5(params, cfg, str(tmp_path / "exp"))
    model = T5EncoderModel.from_pretrained(str(tmp_path / "exp")).eval()
    ids, mask = byt5_tokenize(TEXTS, 32)
    ours = ByT5Encoder(cfg).apply({"params": params}, ids, mask)
    d = max_abs_diff(ours[0][mask[0]], _hf_forward(model, ids, mask)[0][mask[0]])
    print(f"ByT5 export -> transformers from_pretrained: max abs diff {d:.2e}")
    assert d <= 1e-5
    torch.manual_seed(3)
    full = T5ForConditionalGeneration(_hf_config()).eval()
    full.to(torch.bfloat16).save_pretrained(tmp_path / "full")
    _, p2 = load_byt5(str(tmp_path / "full"))
    np.testing.assert_array_equal(p2["shared"]["embedding"], full.shared.weight.detach().float().numpy())


def test_mismatch_lists_keys(tmp_path, hf):
    import shutil
    shutil.copytree(hf[0], tmp_path / "m")
    t = safetensors_io.load_tensors(str(tmp_path / "m"))
    del t["encoder.final_layer_norm.weight"]
    t["encoder.block.9.layer.0.SelfAttention.q.weight"] = np.zeros((2, 2), np.float32)
    t["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = np.zeros((48, 5), np.float32)
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    safetensors_io.save_tensors(t, str(tmp_path / "m"))
    with pytest.raises(convert.CheckpointMismatchError) as err:
        load_byt5(str(tmp_path / "m"))
    assert err.value.missing == ["encoder.final_layer_norm.weight"]
    assert err.value.unexpected == ["encoder.block.9.layer.0.SelfAttention.q.weight"]
    assert err.value.misshaped[0][0] == "encoder.block.1.layer.1.DenseReluDense.wo.weight"


def test_bf16_compute_close_to_fp32(hf):
    cfg, params = load_byt5(hf[0])
    ids, mask = byt5_tokenize(TEXTS, 32)
    ref = ByT5Encoder(cfg).apply({"params": params}, ids, mask)
    bf = ByT5Encoder(ByT5Config(**{**cfg.__dict__, "dtype": "bfloat16"})).apply({"params": params}, ids, mask)
    rel = max_abs_diff(ref[0][mask[0]], bf[0][mask[0]]) / float(jnp.max(jnp.abs(ref)))
    print(f"ByT5 bf16 vs fp32: max abs diff / max |out| = {rel:.3f}")
    assert rel < 0.05
