"""The one attention entry point, ``attend``, behind the config knob ``attention_impl``.

Every model's attention goes through ``attend``: the MMDiT's joint attention, Qwen2's causal
grouped-query attention, the text adapter, T5's biased attention and the VAE's mid-block attention.

  None / "xla"        ``jax.nn.dot_product_attention`` lowered by XLA (any backend, every case).
  "cudnn"             the same call with cuDNN's fused flash attention (NVIDIA GPUs): float16 /
                      bfloat16, head dim a multiple of 8 up to 128 (256 from Hopper on), even
                      sequence lengths when there is a mask or bias (its backward needs them).
  "splash"            the Pallas Splash-attention kernel (TPU only), for self-attention with at
                      most a key-padding mask and/or a causal mask, no bias, no grouped-query heads:
                      padding keys are excluded with segment ids (queries 1, keys 1 real / 0
                      padding), the sequence is padded to a multiple of 128 with padding keys, and
                      under a mesh the kernel runs per shard through ``jax.shard_map`` (batch and
                      heads split by the logical rules).
  "splash_interpret"  the same kernel through the Pallas interpreter, on any backend: slow, for
                      checking the kernel's numerics off-TPU (the tests do).

A kernel asked for on the wrong hardware ('splash' off TPU, 'cudnn' off GPU) is a configuration
error and raises. A case the kernel cannot serve runs on XLA instead, with the reason logged once.
"""
import functools
import logging
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from seedream_jax.parallel import axes

IMPLEMENTATIONS = (None, "xla", "cudnn", "splash", "splash_interpret")
_SPLASH_PAD = 128


def check_implementation(impl: Optional[str]) -> None:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl {impl!r} is not one of {IMPLEMENTATIONS}")


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: Optional[jax.Array] = None,
           bias: Optional[jax.Array] = None, causal: bool = False, scale: Optional[float] = None,
           impl: Optional[str] = None) -> jax.Array:
    """softmax(scale q k^T + bias, over the allowed keys) v, per head.

    q [B, Lq, H, D]; k, v [B, Lk, K, D] with H a multiple of K (grouped-query: query head h reads
    kv head h // (H / K)). mask: bool broadcastable to [B, H, Lq, Lk], True = may attend
    ([B, 1, 1, Lk] is a key-padding mask). bias: float broadcastable to [B, H, Lq, Lk], added to the
    scaled logits. causal: query i sees keys j <= i only (ANDed with ``mask``). scale: default
    1/sqrt(D). Returns [B, Lq, H, D] in q's dtype; logits and softmax in float32. A query with no
    allowed key gets an unspecified output: callers keep every row non-empty.
    """
    check_implementation(impl)
    if mask is not None:
        mask = jnp.asarray(mask).astype(bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    reason = None
    if impl in ("splash", "splash_interpret"):
        if impl == "splash" and jax.default_backend() != "tpu":
            raise ValueError(f"attention_impl 'splash' needs a TPU (backend is {jax.default_backend()!r}); "
                             "use 'cudnn' on GPU, None on CPU, or 'splash_interpret' to check numerics")
        reason = _splash_refusal(q, k, mask, bias)
        if reason is None:
            key_mask = (jnp.ones((q.shape[0], k.shape[1]), bool) if mask is None
                        else jnp.broadcast_to(mask[:, 0, 0, :], (q.shape[0], k.shape[1])))
            return _splash_sharded(q, k, v, key_mask, scale, causal, interpret=impl == "splash_interpret")
    elif impl == "cudnn":
        if jax.default_backend() != "gpu":
            raise ValueError(f"attention_impl 'cudnn' needs an NVIDIA GPU (backend is {jax.default_backend()!r}); "
                             "use None on CPU, 'splash' on TPU")
        reason = _cudnn_refusal(q, k, v, mask, bias)
        if reason is None:
            return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=causal,
                                                implementation="cudnn")
    if reason is not None:
        _log_fallback(impl, reason)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=causal,
                                        implementation="xla")


@functools.lru_cache(maxsize=None)
def _log_fallback(impl: str, reason: str) -> None:
    logging.warning("attention_impl %r cannot serve this attention (%s): using XLA's", impl, reason)


def _splash_refusal(q, k, mask, bias) -> Optional[str]:
    """Why the Splash kernel cannot serve this case, or None when it can."""
    if bias is not None:
        return "an additive bias"
    if mask is not None and mask.shape[1:3] != (1, 1):
        return f"a mask of shape {mask.shape}, not a key-padding mask [B, 1, 1, Lk]"
    if q.shape[1] != k.shape[1]:
        return f"cross-attention (query length {q.shape[1]}, key length {k.shape[1]})"
    if q.shape[2] != k.shape[2]:
        return f"grouped-query heads ({q.shape[2]} query, {k.shape[2]} key/value)"
    return None


def _cudnn_refusal(q, k, v, mask, bias) -> Optional[str]:
    """Why cuDNN's flash attention cannot serve this case, or None when it can."""
    if {q.dtype, k.dtype, v.dtype} - {jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)}:
        return f"dtype {q.dtype} (cuDNN needs float16 / bfloat16)"
    head_dim_max = 256 if float(getattr(jax.devices()[0], "compute_capability", "0")) >= 9.0 else 128
    if q.shape[-1] % 8 or q.shape[-1] > head_dim_max:
        return f"head dim {q.shape[-1]} (cuDNN needs a multiple of 8 up to {head_dim_max})"
    if (mask is not None or bias is not None) and (q.shape[1] % 2 or k.shape[1] % 2):
        return f"odd sequence lengths {q.shape[1]}, {k.shape[1]} with a mask or bias"
    return None


def _splash_sharded(q, k, v, key_mask, scale, causal, interpret: bool):
    """Run the kernel per shard of the current mesh (``jax.set_mesh``), or directly without one."""
    kernel = functools.partial(_splash, scale=scale, causal=causal, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, key_mask)
    spec = nn.logical_to_mesh_axes((axes.BATCH, None, axes.ACT_HEADS, None))
    mask_spec = PartitionSpec(spec[0], None)
    fn = jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec, mask_spec), out_specs=spec, check_vma=False)
    return fn(q, k, v, key_mask)


def _block(length: int) -> int:
    return next(b for b in (512, 256, 128) if length % b == 0)


def _splash(q, k, v, key_mask, scale: float, causal: bool, interpret: bool):
    """q, k, v [B, T, H, D], key_mask [B, T] bool -> [B, T, H, D] through the Splash kernel."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash
    b, t, h, d = q.shape
    padded = -(-t // _SPLASH_PAD) * _SPLASH_PAD
    pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - t)) + ((0, 0),) * (x.ndim - 2))
    q, k, v = pad(q * scale).astype(q.dtype), pad(k), pad(v)
    kv_segments = pad(key_mask.astype(jnp.int32))  # padding keys (and the pad) get segment 0
    blk = _block(padded)
    sizes = splash.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                              block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    head_mask = splash.CausalMask if causal else splash.FullMask
    mask = splash.MultiHeadMask([head_mask((padded, padded)) for _ in range(h)])
    kernel = splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)

    def one(qi, ki, vi, segi):  # [T, H, D] -> kernel layout [H, T, D]
        ids = splash.SegmentIds(q=jnp.ones((padded,), jnp.int32), kv=segi)
        out = kernel(qi.transpose(1, 0, 2), ki.transpose(1, 0, 2), vi.transpose(1, 0, 2), segment_ids=ids)
        return out.transpose(1, 0, 2)

    return jax.vmap(one)(q, k, v, kv_segments)[:, :t].astype(q.dtype)
