"""Key-masked multi-head attention behind one config knob, ``attention_impl``.

  None / "xla"        ``jax.nn.dot_product_attention`` lowered by XLA (any backend).
  "cudnn"             the same call with cuDNN's fused flash attention (NVIDIA GPUs, bf16/fp16).
  "splash"            the Pallas Splash-attention kernel (TPU only): padding keys are excluded
                      with segment ids (queries 1, keys 1 real / 0 padding), the sequence is padded
                      to a multiple of 128 with padding keys, and under a mesh the kernel runs per
                      shard through ``jax.shard_map`` (batch and heads split by the logical rules).
  "splash_interpret"  the same kernel through the Pallas interpreter, on any backend: slow, for
                      checking the kernel's numerics off-TPU (the tests do).

All take q, k, v [B, T, H, D] and key_mask [B, T] bool and return [B, T, H, D] in q's dtype,
scaled by 1/sqrt(D), softmax in float32.
"""
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


def key_masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
                         impl: Optional[str] = None) -> jax.Array:
    """Softmax(q k^T / sqrt(D)) v over the keys where ``key_mask`` is True."""
    check_implementation(impl)
    if impl in ("splash", "splash_interpret"):
        return _splash_sharded(q, k, v, key_mask, interpret=impl == "splash_interpret")
    return jax.nn.dot_product_attention(q, k, v, mask=key_mask.astype(bool)[:, None, None, :], implementation=impl)


def _splash_sharded(q, k, v, key_mask, interpret: bool):
    """Run the kernel per shard of the current mesh (``jax.set_mesh``), or directly without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _splash(q, k, v, key_mask, interpret)
    spec = nn.logical_to_mesh_axes((axes.BATCH, None, axes.ACT_HEADS, None))
    mask_spec = PartitionSpec(spec[0], None)
    fn = jax.shard_map(lambda *a: _splash(*a, interpret=interpret), mesh=mesh,
                       in_specs=(spec, spec, spec, mask_spec), out_specs=spec, check_vma=False)
    return fn(q, k, v, key_mask)


def _block(length: int) -> int:
    return next(b for b in (512, 256, 128) if length % b == 0)


def _splash(q, k, v, key_mask, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash
    if not interpret and jax.default_backend() != "tpu":
        raise ValueError(f"attention_impl 'splash' needs a TPU (backend is {jax.default_backend()!r}); "
                         "use 'cudnn' on GPU, None on CPU, or 'splash_interpret' to check numerics")
    b, t, h, d = q.shape
    padded = -(-t // _SPLASH_PAD) * _SPLASH_PAD
    pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - t)) + ((0, 0),) * (x.ndim - 2))
    q, k, v = pad(q * (1.0 / math.sqrt(d))).astype(q.dtype), pad(k), pad(v)
    kv_segments = pad(key_mask.astype(jnp.int32))  # padding keys (and the pad) get segment 0
    blk = _block(padded)
    sizes = splash.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                              block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    mask = splash.MultiHeadMask([splash.FullMask((padded, padded)) for _ in range(h)])
    kernel = splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)

    def one(qi, ki, vi, segi):  # [T, H, D] -> kernel layout [H, T, D]
        ids = splash.SegmentIds(q=jnp.ones((padded,), jnp.int32), kv=segi)
        out = kernel(qi.transpose(1, 0, 2), ki.transpose(1, 0, 2), vi.transpose(1, 0, 2), segment_ids=ids)
        return out.transpose(1, 0, 2)

    return jax.vmap(one)(q, k, v, kv_segments)[:, :t].astype(q.dtype)
