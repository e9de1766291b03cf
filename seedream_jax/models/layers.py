"""Small building blocks shared by the models: axis-annotated Dense/Conv and norms.

Every parameter carries logical axis names (see ``seedream_jax.parallel.axes``), so the
sharding rules in the config decide placement. Parameters are float32 (``param_dtype``);
``dtype`` is the compute dtype. Normalisations always compute in float32.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seedream_jax.parallel import axes, sharding

Dtype = Any


@functools.lru_cache(maxsize=None)
def _gathered_dot_general(kernel_axes: tuple):
    """``lax.dot_general`` with the kernel (rhs) first constrained to
    ``sharding.gathered_axes(kernel_axes)``: gathered over the FSDP axis before the matmul, which
    also keeps a case XLA's partitioner gets wrong away from it (see ``gathered_axes``)."""
    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        rhs = nn.with_logical_constraint(rhs, sharding.gathered_axes(kernel_axes))
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    return dot_general


def dense(features: int, in_axis: Optional[str], out_axis: Optional[str], *, use_bias: bool = True,
          dtype: Dtype = jnp.float32, name: Optional[str] = None,
          kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros) -> nn.Dense:
    """A Dense layer whose kernel is annotated ``(in_axis, out_axis)`` and bias ``(out_axis,)``.

    The kernel is stored as [in, out] (the transpose of a PyTorch ``nn.Linear.weight``), split by
    the rules at rest and gathered over the FSDP axis, in the compute dtype, at use
    (``sharding.gathered_axes``); outside ``nn.logical_axis_rules`` and a mesh that is a no-op.
    """
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, (in_axis, out_axis)),
        bias_init=nn.with_logical_partitioning(bias_init, (out_axis,)),
        dot_general=_gathered_dot_general((in_axis, out_axis)),
    )


@functools.lru_cache(maxsize=None)
def _gathered_conv_general_dilated(kernel_axes: tuple):
    """``lax.conv_general_dilated`` with the kernel (rhs) first constrained to
    ``sharding.gathered_axes(kernel_axes)``, as ``_gathered_dot_general`` does for Dense. Left to
    itself, XLA may convolve with the kernel's output channels split over 'fsdp' and the input
    replicated, so every chip runs the whole global batch (the VAE decode at full size)."""
    def conv_general_dilated(lhs, rhs, *args, **kwargs):
        rhs = nn.with_logical_constraint(rhs, sharding.gathered_axes(kernel_axes))
        return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    return conv_general_dilated


def conv(features: int, kernel_size: Sequence[int], *, strides: int = 1, padding: Any = "SAME",
         use_bias: bool = True, dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.Conv:
    """An NHWC convolution with kernel [kh, kw, in, out] annotated (None, None, conv_in, conv_out):
    split by the rules at rest and gathered over the FSDP axis at use, as in ``dense``.

    The bias [out] is replicated (annotated (None,)): nn.Conv adds it with no hook to gather it,
    and one split over 'fsdp' leads XLA to split the activations after it by channel, the whole
    batch on every chip again (the full-size VAE decode: 3.2 GB per chip instead of 0.8)."""
    kernel_axes = (None, None, axes.CONV_IN, axes.CONV_OUT)
    return nn.Conv(
        features, tuple(kernel_size), strides=strides, padding=padding, use_bias=use_bias,
        dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), kernel_axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
        conv_general_dilated_cls=functools.partial(_gathered_conv_general_dilated, kernel_axes),
    )


def constrain_tokens(x: jax.Array) -> jax.Array:
    """Pin a token activation [B, L, D] to the (batch, length, act_embed) logical layout.

    Placed between blocks, it gives the SPMD partitioner a fixed activation layout (batch over
    ('data', 'fsdp') under the presets) instead of letting each block's weights decide.
    A no-op outside ``jax.set_mesh``.
    """
    return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.ACT_EMBED))


class Embed(nn.Module):
    """Token embedding: ids [...] int -> vectors [..., features] in ``dtype``; table [num, features]
    float32, annotated (vocab, embed).

    Before the lookup the table's width is all-gathered (``sharding.gathered_axes``: (vocab, None)
    under the presets), as FSDP does for every weight before use, so the gathered rows come out
    batch-sharded like the ids; rows stay sharded by the vocab rule.
    """
    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    embedding_init: Any = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.param("embedding", nn.with_logical_partitioning(self.embedding_init, (axes.VOCAB, axes.EMBED)),
                           (self.num_embeddings, self.features), jnp.float32)
        table = nn.with_logical_constraint(table, sharding.gathered_axes((axes.VOCAB, axes.EMBED)))
        return jnp.take(table, ids, axis=0).astype(self.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``x / sqrt(mean(x^2) + eps) * scale`` computed in float32.

    Matches HF ``Qwen2RMSNorm`` / ``T5LayerNorm`` and diffusers ``RMSNorm``: the
    normalised value is cast back to the input dtype before the (float32) scale multiplies it.
    ``scale`` maps to the PyTorch ``weight``.
    """
    eps: float = 1e-6
    axis_name: Optional[str] = axes.NORM
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        if not self.use_scale:
            return xf.astype(dtype)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), jnp.float32)
        return (xf.astype(dtype) * scale).astype(dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis in float32, optional affine (PyTorch ``weight``/``bias``)."""
    eps: float = 1e-6
    use_affine: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.use_affine:
            init = nn.with_logical_partitioning
            y = y * self.param("scale", init(nn.initializers.ones, (axes.NORM,)), (x.shape[-1],), jnp.float32)
            y = y + self.param("bias", init(nn.initializers.zeros, (axes.NORM,)), (x.shape[-1],), jnp.float32)
        return y.astype(dtype)


class GroupNorm(nn.Module):
    """GroupNorm over NHWC (statistics over H, W and the channels of a group) in float32.

    Matches ``torch.nn.GroupNorm`` with affine ``weight``/``bias`` (here ``scale``/``bias``).
    """
    num_groups: int = 32
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        *lead, c = x.shape
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels are not divisible into {self.num_groups} groups")
        xf = x.astype(jnp.float32).reshape(*lead, self.num_groups, c // self.num_groups)
        reduce_axes = tuple(range(1, xf.ndim - 2)) + (xf.ndim - 1,)
        mean = jnp.mean(xf, axis=reduce_axes, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=reduce_axes, keepdims=True)
        y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(*lead, c)
        init = nn.with_logical_partitioning
        y = y * self.param("scale", init(nn.initializers.ones, (axes.NORM,)), (c,), jnp.float32)
        y = y + self.param("bias", init(nn.initializers.zeros, (axes.NORM,)), (c,), jnp.float32)
        return y.astype(dtype)


def compute_dtype(name: str) -> Dtype:
    """Map a config string ('float32', 'bfloat16', 'float16') to a JAX dtype, failing loudly."""
    table = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if name not in table:
        raise ValueError(f"unknown compute dtype {name!r}; expected one of {sorted(table)}")
    return table[name]
