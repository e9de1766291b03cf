"""Bilingual decoder-only LLM text encoder (Qwen2 architecture) plus a trainable adapter.

``Qwen2Model`` reproduces HF ``transformers.Qwen2Model``: token embedding, pre-norm decoder
layers (RMSNorm, grouped-query causal attention with q/k/v biases and no o_proj bias, RoPE
rotating halves, SwiGLU MLP), final RMSNorm. Parameter names mirror HF's, so a local
Qwen2 / Qwen2.5 checkpoint loads with ``seedream_jax.interop.qwen2.load_qwen2``.

``TextEncoder`` = LLM (submodule ``llm``) + adapter (submodule ``adapter``): Seedream 2.0
adapts its LLM's features to the diffusion model. The adapter ("mlp": residual pre-norm MLP
blocks; "transformer": pre-norm bidirectional transformer blocks with a key-padding mask) has
zero-initialised output projections, so at initialisation it is exactly the identity and a
pretrained (typically frozen) LLM's features pass through unchanged.
"""
import dataclasses
from typing import NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models import attention, layers
from seedream_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Qwen2 hyper-parameters (HF ``Qwen2Config`` names); defaults are Qwen2.5-0.5B's shape.

    dtype: compute dtype ('float32' | 'bfloat16' | 'float16'); parameters stay float32.
    attention_impl: see ``models.attention`` (None = XLA, 'cudnn'; Splash cannot serve the
    causal mask with its diagonal, so 'splash' runs on XLA).
    """
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
            raise ValueError(f"Qwen2Config: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"Qwen2Config: num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.num_key_value_heads}")
        layers.compute_dtype(self.dtype)
        attention.check_implementation(self.attention_impl)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def rope_at(positions: jax.Array, head_dim: int, theta: float) -> Tuple[jax.Array, jax.Array]:
    """HF Llama/Qwen2 RoPE tables at integer ``positions`` [...]: (cos, sin), each [..., head_dim] float32.

    The frequencies are repeated over the two halves (``cat([freqs, freqs])``), matching ``rotate_half``.
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    freqs = jnp.asarray(positions).astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rope_tables(length: int, head_dim: int, theta: float) -> Tuple[jax.Array, jax.Array]:
    """RoPE tables for positions 0..length-1: (cos, sin), each [length, head_dim] float32."""
    return rope_at(jnp.arange(length), head_dim, theta)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, H, D] rotated by (cos, sin) [L, D] (shared positions) or [B, L, D] (per-row positions)
    with ``rotate_half`` (not interleaved), in float32."""
    d = x.shape[-1]
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., d // 2:], xf[..., : d // 2]], axis=-1)
    return (xf * cos[..., None, :] + rotated * sin[..., None, :]).astype(x.dtype)


def make_attention_mask(key_mask: jax.Array) -> jax.Array:
    """[B, L] bool key mask -> [B, 1, L, L] bool attention mask (True = may attend).

    Every query also sees its own position, so a query whose keys are all padding (a fully padded
    row, or left padding under a causal mask) never has an empty softmax; real queries are
    unaffected because their own position is a real key.
    """
    return key_mask.astype(bool)[:, None, None, :] | jnp.eye(key_mask.shape[-1], dtype=bool)


def make_cached_attention_mask(key_mask: jax.Array, cache_index: jax.Array, length: int) -> jax.Array:
    """Mask of ``length`` queries written at cache slots cache_index.. over T cache slots.

    key_mask [B, T] bool (True = the slot holds a real token, this call's included); query i (at
    slot cache_index + i) sees slots j <= cache_index + i that ``key_mask`` allows, and always its
    own slot (as ``make_attention_mask``). Returns [B, 1, length, T] bool.
    """
    slots = jnp.arange(key_mask.shape[-1])
    query_slots = cache_index + jnp.arange(length)
    causal = slots[None, :] <= query_slots[:, None]
    own = slots[None, :] == query_slots[:, None]
    return (key_mask.astype(bool)[:, None, None, :] & causal) | own


class KVCache(NamedTuple):
    """One decoder layer's attention cache: keys and values [B, T, kv_heads, head_dim] in the
    compute dtype, over T slots (keys already rotated by RoPE)."""
    k: jax.Array
    v: jax.Array


def init_kv_cache(config: Qwen2Config, batch: int, length: int) -> Tuple[KVCache, ...]:
    """An empty (zero) cache of ``length`` slots for every decoder layer of ``config``."""
    shape = (batch, length, config.num_key_value_heads, config.head_dim)
    dt = layers.compute_dtype(config.dtype)
    return tuple(KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(config.num_hidden_layers))


class Qwen2Attention(nn.Module):
    """Grouped-query attention: x [B, L, hidden] -> ([B, L, hidden], cache) (q/k/v biases, no o_proj bias).

    Without ``cache``: causal self-attention over x, ``mask`` [B, 1, L, L] (key padding plus the
    diagonal); returns cache None. With ``cache`` (a ``KVCache`` of T slots): x's keys and values
    are written at slots cache_index..cache_index+L-1, the queries attend over all T slots under
    ``mask`` [B, 1, L, T] (``make_cached_attention_mask``), and the updated cache is returned.
    ``rope``: (cos, sin) [L, D] or [B, L, D].
    """
    config: Qwen2Config

    @nn.compact
    def __call__(self, x, rope, mask, cache: Optional[KVCache] = None, cache_index=None):
        cfg = self.config
        dt, hd = layers.compute_dtype(cfg.dtype), cfg.head_dim
        kv_width = cfg.num_key_value_heads * hd
        q = layers.dense(cfg.hidden_size, axes.EMBED, axes.HEADS, dtype=dt, name="q_proj")(x)
        k = layers.dense(kv_width, axes.EMBED, axes.KV, dtype=dt, name="k_proj")(x)
        v = layers.dense(kv_width, axes.EMBED, axes.KV, dtype=dt, name="v_proj")(x)
        q, k, v = (t.reshape(t.shape[:2] + (-1, hd)) for t in (q, k, v))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # Native GQA: kv heads are shared by groups of query heads; logits and softmax in float32.
        if cache is None:  # ``mask`` is key padding plus the diagonal, ``attend`` adds the causal mask
            out = attention.attend(q, k, v, mask=mask, causal=True, impl=cfg.attention_impl)
        else:  # ``mask`` is already causal over the cache slots
            write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), cache_index, 1)
            cache = KVCache(write(cache.k, k), write(cache.v, v))
            out = attention.attend(q, cache.k, cache.v, mask=mask, impl=cfg.attention_impl)
        out = out.reshape(out.shape[:2] + (cfg.hidden_size,))
        out = layers.dense(cfg.hidden_size, axes.HEADS, axes.EMBED, use_bias=False, dtype=dt, name="o_proj")(out)
        return out, cache


class Qwen2MLP(nn.Module):
    """SwiGLU ``down(silu(gate(x)) * up(x))`` without biases (HF ``Qwen2MLP``)."""
    config: Qwen2Config

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dt = layers.compute_dtype(cfg.dtype)
        gate = layers.dense(cfg.intermediate_size, axes.EMBED, axes.MLP, use_bias=False, dtype=dt, name="gate_proj")(x)
        up = layers.dense(cfg.intermediate_size, axes.EMBED, axes.MLP, use_bias=False, dtype=dt, name="up_proj")(x)
        return layers.dense(cfg.hidden_size, axes.MLP, axes.EMBED, use_bias=False, dtype=dt, name="down_proj")(
            nn.silu(gate) * up)


class Qwen2DecoderLayer(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(x)), optionally through a KV cache."""
    config: Qwen2Config

    @nn.compact
    def __call__(self, x, rope, mask, cache: Optional[KVCache] = None, cache_index=None):
        """-> (x [B, L, hidden], updated cache or None); see ``Qwen2Attention``."""
        cfg = self.config
        h = layers.RMSNorm(cfg.rms_norm_eps, name="input_layernorm")(x)
        a, cache = Qwen2Attention(cfg, name="self_attn")(h, rope, mask, cache, cache_index)
        x = x + a
        h = layers.RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm")(x)
        return x + Qwen2MLP(cfg, name="mlp")(h), cache


class Qwen2Model(nn.Module):
    """HF ``Qwen2Model``: input_ids [B, L] int32, attention_mask [B, L] (1/True = real token)
    -> hidden states [B, L, hidden] in the compute dtype.

    ``output_layer`` indexes HF's ``output_hidden_states`` tuple exactly: 0 = the token
    embeddings, k in 1..num_layers-1 = the output of decoder layer k (un-normed), and
    num_layers = the final *normed* output, since HF's last ``hidden_states`` entry is
    ``last_hidden_state``; -1 is the same as num_layers. Layers above ``output_layer`` are
    neither run nor given parameters. Positions are 0..L-1 (as HF without ``position_ids``),
    so pad on the right; pad keys are masked and do not influence real positions.
    ``positions`` [B, L] int32 gives each token's RoPE position instead (HF's ``position_ids``).

    Incremental decoding: with ``cache`` (one ``KVCache`` of T slots per layer, ``init_kv_cache``)
    the tokens are written at slots cache_index..cache_index+L-1 (cache_index: int32 scalar,
    may be traced), ``attention_mask`` is the key mask over all T slots [B, T] (this call's
    tokens included), query i sees the allowed slots <= cache_index + i, and the call returns
    (hidden [B, L, hidden], updated cache).
    """
    config: Qwen2Config

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, output_layer: int = -1, *,
                 positions: Optional[jax.Array] = None, cache: Optional[Tuple[KVCache, ...]] = None,
                 cache_index=None):
        cfg = self.config
        n = cfg.num_hidden_layers
        if not -1 <= output_layer <= n:
            raise ValueError(f"output_layer {output_layer} outside [-1, {n}] (num_hidden_layers {n})")
        last = n if output_layer == -1 else output_layer
        if cache is not None and (len(cache) != n or cache_index is None or last != n):
            raise ValueError(f"a KV cache needs one entry per layer ({n}, got {len(cache)}), a cache_index "
                             f"(got {cache_index}) and the final output (output_layer -1, got {output_layer})")
        dt = layers.compute_dtype(cfg.dtype)
        x = layers.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, name="embed_tokens")(input_ids)
        length = input_ids.shape[1]
        rope = (rope_tables(length, cfg.head_dim, cfg.rope_theta) if positions is None
                else rope_at(positions, cfg.head_dim, cfg.rope_theta))
        if cache is None:
            mask = make_attention_mask(attention_mask)
        else:
            mask = make_cached_attention_mask(attention_mask, cache_index, length)
        new_cache = []
        for i in range(last):
            x, layer_cache = Qwen2DecoderLayer(cfg, name=f"layers_{i}")(
                x, rope, mask, None if cache is None else cache[i], cache_index)
            new_cache.append(layer_cache)
        if last == n:
            x = layers.RMSNorm(cfg.rms_norm_eps, name="norm")(x)
        return x if cache is None else (x, tuple(new_cache))


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """The LLM text encoder and its adapter.

    llm: the LLM. output_layer: which LLM hidden states feed the adapter (see ``Qwen2Model``;
    -1 = final normed output). adapter: 'none' | 'mlp' (residual pre-norm MLP blocks) |
    'transformer' (pre-norm bidirectional transformer blocks). adapter_layers: number of adapter
    blocks. adapter_heads: attention heads of a transformer adapter (must divide the LLM width).
    adapter_mlp_ratio: adapter MLP hidden width / LLM width.
    """
    llm: Qwen2Config
    output_layer: int = -1
    adapter: str = "none"
    adapter_layers: int = 1
    adapter_heads: int = 4
    adapter_mlp_ratio: float = 2.0

    def __post_init__(self):
        if self.adapter not in ("none", "mlp", "transformer"):
            raise ValueError(f"adapter must be 'none', 'mlp' or 'transformer', got {self.adapter!r}")
        if self.adapter_layers < 1:
            raise ValueError(f"adapter_layers must be >= 1, got {self.adapter_layers}")
        if self.adapter == "transformer" and self.llm.hidden_size % self.adapter_heads:
            raise ValueError(f"adapter_heads {self.adapter_heads} does not divide the LLM width {self.llm.hidden_size}")
        if not -1 <= self.output_layer <= self.llm.num_hidden_layers:
            raise ValueError(f"output_layer {self.output_layer} outside [-1, {self.llm.num_hidden_layers}]")


class AdapterBlock(nn.Module):
    """Pre-norm residual block on [B, L, width]: optional bidirectional key-masked self-attention,
    then a GELU MLP. Output projections (``o_proj``, ``fc2``) start at zero: the block starts as
    the identity."""
    width: int
    heads: int
    mlp_ratio: float
    use_attention: bool
    dtype: str = "float32"
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x, mask):
        dt, zeros = layers.compute_dtype(self.dtype), nn.initializers.zeros
        if self.use_attention:
            h = layers.RMSNorm(name="attn_norm")(x)
            q, k, v = (layers.dense(self.width, axes.EMBED, axes.HEADS, dtype=dt, name=f"{n}_proj")(h)
                       .reshape(h.shape[:2] + (self.heads, -1)) for n in "qkv")
            a = attention.attend(q, k, v, mask=mask, impl=self.attention_impl)
            x = x + layers.dense(self.width, axes.HEADS, axes.EMBED, dtype=dt, name="o_proj",
                                 kernel_init=zeros)(a.reshape(x.shape))
        h = layers.RMSNorm(name="mlp_norm")(x)
        h = nn.gelu(layers.dense(int(self.width * self.mlp_ratio), axes.EMBED, axes.MLP, dtype=dt, name="fc1")(h))
        return x + layers.dense(self.width, axes.MLP, axes.EMBED, dtype=dt, name="fc2", kernel_init=zeros)(h)


class Adapter(nn.Module):
    """``adapter_layers`` AdapterBlocks (``layers_{i}``): features [B, L, width], mask [B, L] bool
    -> [B, L, width]; the identity at initialisation."""
    config: TextEncoderConfig

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        attn_mask = make_attention_mask(mask)
        for i in range(cfg.adapter_layers):
            x = AdapterBlock(cfg.llm.hidden_size, cfg.adapter_heads, cfg.adapter_mlp_ratio,
                             cfg.adapter == "transformer", cfg.llm.dtype, cfg.llm.attention_impl,
                             name=f"layers_{i}")(x, attn_mask)
        return x


class TextEncoder(nn.Module):
    """(input_ids [B, L] int32, attention_mask [B, L]) -> (tokens [B, L, hidden] in the compute
    dtype, mask [B, L] bool). Padded rows of ``tokens`` are zero."""
    config: TextEncoderConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> Tuple[jax.Array, jax.Array]:
        cfg = self.config
        mask = attention_mask.astype(bool)
        x = Qwen2Model(cfg.llm, name="llm")(input_ids, mask, cfg.output_layer)
        if cfg.adapter != "none":
            x = Adapter(cfg, name="adapter")(x, mask)
        return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype)), mask
