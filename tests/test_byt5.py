"""ByT5 glyph encoder: parity with HF T5EncoderModel, buckets, tokenizer, checkpoints, padding, bf16."""
import dataclasses
import json
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
from seedream_jax.interop.t5 import export_byt5, load_byt5, t5_config_from_hf, t5_to_hf_config
from seedream_jax.models.byt5 import ByT5Config, ByT5Encoder, byt5_tokenize, relative_position_buckets
from seedream_jax.parallel import axes

CFG = ByT5Config(vocab_size=384, d_model=48, d_kv=32, d_ff=64, num_layers=2, num_heads=3,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20)
TEXTS = ["你好, world", "山水画 and the text OPEN 春节快乐", "A"]
MAX_LEN = 40  # the longest text is 44 bytes: truncated; the others padded


def _hf_config():
    from transformers import T5Config
    return T5Config(**{k: v for k, v in t5_to_hf_config(CFG).items() if k != "architectures"})


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(checkpoint folder, HF T5EncoderModel) of a tiny random ByT5-shaped encoder."""
    from transformers import T5EncoderModel
    torch.manual_seed(0)
    model = T5EncoderModel(_hf_config()).eval()
    folder = tmp_path_factory.mktemp("byt5")
    model.save_pretrained(folder)
    return str(folder), model


@pytest.fixture(scope="module")
def loaded(hf):
    return load_byt5(hf[0])


@pytest.fixture(scope="module")
def batch():
    return byt5_tokenize(TEXTS, MAX_LEN)


@pytest.fixture(scope="module")
def ours(loaded, batch):
    cfg, params = loaded
    return np.asarray(ByT5Encoder(cfg).apply({"params": params}, *batch))


def _hf_forward(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids).long(),
                     attention_mask=torch.from_numpy(mask).long()).last_hidden_state.float().numpy()


def _real_diff(a, b, mask):
    """Max abs diff over the real (unpadded) positions of [B, L, D] outputs."""
    return max(max_abs_diff(np.asarray(a)[i][mask[i]], np.asarray(b)[i][mask[i]]) for i in range(len(mask)))


def test_tokenizer_matches_transformers():
    from transformers import ByT5Tokenizer
    tok = ByT5Tokenizer()
    texts = TEXTS + ["🎨 emoji", "x" * 40, "", "汉字截断测试"]
    for max_length in (1, 5, 24):  # 5 and 24 cut UTF-8 characters mid-way
        ref = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
        ids, mask = byt5_tokenize(texts, max_length)
        assert ids.dtype == np.int32 and ids.shape == (len(texts), max_length)
        np.testing.assert_array_equal(ids, ref["input_ids"])
        np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
    # Documented difference: special-token markup is glyph text too, so it stays literal bytes.
    np.testing.assert_array_equal(byt5_tokenize(["</s>"], 6)[0][0], [63, 50, 118, 65, 1, 0])
    with pytest.raises(ValueError, match="max_length"):
        byt5_tokenize(["a"], 0)


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention
    length = 1500
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    for nb, md in ((32, 128), (8, 20), (64, 256)):  # byt5-small's, the test model's, a larger one
        ref = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=nb, max_distance=md)
        np.testing.assert_array_equal(relative_position_buckets(length, nb, md), ref.numpy())


def test_parity_with_hf_t5_encoder(hf, loaded, batch, ours):
    assert loaded[0] == CFG
    d = _real_diff(ours, _hf_forward(hf[1], *batch), batch[1])
    print(f"ByT5 vs HF T5EncoderModel (fp32, real positions): max abs diff {d:.2e}")
    assert d <= 1e-5


def test_params_layout_and_logical_axes():
    boxed = jax.eval_shape(ByT5Encoder(CFG).init, jax.random.PRNGKey(0), *byt5_tokenize(["a"], 4))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
    enc = boxed["encoder"]
    assert enc["block_0"]["layer_0"]["SelfAttention"]["relative_attention_bias"]["embedding"].names == (
        axes.RELPOS, axes.HEADS)
    assert "relative_attention_bias" not in enc["block_1"]["layer_0"]["SelfAttention"]
    assert enc["block_0"]["layer_0"]["SelfAttention"]["q"]["kernel"].value.shape == (48, 96)


def test_padding_invariance(loaded, batch, ours):
    cfg, params = loaded
    texts = [TEXTS[0], "A" * 30, TEXTS[2]]  # a different batch-mate must not matter either
    more = np.asarray(ByT5Encoder(cfg).apply({"params": params}, *byt5_tokenize(texts, 64)))
    mask = batch[1]
    d = max(max_abs_diff(ours[i][mask[i]], more[i, :MAX_LEN][mask[i]]) for i in (0, 2))
    print(f"ByT5 padding invariance (40 -> 64 tokens): max abs diff {d:.2e}")
    assert d <= 1e-5


def test_export_round_trip(tmp_path, loaded, batch, ours):
    from transformers import T5EncoderModel
    cfg, params = loaded
    export_byt5(params, cfg, str(tmp_path))
    model, info = T5EncoderModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    d = _real_diff(ours, _hf_forward(model.eval(), *batch), batch[1])
    print(f"ByT5 export -> transformers from_pretrained: max abs diff {d:.2e}")
    assert d <= 1e-5
    cfg2, params2 = load_byt5(str(tmp_path))
    assert cfg2 == cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
    export_byt5(params, cfg, str(tmp_path / "bf16"), dtype=ml_dtypes.bfloat16)
    _, params_bf16 = load_byt5(str(tmp_path / "bf16"))
    rounded = jax.tree_util.tree_map(lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32), params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_bf16, rounded)


@pytest.mark.parametrize("dtype,embedding_keys", [
    (torch.bfloat16, ("encoder.embed_tokens.weight",)),  # the tied pair saved under its other name
    (torch.float16, ("shared.weight", "encoder.embed_tokens.weight")),  # both saved (older transformers)
])
def test_full_t5_checkpoint_loads(tmp_path, batch, dtype, embedding_keys):
    from transformers import T5ForConditionalGeneration
    torch.manual_seed(3)
    full = T5ForConditionalGeneration(_hf_config()).eval().to(dtype)
    full.save_pretrained(tmp_path)
    tensors = safetensors_io.load_tensors(str(tmp_path))
    embedding = tensors.pop("shared.weight")
    tensors.update({k: embedding for k in embedding_keys})
    safetensors_io.save_tensors(tensors, str(tmp_path))
    cfg, params = load_byt5(str(tmp_path))
    ours = ByT5Encoder(cfg).apply({"params": params}, *batch)
    ref = _hf_forward(full.float().get_encoder(), *batch)  # the same (rounded) weights, fp32 compute
    d = _real_diff(ours, ref, batch[1])
    print(f"ByT5 from a {dtype} T5ForConditionalGeneration checkpoint: max abs diff {d:.2e}")
    assert d <= 1e-5


def test_mismatch_lists_keys(tmp_path, hf):
    shutil.copytree(hf[0], tmp_path / "m")
    t = safetensors_io.load_tensors(str(tmp_path / "m"))
    del t["encoder.final_layer_norm.weight"]
    t["encoder.block.9.layer.0.SelfAttention.q.weight"] = np.zeros((2, 2), np.float32)
    t["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = np.zeros((48, 5), np.float32)
    safetensors_io.save_tensors(t, str(tmp_path / "m"))
    with pytest.raises(convert.CheckpointMismatchError) as err:
        load_byt5(str(tmp_path / "m"))
    assert err.value.missing == ["encoder.final_layer_norm.weight"]
    assert err.value.unexpected == ["encoder.block.9.layer.0.SelfAttention.q.weight"]
    assert err.value.misshaped == [("encoder.block.1.layer.1.DenseReluDense.wo.weight", (48, 5), (48, 64))]
    assert "encoder.final_layer_norm.weight" in str(err.value)


def test_config_errors(tmp_path, hf):
    base = t5_to_hf_config(CFG)
    assert t5_config_from_hf(base, dtype="bfloat16") == dataclasses.replace(CFG, dtype="bfloat16")
    with pytest.raises(ValueError, match="feed_forward_proj 'relu'"):
        t5_config_from_hf({**base, "feed_forward_proj": "relu"})  # original T5 v1.0
    with pytest.raises(ValueError, match="model_type 'umt5'"):
        t5_config_from_hf({**base, "model_type": "umt5"})
    with pytest.raises(ValueError, match="d_kv"):
        t5_config_from_hf({k: v for k, v in base.items() if k != "d_kv"})
    shutil.copytree(hf[0], tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps({**base, "feed_forward_proj": "relu"}))
    with pytest.raises(ValueError, match="config.json"):
        load_byt5(str(tmp_path / "c"))


def test_bf16_compute_close_to_fp32(loaded, batch, ours):
    cfg, params = loaded
    bf = ByT5Encoder(dataclasses.replace(cfg, dtype="bfloat16")).apply({"params": params}, *batch)
    assert bf.dtype == jnp.bfloat16
    rel = _real_diff(ours, bf, batch[1]) / float(np.max(np.abs(ours)))
    print(f"ByT5 bf16 vs fp32 compute: max abs diff / max |out| = {rel:.3f} (tolerance 0.03)")
    assert rel < 0.03
