"""VMix-style aesthetic (style-tag) adapter for the MMDiT's joint attention.

VMix (Wu et al. 2024, "VMix: Improving Text-to-Image Diffusion Model with Cross-Attention Mixing
Control", arXiv:2412.20800) injects an aesthetic condition into a pretrained text-to-image model
through the attention *values*, connected by zero-initialised linear layers, so the base model's
attention maps are kept and training starts from the base model exactly. Seedream 2.0 uses it in
continued training to learn style attributes (colour, lighting, texture, composition). Here it is
adapted to MMDiT joint attention (no separate cross-attention exists):

Tags. ``style_tags`` int32 [B, A], one entry per attribute a (A = len(tag_sizes)); entry 0 means
the attribute is absent (not given, or dropped for guidance), k >= 1 means value k - 1 of the
attribute's ``tag_sizes[a]`` values. The model knows no names: the stage maps its vocabulary
(e.g. palette, lighting, texture, composition, source) to these ids.

Tag encoder (``StyleTagEncoder``, parameters under ``style_adapter/``)::

    h = sum_a E_a[s_a]                          E_a: [tag_sizes[a] + 1, D_t], row 0 = "absent"
    e = W_2 silu(W_1 h + b_1) + b_2             e: [B, D_t]   (``mlp_in``, ``mlp_out``)

Value mixing, in every double block i (``transformer_blocks_i/attn/style_value``)::

    delta_i = W_v,i e + c_i                     [B, D], D = num_heads * head_dim; W_v,i, c_i start at 0
    v_img   <- v_img + delta_i[:, None]         the image tokens' values after ``to_v``, every token,
                                                head h gets delta_i[h*hd:(h+1)*hd]

Text-token values (``add_v_proj``) and the single-stream blocks are unchanged. Because queries and
keys are untouched, every attention map is the base model's; for a query token q (text or image)
and head h the joint attention output becomes

    o_q = o_q^base + m_q delta_i,h,   m_q = sum over image keys k of softmax(q.k)  (in [0, 1])

so the style shift is gated per token by how much that token attends to the image (no extra
gate parameter is needed). With W_v,i = c_i = 0 at initialisation, delta_i = 0 and the model's
output equals the adapter-less model's for any tags (exactly: v + 0 = v); the gradient of W_v,i
is dL/d(delta_i) e^T, non-zero because e is (E_a ~ N(0, 1)), so training moves the adapter from
the first step.

All tags absent (every entry 0, or ``style_tags=None``) gives e_0 = W_2 silu(W_1 sum_a E_a[0] + b_1)
+ b_2: a learned constant, "no style given". At initialisation it changes nothing; after training
it is the tag-unconditional branch that tag dropout teaches (used as the unconditional side of
guidance), not necessarily the base model's output.

Every adapter parameter's path contains ``style_`` and no base parameter's does, so the optimizer
pattern ``mmdit/.*style_.*`` (``STYLE_PARAM_PATTERN``) selects exactly the adapter.
"""
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seedream_jax.models import layers
from seedream_jax.parallel import axes

STYLE_PARAM_PATTERN = r"mmdit/.*style_.*"
STYLE_MARK = "style_"


def is_style_path(path: Sequence[str]) -> bool:
    """True for an adapter parameter (a Flax path tuple or a '/'-joined string)."""
    joined = path if isinstance(path, str) else "/".join(path)
    return STYLE_MARK in joined


def absent_tags(batch: int, num_attributes: int) -> jax.Array:
    """int32 [batch, num_attributes] of zeros: every attribute absent."""
    return jnp.zeros((batch, num_attributes), jnp.int32)


def check_tags(style_tags, tag_sizes: Tuple[int, ...], batch: int):
    """``style_tags`` as int32 [batch, A]; clear errors for a model without adapter or a wrong shape.
    (Values are not checkable under ``jit``: an id outside [0, tag_sizes[a]] gives NaN outputs.)"""
    if not tag_sizes:
        raise ValueError("style_tags were given but this MMDiT has no style adapter "
                         "(MMDiTConfig.style_tag_sizes is empty); pass style_tags=None or configure "
                         "model.mmdit.style_tag_sizes")
    if style_tags is None:
        return absent_tags(batch, len(tag_sizes))
    style_tags = jnp.asarray(style_tags)
    if style_tags.ndim != 2 or style_tags.shape != (batch, len(tag_sizes)):
        raise ValueError(f"style_tags must be int [batch={batch}, attributes={len(tag_sizes)}] "
                         f"(style_tag_sizes {tuple(tag_sizes)}), got shape {tuple(style_tags.shape)}")
    if not jnp.issubdtype(style_tags.dtype, jnp.integer):
        raise ValueError(f"style_tags must be integer ids (0 = absent, k = value k-1), got {style_tags.dtype}")
    return style_tags.astype(jnp.int32)


class StyleTagEncoder(nn.Module):
    """tags int [B, A] -> e [B, features]: e = mlp_out(silu(mlp_in(sum_a tag_embedding_a[tags[:, a]])))."""
    tag_sizes: Tuple[int, ...]
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tags):
        h = 0.0
        for a, n in enumerate(self.tag_sizes):
            table = self.param(f"tag_embedding_{a}",
                               nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, axes.EMBED)),
                               (n + 1, self.features), jnp.float32)
            ids = jnp.where(tags[:, a] < 0, n + 1, tags[:, a])  # out of range, negative ones too: NaN
            h = h + jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)
        h = h.astype(self.dtype)
        h = layers.dense(self.features, axes.EMBED, axes.MLP, dtype=self.dtype, name="mlp_in")(h)
        return layers.dense(self.features, axes.MLP, axes.EMBED, dtype=self.dtype, name="mlp_out")(nn.silu(h))


def style_value(features: int, dtype, name: str = "style_value") -> nn.Dense:
    """The zero-initialised projection e [B, D_t] -> delta [B, D] of one double block (its output
    axis is the value projection's, ``heads``)."""
    return layers.dense(features, axes.EMBED, axes.HEADS, dtype=dtype, name=name,
                        kernel_init=nn.initializers.zeros)


def mix_values(v: jax.Array, delta: Optional[jax.Array]) -> jax.Array:
    """v [B, N, H, hd] (image-token values) + delta [B, H*hd] broadcast over the N tokens."""
    if delta is None:
        return v
    b, _, h, hd = v.shape
    return v + delta.reshape(b, 1, h, hd).astype(v.dtype)
