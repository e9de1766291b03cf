"""Glyph-ByT5 alignment model: ByT5 features of a text span against image features of its box.

``GlyphAligner`` has two sides.

Image side: a residual CNN (``image_channels``: a 2x2 stride-2 stem, a residual block, then per
further width a stride-2 3x3 convolution and a residual block) gives a feature map at stride
``2 ** len(image_channels)``; ``roi_align`` samples it bilinearly on a ``roi_size`` = (across,
along) grid of bins over the word's box (each bin the mean of 2 x 2 samples, as torchvision's
``roi_align`` with ``sampling_ratio=2, aligned=True``). The grid runs along the longer side of the
box, so a vertical Chinese word is read top to bottom as a horizontal one is read left to right.
The sampled grid, flattened in reading order, goes through a two-layer MLP to ``embed_dim``.

Text side: the ByT5 encoder (``models/byt5.ByT5Encoder``, named ``byt5``, the conditioner's glyph
branch layout, so ``pretrain`` can start ``conditioner/byt5`` from it) over the glyph template's
bytes; its final states are averaged over the bytes of the text span and projected to
``embed_dim``.

Both embeddings are L2-normalised; their cosine is the alignment of a text and a box, and training
scales it by a learned inverse temperature (capped at 100).
"""
import dataclasses
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models import layers
from seedream_jax.models.byt5 import ByT5Config, ByT5Encoder
from seedream_jax.models.rewards import MAX_LOGIT_SCALE, ResidualBlock, unit_normalise
from seedream_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class GlyphAlignConfig:
    """byt5: the text encoder (the conditioner's ``byt5`` shape). image_size: pixels (square).
    image_channels: widths of the stem and of each stride-2 stage. roi_size: (across, along) bins
    of the box. embed_dim: joint width. max_length: template bytes (+ EOS). dtype: compute dtype."""
    byt5: ByT5Config
    image_size: int = 64
    image_channels: Tuple[int, ...] = (32, 64)
    groups: int = 8
    roi_size: Tuple[int, int] = (3, 12)
    embed_dim: int = 128
    max_length: int = 64
    init_temperature: float = 0.07
    dtype: str = "float32"

    def __post_init__(self):
        if not self.image_channels or any(c % self.groups for c in self.image_channels):
            raise ValueError(f"image_channels {self.image_channels} must be non-empty and divisible by groups "
                             f"{self.groups}")
        if self.image_size % self.stride:
            raise ValueError(f"image_size {self.image_size} must be divisible by the feature stride {self.stride}")
        layers.compute_dtype(self.dtype)

    @property
    def stride(self) -> int:
        """Pixels per feature-map cell."""
        return 2 ** len(self.image_channels)


def roi_align(features: jax.Array, boxes: jax.Array, roi_size: Tuple[int, int], stride: int) -> jax.Array:
    """Bilinear ROI pooling along the box's longer side.

    features: [B, h, w, C] at ``stride`` pixels per cell; boxes: [B, 4] (y0, x0, y1, x1) in
    pixels, end-exclusive. Returns [B, across, along, C]: bin (i, j) averages 2 x 2 bilinear
    samples; ``along`` runs left to right for a box at least as wide as it is tall, else top to
    bottom (then ``across`` runs left to right). Differentiable in ``features``.
    """
    across, along = roi_size
    b, h, w, _ = features.shape
    boxes = boxes.astype(jnp.float32) / stride - 0.5  # pixel edges -> feature-cell centres
    y0, x0, y1, x1 = (boxes[:, k] for k in range(4))
    wide = (x1 - x0) >= (y1 - y0)

    def offsets(n):  # [2n] sample positions in [0, 1] of n bins, 2 per bin
        return (np.arange(2 * n) + 0.5) / (2 * n)

    u = jnp.asarray(offsets(across))[None, :, None]  # across the line
    v = jnp.asarray(offsets(along))[None, None, :]   # along the line
    ys = jnp.where(wide[:, None, None], y0[:, None, None] + u * (y1 - y0)[:, None, None],
                   y0[:, None, None] + v * (y1 - y0)[:, None, None])
    xs = jnp.where(wide[:, None, None], x0[:, None, None] + v * (x1 - x0)[:, None, None],
                   x0[:, None, None] + u * (x1 - x0)[:, None, None])
    ys, xs = jnp.clip(ys, 0.0, h - 1.0), jnp.clip(xs, 0.0, w - 1.0)
    yf, xf = jnp.floor(ys), jnp.floor(xs)
    wy, wx = (ys - yf)[..., None], (xs - xf)[..., None]
    yi, xi = yf.astype(jnp.int32), xf.astype(jnp.int32)
    yj, xj = jnp.minimum(yi + 1, h - 1), jnp.minimum(xi + 1, w - 1)
    gather = jax.vmap(lambda f, y, x: f[y, x])  # [B, 2a, 2l, C]
    samples = ((1 - wy) * (1 - wx) * gather(features, yi, xi) + (1 - wy) * wx * gather(features, yi, xj)
               + wy * (1 - wx) * gather(features, yj, xi) + wy * wx * gather(features, yj, xj))
    return samples.reshape(b, across, 2, along, 2, -1).mean(axis=(2, 4))


class GlyphImageEncoder(nn.Module):
    """images [B, S, S, 3] in [-1, 1] -> feature map [B, S / stride, S / stride, image_channels[-1]]."""
    config: GlyphAlignConfig

    @nn.compact
    def __call__(self, images):
        cfg = self.config
        dt = layers.compute_dtype(cfg.dtype)
        ch = cfg.image_channels
        x = layers.conv(ch[0], (2, 2), strides=2, padding="VALID", dtype=dt, name="stem")(images.astype(dt))
        x = ResidualBlock(ch[0], cfg.groups, cfg.dtype, name="block_0")(x)
        for i, c in enumerate(ch[1:], start=1):
            x = layers.conv(c, (3, 3), strides=2, dtype=dt, name=f"down_{i}")(nn.gelu(x))
            x = ResidualBlock(c, cfg.groups, cfg.dtype, name=f"block_{i}")(x)
        return nn.gelu(layers.GroupNorm(cfg.groups, name="norm_out")(x))


class GlyphAligner(nn.Module):
    """``__call__(images, boxes, ids, mask, spans)`` -> (box embeddings [B, E], span embeddings
    [N, E], both unit float32, the logit scale). ``encode_boxes(images, boxes)``: boxes [B, 4]
    pixels, or [B, K, 4] (K candidate boxes per image -> [B, K, E]). ``encode_spans(ids, mask,
    spans)``: template bytes ``ids``/``mask`` [N, L] and ``spans`` [N, 2] (start, end) byte
    positions of the text -> [N, E]."""
    config: GlyphAlignConfig

    def setup(self):
        cfg = self.config
        self.image_encoder = GlyphImageEncoder(cfg)
        self.byt5 = ByT5Encoder(cfg.byt5)
        dt = layers.compute_dtype(cfg.dtype)
        self.roi_head = layers.dense(2 * cfg.embed_dim, axes.MLP, axes.EMBED, dtype=dt)
        self.roi_proj = layers.dense(cfg.embed_dim, axes.EMBED, axes.MLP, dtype=dt)
        self.text_proj = layers.dense(cfg.embed_dim, axes.EMBED, axes.MLP, dtype=dt)
        init = float(np.log(1.0 / cfg.init_temperature))
        self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
            lambda rng, shape: jnp.full(shape, init, jnp.float32), ()), ())

    def encode_boxes(self, images, boxes):
        feats = self.image_encoder(images)
        candidates = boxes.ndim == 3
        k = boxes.shape[1] if candidates else 1
        boxes = boxes.reshape(-1, 4)
        feats = jnp.repeat(feats, k, axis=0) if candidates else feats
        roi = roi_align(feats, boxes, self.config.roi_size, self.config.stride)
        out = unit_normalise(self.roi_proj(nn.gelu(self.roi_head(roi.reshape(roi.shape[0], -1)))))
        return out.reshape(-1, k, out.shape[-1]) if candidates else out

    def encode_spans(self, ids, mask, spans):
        h = self.byt5(ids, mask).astype(jnp.float32)
        pos = jnp.arange(ids.shape[1])[None, :]
        inside = ((pos >= spans[:, :1]) & (pos < spans[:, 1:]) & mask.astype(bool)).astype(jnp.float32)[..., None]
        pooled = jnp.sum(h * inside, axis=1) / jnp.maximum(jnp.sum(inside, axis=1), 1.0)
        return unit_normalise(self.text_proj(pooled))

    def scale(self):
        return jnp.minimum(jnp.exp(self.logit_scale), MAX_LOGIT_SCALE)

    def __call__(self, images, boxes, ids, mask, spans):
        return self.encode_boxes(images, boxes), self.encode_spans(ids, mask, spans), self.scale()
