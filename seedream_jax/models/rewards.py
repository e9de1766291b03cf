"""Reward models: the bilingual image-text alignment scorer and the aesthetic/structure scorer.

Both read images with one ``ImageTower`` (its shape: ``ImageTowerConfig``), a small residual CNN
on ``image_size`` pixels: a ``patch_size`` x ``patch_size`` stem of that stride, a residual block,
then per further width of ``image_channels`` a stride-2 3x3 convolution and a residual block; the
final feature map, flattened (where things are), next to the mean and maximum over positions of
every stage's output (what is anywhere: colour at the first, shapes later), goes through a
two-layer MLP to ``embed_dim``.

``AlignmentReward`` is a two-tower model: that image tower and a text tower, a Qwen2-layout
decoder (``text_encoder.Qwen2Model``, named ``llm``); its final states at the last real token
(which a causal model has let see the whole prompt) and averaged over the real tokens are
concatenated and projected to ``embed_dim``. Both embeddings are L2-normalised; the score of an
(image, prompt) is their cosine, and training multiplies it by a learned inverse temperature
``exp(logit_scale)`` (capped at 100, as CLIP does). The text tower's ``llm`` has the conditioner's
LLM layout (``conditioner/text_encoder/llm``), so a reward stage can start it from a pretrain
checkpoint through ``init_from``.

``AestheticReward`` is the image tower and a scalar head: one score per image (no prompt), higher
for a clean rendering than for a degraded or generated one (``stages/aesthetic.py``).
"""
import dataclasses
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models import layers
from seedream_jax.models.text_encoder import Qwen2Config, Qwen2Model
from seedream_jax.parallel import axes

MAX_LOGIT_SCALE = 100.0


@dataclasses.dataclass(frozen=True)
class ImageTowerConfig:
    """image_size: pixels the tower reads (square; other sizes are resized to it). patch_size: the
    stem's kernel and stride. image_channels: widths of the stem and of each stride-2 stage.
    groups: GroupNorm groups. embed_dim: output width. dtype: compute dtype."""
    image_size: int = 64
    patch_size: int = 4
    image_channels: Tuple[int, ...] = (32, 64)
    groups: int = 8
    embed_dim: int = 256
    dtype: str = "float32"

    def __post_init__(self):
        if len(self.image_channels) < 1 or any(c % self.groups for c in self.image_channels):
            raise ValueError(f"image_channels {self.image_channels} must be non-empty and divisible by groups "
                             f"{self.groups}")
        if self.image_size % (self.patch_size * 2 ** (len(self.image_channels) - 1)):
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size} "
                             f"x 2^{len(self.image_channels) - 1}")
        layers.compute_dtype(self.dtype)


@dataclasses.dataclass(frozen=True)
class AlignmentRewardConfig:
    """llm: the text tower's decoder. image_size, patch_size, image_channels, groups: the image
    tower (``image_tower``, an ``ImageTowerConfig``). embed_dim: width of the joint space (both
    towers). max_length: prompt tokens (right-padded, truncated). init_temperature: the softmax
    temperature at initialisation. dtype: compute dtype."""
    llm: Qwen2Config
    image_size: int = 64
    patch_size: int = 4
    image_channels: Tuple[int, ...] = (32, 64)
    groups: int = 8
    embed_dim: int = 256
    max_length: int = 64
    init_temperature: float = 0.07
    dtype: str = "float32"

    def __post_init__(self):
        _ = self.image_tower  # validates the image tower's fields

    @property
    def image_tower(self) -> ImageTowerConfig:
        return ImageTowerConfig(image_size=self.image_size, patch_size=self.patch_size,
                                image_channels=tuple(self.image_channels), groups=self.groups,
                                embed_dim=self.embed_dim, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class AestheticRewardConfig:
    """tower: the image tower (its ``embed_dim`` is the width the scalar head reads)."""
    tower: ImageTowerConfig = dataclasses.field(default_factory=ImageTowerConfig)

    @property
    def image_size(self) -> int:
        return self.tower.image_size


class ResidualBlock(nn.Module):
    """x + conv(gelu(norm(conv(gelu(norm(x)))))) at constant width."""
    channels: int
    groups: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        dt = layers.compute_dtype(self.dtype)
        h = nn.gelu(layers.GroupNorm(self.groups, name="norm1")(x))
        h = layers.conv(self.channels, (3, 3), dtype=dt, name="conv1")(h)
        h = nn.gelu(layers.GroupNorm(self.groups, name="norm2")(h))
        return x + layers.conv(self.channels, (3, 3), dtype=dt, name="conv2")(h)


class ImageTower(nn.Module):
    """images [B, S, S, 3] in [-1, 1] (S = ``image_size``) -> [B, embed_dim] (not normalised)."""
    config: ImageTowerConfig

    @nn.compact
    def __call__(self, images):
        cfg = self.config
        dt = layers.compute_dtype(cfg.dtype)
        ch = cfg.image_channels
        p = cfg.patch_size
        x = layers.conv(ch[0], (p, p), strides=p, padding="VALID", dtype=dt, name="stem")(images.astype(dt))
        x = ResidualBlock(ch[0], cfg.groups, cfg.dtype, name="block_0")(x)
        pooled = [jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))]
        for i, c in enumerate(ch[1:], start=1):
            x = layers.conv(c, (3, 3), strides=2, dtype=dt, name=f"down_{i}")(nn.gelu(x))
            x = ResidualBlock(c, cfg.groups, cfg.dtype, name=f"block_{i}")(x)
            pooled += [jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))]
        x = nn.gelu(layers.GroupNorm(cfg.groups, name="norm_out")(x))
        # What is anywhere (mean and max over positions of every stage) and where it is (the last map).
        x = jnp.concatenate(pooled + [x.reshape(x.shape[0], -1)], axis=-1)
        x = nn.gelu(layers.dense(2 * cfg.embed_dim, axes.MLP, axes.EMBED, dtype=dt, name="head")(x))
        return layers.dense(cfg.embed_dim, axes.EMBED, axes.MLP, dtype=dt, name="proj")(x)


class TextTower(nn.Module):
    """(ids [B, L] int32, mask [B, L]) -> [B, embed_dim] (not normalised): the LLM's final normed
    states at the last real token and averaged over the real tokens, concatenated and projected."""
    config: AlignmentRewardConfig

    @nn.compact
    def __call__(self, ids, mask):
        cfg = self.config
        mask = mask.astype(bool)
        h = Qwen2Model(cfg.llm, name="llm")(ids, mask)
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        final = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        weights = mask.astype(h.dtype)[..., None]
        mean = jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return layers.dense(cfg.embed_dim, axes.EMBED, axes.MLP, dtype=layers.compute_dtype(cfg.dtype),
                            name="proj")(jnp.concatenate([final, mean], axis=-1))


def unit_normalise(x):
    """x [..., E] -> float32 rows of unit L2 norm."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)


class AlignmentReward(nn.Module):
    """Two towers and a learned temperature.

    ``__call__(images, ids, mask)`` -> (image embeddings [B, E], text embeddings [N, E], both unit
    float32, logit scale: a scalar); ``encode_image`` and ``encode_text`` run one tower;
    ``score(images, ids, mask)`` -> the cosine of each (image i, prompt i) [B].
    """
    config: AlignmentRewardConfig

    def setup(self):
        self.image = ImageTower(self.config.image_tower)
        self.text = TextTower(self.config)
        init = float(np.log(1.0 / self.config.init_temperature))
        self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
            lambda rng, shape: jnp.full(shape, init, jnp.float32), ()), ())

    def encode_image(self, images):
        return unit_normalise(self.image(images))

    def encode_text(self, ids, mask):
        return unit_normalise(self.text(ids, mask))

    def scale(self):
        return jnp.minimum(jnp.exp(self.logit_scale), MAX_LOGIT_SCALE)

    def score(self, images, ids, mask):
        return jnp.sum(self.encode_image(images) * self.encode_text(ids, mask), axis=-1)

    def __call__(self, images, ids, mask):
        return self.encode_image(images), self.encode_text(ids, mask), self.scale()


class AestheticReward(nn.Module):
    """The image tower and a scalar head: images [B, S, S, 3] in [-1, 1] (S = ``tower.image_size``)
    -> scores float32 [B] (unbounded; only differences mean something: trained by Bradley-Terry,
    ``sigmoid(score_a - score_b)`` is the model's probability that image a is the cleaner)."""
    config: AestheticRewardConfig

    @nn.compact
    def __call__(self, images):
        tower = self.config.tower
        h = nn.gelu(ImageTower(tower, name="image")(images))
        score = layers.dense(1, axes.EMBED, None, dtype=layers.compute_dtype(tower.dtype), name="score")(h)
        return score[:, 0].astype(jnp.float32)


def resize_images(images: jax.Array, size: int) -> jax.Array:
    """images [B, H, W, 3] -> [B, size, size, 3] (bilinear with antialiasing; differentiable);
    unchanged when already that size."""
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "bilinear", antialias=True)
