"""Conditioner: quoted-text extraction, LLM + ByT5 fusion, unconditional embedding, padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedream_jax.models.byt5 import ByT5Config
from seedream_jax.models.conditioner import (Conditioner, ConditionerConfig, extract_quoted_text, glyph_text,
                                             tokenize_prompts)
from seedream_jax.models.text_encoder import Qwen2Config, TextEncoderConfig


@pytest.mark.parametrize("prompt,expected", [
    ('a sign saying "OPEN"', ["OPEN"]),
    ("招牌上写着“你好”和「世界」", ["你好", "世界"]),
    ("『山水』 and 'tea' but don't split it's", ["山水", "tea"]),
    ("no quotes here", []),
    ('empty "" quotes', []),
])
def test_extract_quoted_text(prompt, expected):
    assert extract_quoted_text(prompt) == expected


def byte_tokenizer(texts, max_length):
    """A stand-in LLM tokenizer: UTF-8 bytes + 1, right-padded with 0."""
    ids = np.zeros((len(texts), max_length), np.int32)
    mask = np.zeros((len(texts), max_length), bool)
    for i, t in enumerate(texts):
        b = list(t.encode("utf-8"))[:max_length]
        ids[i, :len(b)] = np.array(b) + 1
        mask[i, :len(b)] = True
    return ids, mask


CFG = ConditionerConfig(
    text_encoder=TextEncoderConfig(llm=Qwen2Config(vocab_size=257, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=1, num_attention_heads=4,
                                                   num_key_value_heads=2, rope_theta=10000.0)),
    byt5=ByT5Config(vocab_size=384, d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16),
    context_dim=40, llm_max_length=24, byt5_max_length=12)


@pytest.fixture(scope="module")
def model_and_params():
    model = Conditioner(CFG)
    toks = tokenize_prompts(["x"], byte_tokenizer, CFG)
    params = model.init(jax.random.PRNGKey(0), **toks)["params"]
    return model, params, jax.jit(lambda p, t: model.apply({"params": p}, **t))


def test_shapes_and_glyph_tokens(model_and_params):
    model, params, apply = model_and_params
    toks = tokenize_prompts(['a red circle', 'the text "HI" in red', ''], byte_tokenizer, CFG)
    assert list(toks["has_glyphs"]) == [False, True, False]
    ctx, mask, pooled = apply(params, toks)
    assert ctx.shape == (3, CFG.num_tokens, 40) and mask.shape == (3, CFG.num_tokens) and pooled.shape == (3, 40)
    # glyph tokens: only the quoted prompt has some ("HI" + EOS = 3 bytes)
    assert int(mask[0, CFG.llm_max_length:].sum()) == 0
    assert int(mask[1, CFG.llm_max_length:].sum()) == 3
    assert glyph_text('the text "HI" in red') == "HI"


def test_empty_prompt_is_fully_masked_unconditional(model_and_params):
    _, params, apply = model_and_params
    ctx, mask, pooled = apply(params, tokenize_prompts([""], byte_tokenizer, CFG))
    assert not bool(mask.any())
    assert float(jnp.abs(ctx).max()) == 0.0 and float(jnp.abs(pooled).max()) == 0.0


def test_padding_does_not_change_outputs(model_and_params):
    model, params, _ = model_and_params
    short = tokenize_prompts(['a "TEA" cup'], byte_tokenizer, CFG)
    longer_cfg = ConditionerConfig(**{**CFG.__dict__, "llm_max_length": 40, "byt5_max_length": 20})
    longer = tokenize_prompts(['a "TEA" cup'], byte_tokenizer, longer_cfg)
    c1, m1, p1 = Conditioner(CFG).apply({"params": params}, **short)
    c2, m2, p2 = Conditioner(longer_cfg).apply({"params": params}, **longer)
    n_llm = int(m1[0, :CFG.llm_max_length].sum())
    np.testing.assert_allclose(c1[0, :n_llm], c2[0, :n_llm], atol=1e-5)
    np.testing.assert_allclose(c1[0, CFG.llm_max_length:CFG.llm_max_length + 4],
                               c2[0, 40:44], atol=1e-5)
    np.testing.assert_allclose(p1, p2, atol=1e-5)
