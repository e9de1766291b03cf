"""Bilingual decoder-only LLM text encoder (Qwen2 architecture) plus a trainable adapter.

``Qwen2Model`` reproduces HF ``transformers.Qwen2Model``: token embedding, pre-norm decoder
layers (RMSNorm, grouped-query causal attention with q/k/v biases and no o_proj bias, RoPE
rotating halves, SwiGLU MLP), final RMSNorm. Parameter names mirror HF's, so a local
Qwen2 / Qwen2.5 checkpoint loads with ``seedream_jax.interop.qwen2.load_qwen2``.

``TextEncoder`` = LLM + adapter: Seedream 2.0 adapts its LLM's features to the diffusion
model; the adapter ("mlp": a residual MLP; "transformer": bidirectional transformer layers)
has zero-initialised output projections, so at initialisation it is the identity and a
pretrained LLM's features pass through unchanged.
"""
import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models import layers
from seedream_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    dtype: str = "float32"
    attention_impl: Optional[str] = None

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} heads not divisible by {self.num_key_value_heads} kv heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def rotary_half(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """HF Llama/Qwen2 RoPE: x [B, L, H, D], positions [B, L]; rotates the halves (rotate_half), fp32."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float32) / d))
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


class Qwen2Attention(nn.Module):
    config: Qwen2Config

    @nn.compact
    def __call__(self, x, positions, mask):
        cfg = self.config
        dt, hd = layers.compute_dtype(cfg.dtype), cfg.head_dim
        kv = cfg.num_key_value_heads * hd
        q = layers.dense(cfg.hidden_size, axes.EMBED, axes.HEADS, dtype=dt, name="q_proj")(x)
        k = layers.dense(kv, axes.EMBED, axes.KV, dtype=dt, name="k_proj")(x)
        v = layers.dense(kv, axes.EMBED, axes.KV, dtype=dt, name="v_proj")(x)
        split = lambda t: t.reshape(t.shape[:2] + (-1, hd))
        q, k, v = split(q), split(k), split(v)
        q, k = rotary_half(q, positions, cfg.rope_theta), rotary_half(k, positions, cfg.rope_theta)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=cfg.attention_impl)
        out = out.reshape(out.shape[:2] + (-1,))
        return layers.dense(cfg.hidden_size, axes.HEADS, axes.EMBED, use_bias=False, dtype=dt, name="o_proj")(out)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases (HF Qwen2MLP)."""
    hidden: int
    out: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        gate = layers.dense(self.hidden, axes.EMBED, axes.MLP, use_bias=False, dtype=self.dtype, name="gate_proj")(x)
        up = layers.dense(self.hidden, axes.EMBED, axes.MLP, use_bias=False, dtype=self.dtype, name="up_proj")(x)
        return layers.dense(self.out, axes.MLP, axes.EMBED, use_bias=False, dtype=self.dtype, name="down_proj")(
            nn.silu(gate) * up)


class Qwen2DecoderLayer(nn.Module):
    config: Qwen2Config

    @nn.compact
    def __call__(self, x, positions, mask):
        cfg = self.config
        dt = layers.compute_dtype(cfg.dtype)
        h = layers.RMSNorm(cfg.rms_norm_eps, name="input_layernorm")(x)
        x = x + Qwen2Attention(cfg, name="self_attn")(h, positions, mask)
        h = layers.RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm")(x)
        return x + SwiGLU(cfg.intermediate_size, cfg.hidden_size, dt, name="mlp")(h)


class Qwen2Model(nn.Module):
    """input_ids [B, L] int32, attention_mask [B, L] (1 = token) -> hidden states [B, L, hidden].

    ``output_layer`` follows HF's ``hidden_states`` tuple: 0 = embeddings, k = output of decoder
    layer k (1 <= k < num_layers), num_layers or -1 = the final normed output
    (``last_hidden_state``). Positions are 0..L-1 (right padding), as HF without position_ids.
    """
    config: Qwen2Config

    @nn.compact
    def __call__(self, input_ids, attention_mask, output_layer: int = -1):
        cfg = self.config
        n = cfg.num_hidden_layers
        if not -1 <= output_layer <= n:
            raise ValueError(f"output_layer {output_layer} outside [-1, {n}]")
        last = n if output_layer == -1 else output_layer
        dt = layers.compute_dtype(cfg.dtype)
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=jnp.float32, name="embed_tokens",
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (axes.VOCAB, axes.EMBED)))
        x = embed(input_ids)
        b, l = input_ids.shape
        positions = jnp.broadcast_to(jnp.arange(l), (b, l))
        causal = jnp.tril(jnp.ones((l, l), bool))
        mask = causal[None, None] & attention_mask.astype(bool)[:, None, None, :]
        for i in range(min(last, n)):
            x = Qwen2DecoderLayer(cfg, name=f"layers_{i}")(x, positions, mask)
        if last == n:
            x = layers.RMSNorm(cfg.rms_norm_eps, name="norm")(x)
        return x


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """llm: the LLM; output_layer: which hidden states (see Qwen2Model); adapter: 'none' |
    'mlp' | 'transformer'; adapter_layers: transformer layers of the adapter;
    adapter_heads: its attention heads (must divide the LLM width)."""
    llm: Qwen2Config
    output_layer: int = -1
    adapter: str = "none"
    adapter_layers: int = 1
    adapter_heads: int = 4
    adapter_mlp_ratio: float = 2.0

    def __post_init__(self):
        if self.adapter not in ("none", "mlp", "transformer"):
            raise ValueError(f"adapter must be 'none', 'mlp' or 'transformer', got {self.adapter!r}")


class AdapterLayer(nn.Module):
    """Pre-norm residual block: optional bidirectional masked self-attention, then an MLP; the
    output projections start at zero, so the layer starts as the identity."""
    width: int
    heads: int
    mlp_ratio: float
    attention: bool
    dtype: jnp.dtype
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x, mask):
        zeros = nn.initializers.zeros
        if self.attention:
            h = layers.RMSNorm(name="attn_norm")(x)
            hd = self.width // self.heads
            qkv = [layers.dense(self.width, axes.EMBED, axes.HEADS, dtype=self.dtype, name=n)(h).reshape(h.shape[:2] + (self.heads, hd))
                   for n in ("q_proj", "k_proj", "v_proj")]
            a = jax.nn.dot_product_attention(*qkv, mask=mask[:, None, None, :], implementation=self.attention_impl)
            x = x + layers.dense(self.width, axes.HEADS, axes.EMBED, dtype=self.dtype, name="o_proj",
                                 kernel_init=zeros)(a.reshape(x.shape))
        h = layers.RMSNorm(name="mlp_norm")(x)
        h = nn.gelu(layers.dense(int(self.width * self.mlp_ratio), axes.EMBED, axes.MLP, dtype=self.dtype, name="fc1")(h))
        return x + layers.dense(self.width, axes.MLP, axes.EMBED, dtype=self.dtype, name="fc2", kernel_init=zeros)(h)


class TextEncoder(nn.Module):
    """(input_ids [B, L], attention_mask [B, L]) -> (tokens [B, L, hidden], mask [B, L] bool).
    Padded rows of ``tokens`` are zero."""
    config: TextEncoderConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask) -> Tuple[jax.Array, jax.Array]:
        cfg = self.config
        mask = attention_mask.astype(bool)
        x = Qwen2Model(cfg.llm, name="llm")(input_ids, mask, cfg.output_layer)
        if cfg.adapter != "none":
            dt = layers.compute_dtype(cfg.llm.dtype)
            n = 1 if cfg.adapter == "mlp" else cfg.adapter_layers
            for i in range(n):
                x = AdapterLayer(cfg.llm.hidden_size, cfg.adapter_heads, cfg.adapter_mlp_ratio,
                                 cfg.adapter == "transformer", dt, cfg.llm.attention_impl,
                                 name=f"adapter_{i}")(x, mask)
        return jnp.where(mask[..., None], x, 0).astype(x.dtype), mask
