"""Multi-axis rotary position embedding from explicit float position ids.

Each token has ``n_axes`` float ids (here 3: a frame/modality axis, the row, the column).
Axis ``a`` rotates ``axes_dims[a]`` channels with frequencies ``theta ** (-2j / axes_dims[a])``,
pairs interleaved ``(x[2j], x[2j+1])``, exactly as diffusers' ``FluxPosEmbed`` +
``apply_rotary_emb(use_real_unbind_dim=-1)``; passing the same ids to diffusers reproduces
the embedding.

Image ids are centred on the image (Seedream 2.0's scaled RoPE; ``image_position_ids``), so
the centre patches keep their ids when the resolution changes; text ids follow
``text_position_ids``.
"""
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def rope_frequencies(ids: jax.Array, axes_dims: Sequence[int], theta: float) -> Tuple[jax.Array, jax.Array]:
    """ids [..., N, n_axes] float -> (cos, sin), each [..., N, sum(axes_dims) // 2], float32."""
    if ids.shape[-1] != len(axes_dims):
        raise ValueError(f"position ids have {ids.shape[-1]} axes but axes_dims has {len(axes_dims)}")
    angles = []
    for a, dim in enumerate(axes_dims):
        if dim % 2:
            raise ValueError(f"axes_dims[{a}] = {dim} must be even")
        inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        angles.append(ids[..., a:a + 1].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32))
    angles = jnp.concatenate(angles, axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate interleaved channel pairs. x [B, N, H, D]; cos/sin [N, D/2] or [B, N, D/2]."""
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.astype(jnp.float32).reshape(x.shape[:-1] + (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    out = jnp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def _centred(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) + 0.5 - n / 2.0


def scale_offsets(d: np.ndarray, grid: int, base_grid: int, rule: str) -> np.ndarray:
    """Map centred offsets ``d`` (in patches) of a ``grid``-long axis to position ids.

    Rules (B = base_grid, the training grid; g = grid):
      "centered":    id = d. Pure centring; larger images extrapolate outward.
      "scaled":      id = d where |d| <= B/2, else sign(d) (B/2 + (|d| - B/2) B/g).
                     The central B x B window keeps exactly the ids of the base resolution
                     (so the centre patches are identical at 256, 512 and 1024 px) and the
                     margin beyond it is compressed by B/g, so ids grow slowly with size.
                     Seedream 2.0's scaled RoPE; the default.
      "interpolate": id = d B / g. Position interpolation: every size spans the base range.
    """
    if rule == "centered":
        return d
    if rule == "scaled":
        half = base_grid / 2.0
        excess = np.maximum(np.abs(d) - half, 0.0)
        return np.sign(d) * (np.minimum(np.abs(d), half) + excess * min(1.0, base_grid / grid))
    if rule == "interpolate":
        return d * base_grid / grid
    raise ValueError(f"unknown RoPE scaling rule {rule!r}; expected 'centered', 'scaled' or 'interpolate'")


def image_position_ids(grid_h: int, grid_w: int, *, rule: str = "scaled", base_grid: int = 32) -> np.ndarray:
    """[grid_h * grid_w, 3] float32 ids in patch (row-major) order: (0, row id, column id),
    each centred on the image: offset d = i + 0.5 - grid/2, then ``scale_offsets``."""
    rows = scale_offsets(_centred(grid_h), grid_h, base_grid, rule)
    cols = scale_offsets(_centred(grid_w), grid_w, base_grid, rule)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([np.zeros_like(r), r, c], axis=-1).reshape(-1, 3).astype(np.float32)


def text_position_ids(num_tokens: int, grid_h: int, grid_w: int, *, scheme: str = "diagonal",
                      rule: str = "scaled", base_grid: int = 32) -> np.ndarray:
    """[num_tokens, 3] float32 ids for text tokens.

    "diagonal" (Qwen-Image's MSRoPE placement): token k gets (0, m + k, m + k) with
      m = 1 + the largest |row or column id| of the image, so text sits on the diagonal
      beyond the image grid and never collides with an image position.
    "zeros" (Flux): all ids zero (text has no position).
    """
    if scheme == "zeros":
        return np.zeros((num_tokens, 3), np.float32)
    if scheme != "diagonal":
        raise ValueError(f"unknown text position scheme {scheme!r}; expected 'diagonal' or 'zeros'")
    img = image_position_ids(grid_h, grid_w, rule=rule, base_grid=base_grid)
    m = 1.0 + float(np.abs(img[:, 1:]).max())
    k = m + np.arange(num_tokens, dtype=np.float64)
    return np.stack([np.zeros_like(k), k, k], axis=-1).astype(np.float32)


def sincos_position_embedding(ids: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Fixed 2D sin-cos absolute position embedding (MAE / DiT / SD3) of image position ids.

    ids [..., N, 3] float (``image_position_ids``: (0, row id, column id), centred and scaled by
    the RoPE rule, so the embedding follows the same resolution rule as the rotary phases)
    -> [..., N, dim] float32: [sin(r w), cos(r w), sin(c w), cos(c w)] with the dim/4
    frequencies w_k = max_period ** (-k / (dim / 4)), k = 0 .. dim/4 - 1; dim % 4 == 0.
    """
    if dim % 4:
        raise ValueError(f"the sin-cos position embedding needs a width divisible by 4, got {dim}")
    n = dim // 4
    omega = jnp.asarray(max_period ** (-np.arange(n, dtype=np.float64) / n), jnp.float32)
    parts = []
    for axis in (1, 2):
        angles = ids[..., axis:axis + 1].astype(jnp.float32) * omega
        parts += [jnp.sin(angles), jnp.cos(angles)]
    return jnp.concatenate(parts, axis=-1)
