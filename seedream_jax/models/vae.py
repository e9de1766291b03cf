"""AutoencoderKL in the diffusers layout, NHWC.

Encoder: conv_in, down blocks of ResNet blocks (each but the last ending in a stride-2 conv
with diffusers' asymmetric (0, 1, 0, 1) padding), a mid block (ResNet, single-head
self-attention, ResNet), GroupNorm, SiLU, conv_out to 2 x latent channels (mean, logvar);
optional 1x1 quant convs; the decoder mirrors it with nearest-neighbour 2x upsampling.
Parameter names mirror diffusers' ``AutoencoderKL``.
"""
import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seedream_jax.models import attention, layers
from seedream_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Defaults: a Flux-style 16-channel, 8x-downsampling VAE. scaling_factor / shift_factor
    normalise latents for the DiT: z_model = (z - shift) * scale (the VAE stage fits them).
    attention_impl: the mid-block attention's kernel, see ``models.attention`` (None = XLA)."""
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 16
    norm_num_groups: int = 32
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: str = "float32"
    attention_impl: Optional[str] = None

    def __post_init__(self):
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} not divisible by norm_num_groups {self.norm_num_groups}")
        attention.check_implementation(self.attention_impl)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def scale_latents(z, cfg: VAEConfig):
    """VAE latents -> DiT space: (z - shift_factor) * scaling_factor."""
    return (z - cfg.shift_factor) * cfg.scaling_factor


def unscale_latents(z, cfg: VAEConfig):
    """DiT space -> VAE latents (inverse of ``scale_latents``)."""
    return z / cfg.scaling_factor + cfg.shift_factor


class ResnetBlock(nn.Module):
    out_channels: int
    groups: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        h = layers.conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv1")(
            nn.silu(layers.GroupNorm(self.groups, 1e-6, name="norm1")(x)))
        h = layers.conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv2")(
            nn.silu(layers.GroupNorm(self.groups, 1e-6, name="norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = layers.conv(self.out_channels, (1, 1), dtype=self.dtype, name="conv_shortcut")(x)
        return x + h


class AttentionBlock(nn.Module):
    """diffusers VAE mid-block attention: GroupNorm, single-head attention over H*W, residual."""
    groups: int
    dtype: jnp.dtype
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        t = layers.GroupNorm(self.groups, 1e-6, name="group_norm")(x).reshape(b, h * w, 1, c)
        proj = lambda n: layers.dense(c, axes.CONV_IN, axes.CONV_OUT, dtype=self.dtype, name=n)(t)
        out = attention.attend(proj("to_q"), proj("to_k"), proj("to_v"), impl=self.attention_impl)
        out = layers.dense(c, axes.CONV_IN, axes.CONV_OUT, dtype=self.dtype, name="to_out_0")(out.reshape(b, h * w, c))
        return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
    channels: int
    groups: int
    attention: bool
    dtype: jnp.dtype
    attention_impl: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        x = ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_0")(x)
        if self.attention:
            x = AttentionBlock(self.groups, self.dtype, self.attention_impl, name="attentions_0")(x)
        return ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
    channels: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # diffusers pads right/bottom only
        return layers.conv(self.channels, (3, 3), strides=2, padding="VALID", dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    channels: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest 2x
        return layers.conv(self.channels, (3, 3), dtype=self.dtype, name="conv")(x)


class DownBlock(nn.Module):
    channels: int
    num_layers: int
    groups: int
    downsample: bool
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_layers):
            x = ResnetBlock(self.channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        if self.downsample:
            x = Downsample(self.channels, self.dtype, name="downsamplers_0")(x)
        return x


class UpBlock(nn.Module):
    channels: int
    num_layers: int
    groups: int
    upsample: bool
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_layers):
            x = ResnetBlock(self.channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        if self.upsample:
            x = Upsample(self.channels, self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dt, g, chans = layers.compute_dtype(cfg.dtype), cfg.norm_num_groups, cfg.block_out_channels
        x = layers.conv(chans[0], (3, 3), dtype=dt, name="conv_in")(x.astype(dt))
        for i, c in enumerate(chans):
            x = DownBlock(c, cfg.layers_per_block, g, i < len(chans) - 1, dt, name=f"down_blocks_{i}")(x)
        x = MidBlock(chans[-1], g, cfg.mid_block_add_attention, dt, cfg.attention_impl, name="mid_block")(x)
        x = nn.silu(layers.GroupNorm(g, 1e-6, name="conv_norm_out")(x))
        return layers.conv(2 * cfg.latent_channels, (3, 3), dtype=dt, name="conv_out")(x)


class Decoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, z):
        cfg = self.config
        dt, g, chans = layers.compute_dtype(cfg.dtype), cfg.norm_num_groups, tuple(reversed(cfg.block_out_channels))
        x = layers.conv(chans[0], (3, 3), dtype=dt, name="conv_in")(z.astype(dt))
        x = MidBlock(chans[0], g, cfg.mid_block_add_attention, dt, cfg.attention_impl, name="mid_block")(x)
        for i, c in enumerate(chans):
            x = UpBlock(c, cfg.layers_per_block + 1, g, i < len(chans) - 1, dt, name=f"up_blocks_{i}")(x)
        x = nn.silu(layers.GroupNorm(g, 1e-6, name="conv_norm_out")(x))
        return layers.conv(cfg.out_channels, (3, 3), dtype=dt, name="conv_out")(x)


class AutoencoderKL(nn.Module):
    """Images [B, H, W, 3] in [-1, 1] <-> latents [B, H/f, W/f, latent_channels], f = downsample_factor."""
    config: VAEConfig

    def setup(self):
        cfg = self.config
        dt = layers.compute_dtype(cfg.dtype)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.use_quant_conv:
            self.quant_conv = layers.conv(2 * cfg.latent_channels, (1, 1), dtype=dt)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = layers.conv(cfg.latent_channels, (1, 1), dtype=dt)

    def encode(self, x) -> Tuple[jax.Array, jax.Array]:
        """-> (mean, logvar), each [B, H/f, W/f, C] float32; logvar clipped to [-30, 20]."""
        f = self.config.downsample_factor
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"image size {x.shape[1]}x{x.shape[2]} is not a multiple of the VAE factor {f}")
        moments = self.encoder(x)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z) -> jax.Array:
        """Latents [B, h, w, C] -> images [B, h f, w f, out_channels] float32."""
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z.astype(layers.compute_dtype(self.config.dtype)))
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x, rng: Optional[jax.Array] = None):
        """-> (reconstruction, mean, logvar); z is a posterior sample when ``rng`` is given, else the mean."""
        mean, logvar = self.encode(x)
        z = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
        return self.decode(z), mean, logvar
