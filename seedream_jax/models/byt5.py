"""ByT5 glyph encoder: the T5 v1.1 encoder (HF ``T5EncoderModel``) over UTF-8 bytes.

T5 specifics reproduced: RMS layer norm without mean subtraction or bias; attention without
1/sqrt(d) scaling; a learned relative-position bias (bidirectional log-spaced buckets) held
by block 0 only and shared by every block; gated-GELU (tanh) feed-forward; no biases.
Note byt5-small's widths: d_model 1472 but 6 heads x 64 = 384 attention width.
"""
import dataclasses
import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models import layers
from seedream_jax.parallel import axes

PAD_ID, EOS_ID, UNK_ID, BYTE_OFFSET = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class ByT5Config:
    """Defaults are google/byt5-small's encoder."""
    vocab_size: int = 384
    d_model: int = 1472
    d_kv: int = 64
    d_ff: int = 3584
    num_layers: int = 12
    num_heads: int = 6
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    attention_impl: Optional[str] = None


def byt5_tokenize(texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes + 3, then EOS (1), right-padded with 0 and truncated keeping the EOS last;
    identical to ``transformers.ByT5Tokenizer()(texts, padding='max_length', truncation=True)``.
    Returns (ids int32 [B, max_length], mask bool [B, max_length])."""
    ids = np.full((len(texts), max_length), PAD_ID, np.int32)
    mask = np.zeros((len(texts), max_length), bool)
    for i, text in enumerate(texts):
        seq = [b + BYTE_OFFSET for b in text.encode("utf-8")][: max_length - 1] + [EOS_ID]
        ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = True
    return ids, mask


def relative_position_bucket(relative_position: jax.Array, num_buckets: int, max_distance: int) -> jax.Array:
    """HF T5 ``_relative_position_bucket`` (bidirectional): half the buckets per direction, exact
    below num_buckets/4, log-spaced up to max_distance."""
    num_buckets //= 2
    buckets = (relative_position > 0).astype(jnp.int32) * num_buckets
    rel = jnp.abs(relative_position)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact)
                         / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, rel, large)


class T5SelfAttention(nn.Module):
    config: ByT5Config
    has_relative_bias: bool

    @nn.compact
    def __call__(self, x, mask, position_bias=None):
        cfg = self.config
        dt, inner = layers.compute_dtype(cfg.dtype), cfg.num_heads * cfg.d_kv
        proj = lambda n: layers.dense(inner, axes.EMBED, axes.HEADS, use_bias=False, dtype=dt, name=n)(x).reshape(
            x.shape[:2] + (cfg.num_heads, cfg.d_kv))
        q, k, v = proj("q"), proj("k"), proj("v")
        if self.has_relative_bias:
            l = x.shape[1]
            rel = jnp.arange(l)[None, :] - jnp.arange(l)[:, None]  # key - query
            buckets = relative_position_bucket(rel, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
            table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, param_dtype=jnp.float32,
                             name="relative_attention_bias",
                             embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), (axes.RELPOS, None)))
            position_bias = table(buckets).transpose(2, 0, 1)[None].astype(jnp.float32)  # [1, H, Lq, Lk]
        out = jax.nn.dot_product_attention(q, k, v, bias=position_bias.astype(dt), mask=mask[:, None, None, :],
                                           scale=1.0, implementation=cfg.attention_impl)
        out = layers.dense(cfg.d_model, axes.HEADS, axes.EMBED, use_bias=False, dtype=dt, name="o")(
            out.reshape(x.shape[:2] + (inner,)))
        return out, position_bias


class T5LayerSelfAttention(nn.Module):
    config: ByT5Config
    has_relative_bias: bool

    @nn.compact
    def __call__(self, x, mask, position_bias):
        h = layers.RMSNorm(self.config.layer_norm_epsilon, name="layer_norm")(x)
        out, position_bias = T5SelfAttention(self.config, self.has_relative_bias, name="SelfAttention")(h, mask, position_bias)
        return x + out, position_bias


class T5DenseGatedGelu(nn.Module):
    config: ByT5Config

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dt = layers.compute_dtype(cfg.dtype)
        wi = lambda n: layers.dense(cfg.d_ff, axes.EMBED, axes.MLP, use_bias=False, dtype=dt, name=n)(x)
        h = nn.gelu(wi("wi_0"), approximate=True) * wi("wi_1")
        return layers.dense(cfg.d_model, axes.MLP, axes.EMBED, use_bias=False, dtype=dt, name="wo")(h)


class T5LayerFF(nn.Module):
    config: ByT5Config

    @nn.compact
    def __call__(self, x):
        h = layers.RMSNorm(self.config.layer_norm_epsilon, name="layer_norm")(x)
        return x + T5DenseGatedGelu(self.config, name="DenseReluDense")(h)


class T5Block(nn.Module):
    config: ByT5Config
    has_relative_bias: bool

    @nn.compact
    def __call__(self, x, mask, position_bias):
        x, position_bias = T5LayerSelfAttention(self.config, self.has_relative_bias, name="layer_0")(x, mask, position_bias)
        return T5LayerFF(self.config, name="layer_1")(x), position_bias


class T5Stack(nn.Module):
    config: ByT5Config

    @nn.compact
    def __call__(self, x, mask):
        position_bias = None
        for i in range(self.config.num_layers):
            x, position_bias = T5Block(self.config, i == 0, name=f"block_{i}")(x, mask, position_bias)
        return layers.RMSNorm(self.config.layer_norm_epsilon, name="final_layer_norm")(x)


class ByT5Encoder(nn.Module):
    """(input_ids [B, L] int32, attention_mask [B, L]) -> hidden [B, L, d_model], equal to
    HF ``T5EncoderModel(...).last_hidden_state``."""
    config: ByT5Config

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        cfg = self.config
        dt = layers.compute_dtype(cfg.dtype)
        x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dt, param_dtype=jnp.float32, name="shared",
                     embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), (axes.VOCAB, axes.EMBED)))(input_ids)
        return T5Stack(cfg, name="encoder")(x, attention_mask.astype(bool))
