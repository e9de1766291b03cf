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

from seedream_jax.models import attention, layers
from seedream_jax.parallel import axes

PAD_ID, EOS_ID, BYTE_OFFSET = 0, 1, 3  # id 2 is <unk>; ids 259..383 are <extra_id_*> sentinels


@dataclasses.dataclass(frozen=True)
class ByT5Config:
    """T5 v1.1 encoder hyper-parameters (HF ``T5Config`` names); defaults are google/byt5-small's.

    dtype: compute dtype ('float32' | 'bfloat16' | 'float16'); parameters stay float32.
    attention_impl: see ``models.attention`` (None = XLA, 'cudnn'; Splash cannot serve the
    relative-position bias, so 'splash' runs on XLA).
    """
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

    def __post_init__(self):
        if self.relative_attention_num_buckets < 4:
            raise ValueError(f"ByT5Config: relative_attention_num_buckets must be >= 4 (2 directions x "
                             f"exact + log-spaced halves), got {self.relative_attention_num_buckets}")
        layers.compute_dtype(self.dtype)
        attention.check_implementation(self.attention_impl)


def byt5_tokenize(texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """Byte-level ByT5 tokenisation: UTF-8 bytes + 3, then EOS (1), truncated to ``max_length``
    keeping the EOS last (a multi-byte character may be cut), right-padded with 0.

    Identical to ``transformers.ByT5Tokenizer()(texts, padding='max_length', truncation=True,
    max_length=max_length)`` except for text containing special-token markup ('<pad>', '</s>',
    '<unk>', '<extra_id_N>'), which HF parses into control ids while here it is encoded as its
    literal bytes: glyph text is rendered literally, so the encoder must see what is drawn.
    Returns (ids int32 [B, max_length], mask bool [B, max_length]).
    """
    if max_length < 1:
        raise ValueError(f"byt5_tokenize: max_length must be >= 1 (room for the EOS), got {max_length}")
    ids = np.full((len(texts), max_length), PAD_ID, np.int32)
    mask = np.zeros((len(texts), max_length), bool)
    for i, text in enumerate(texts):
        seq = [b + BYTE_OFFSET for b in text.encode("utf-8")[: max_length - 1]] + [EOS_ID]
        ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = True
    return ids, mask


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """HF T5 ``_relative_position_bucket`` (bidirectional) for every (query, key) pair of a
    length-``length`` sequence: int32 [length, length]. Half the buckets per direction, exact
    below num_buckets/4, log-spaced up to max_distance. Computed on the host in float32 like
    PyTorch, so the bucket boundaries never depend on an accelerator's ``log``."""
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]  # key - query
    half = num_buckets // 2
    max_exact = half // 2
    dist = np.abs(rel)
    log_ratio = (np.log(np.maximum(dist, 1).astype(np.float32) / max_exact)
                 / np.float32(math.log(max_distance / max_exact)))
    large = np.minimum(max_exact + (log_ratio * (half - max_exact)).astype(np.int32), half - 1)
    return ((rel > 0) * half + np.where(dist < max_exact, dist, large)).astype(np.int32)


class T5SelfAttention(nn.Module):
    """Unscaled multi-head self-attention; block 0 also owns the relative-position bias table."""
    config: ByT5Config
    has_relative_bias: bool

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> Tuple[jax.Array, jax.Array]:
        """x [B, L, d_model]; bias: additive float32 attention bias broadcastable to [B, H, L, L].
        Block 0 adds its relative-position bias to ``bias``; the result is returned for the
        later blocks to reuse. Returns (out [B, L, d_model], bias)."""
        cfg = self.config
        dt, inner = layers.compute_dtype(cfg.dtype), cfg.num_heads * cfg.d_kv
        b, length = x.shape[:2]

        def proj(name):
            y = layers.dense(inner, axes.EMBED, axes.HEADS, use_bias=False, dtype=dt, name=name)(x)
            return y.reshape(b, length, cfg.num_heads, cfg.d_kv)

        if self.has_relative_bias:
            table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, param_dtype=jnp.float32,
                             name="relative_attention_bias", embedding_init=nn.with_logical_partitioning(
                                 nn.initializers.normal(1.0), (axes.RELPOS, axes.HEADS)))
            buckets = relative_position_buckets(length, cfg.relative_attention_num_buckets,
                                                cfg.relative_attention_max_distance)
            bias = bias + table(buckets).transpose(2, 0, 1)[None]  # [1, H, L, L]
        out = attention.attend(proj("q"), proj("k"), proj("v"), bias=bias.astype(dt), scale=1.0,
                               impl=cfg.attention_impl)
        out = layers.dense(cfg.d_model, axes.HEADS, axes.EMBED, use_bias=False, dtype=dt, name="o")(
            out.reshape(b, length, inner))
        return out, bias


class T5LayerSelfAttention(nn.Module):
    config: ByT5Config
    has_relative_bias: bool

    @nn.compact
    def __call__(self, x, bias):
        h = layers.RMSNorm(self.config.layer_norm_epsilon, name="layer_norm")(x)
        out, bias = T5SelfAttention(self.config, self.has_relative_bias, name="SelfAttention")(h, bias)
        return x + out, bias


class T5DenseGatedGelu(nn.Module):
    """wo(gelu_tanh(wi_0 x) * wi_1 x), no biases (HF ``T5DenseGatedActDense`` with 'gelu_new')."""
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
    def __call__(self, x, bias):
        x, bias = T5LayerSelfAttention(self.config, self.has_relative_bias, name="layer_0")(x, bias)
        return T5LayerFF(self.config, name="layer_1")(x), bias


class T5Stack(nn.Module):
    """The encoder blocks and final norm: x [B, L, d_model], mask [B, L] bool -> [B, L, d_model]."""
    config: ByT5Config

    @nn.compact
    def __call__(self, x, mask):
        # Key padding as an additive bias (HF's extended attention mask); finite, so a row with
        # no real key still gives a finite (uniform) softmax.
        bias = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(x.dtype).min).astype(jnp.float32)
        for i in range(self.config.num_layers):
            x, bias = T5Block(self.config, i == 0, name=f"block_{i}")(x, bias)
        return layers.RMSNorm(self.config.layer_norm_epsilon, name="final_layer_norm")(x)


class ByT5Encoder(nn.Module):
    """(input_ids [B, L] int, attention_mask [B, L] bool/int) -> hidden [B, L, d_model] in the
    compute dtype, equal to HF ``T5EncoderModel(...).last_hidden_state``. Padded positions
    never influence real ones (their own outputs are meaningless)."""
    config: ByT5Config

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        cfg = self.config
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"ByT5Encoder: input_ids {input_ids.shape} and attention_mask "
                             f"{attention_mask.shape} must both be [batch, length]")
        dt = layers.compute_dtype(cfg.dtype)
        x = layers.Embed(cfg.vocab_size, cfg.d_model, dtype=dt, embedding_init=nn.initializers.normal(1.0),
                         name="shared")(input_ids)
        return T5Stack(cfg, name="encoder")(x, attention_mask.astype(bool))
