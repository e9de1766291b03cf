"""MMDiT: the Seedream 2.0 / SD3 / Flux-style multimodal diffusion transformer.

Double-stream blocks keep separate weights for text and image (QKV and output projections,
MLPs, adaLN-Zero modulation) and attend jointly over [text; image]; optional single-stream
blocks (the Flux layout) then process the concatenation with shared weights. QK RMSNorm,
p x p patches (2 by default), sinusoidal timestep embedding + pooled text vector driving adaLN,
final adaLN and linear. Parameter names and math follow diffusers' ``FluxTransformer2DModel``
(without guidance embedding), so import/export is renames and transposes.

adaLN-Zero (DiT, Peebles & Xie 2023): every modulation linear (``norm1``, ``norm1_context``,
``norm``, ``norm_out``) and the final ``proj_out`` start at zero, so at initialisation every
gate is 0 (each block passes its residual stream through unchanged) and the model outputs
exactly 0. Loaded weights (Flux / diffusers) replace the initial values and are unaffected.

Optional VMix-style aesthetic adapter (``style_tag_sizes``, ``models/style_adapter.py``): style tags
-> a tag vector e; each double block adds a zero-initialised projection of e to the image tokens'
attention values. No diffusers counterpart: the export writes it beside the transformer and
``interop/torch_pipeline.flux_velocity`` applies it with forward hooks on ``attn.to_v``.
"""
import dataclasses
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seedream_jax.models import attention, layers, rope, style_adapter
from seedream_jax.parallel import axes

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
BLOCK_KINDS = ("double", "single")
IMAGE_POS_EMBEDS = ("none", "sincos")


def block_remat_policies(spec: str) -> dict:
    """Parse ``remat_policy``: one policy for every block ("dots") or one per block kind
    ("double=dots,single=full"; an unnamed kind gets "none") -> {"double": name, "single": name}."""
    if "=" not in spec:
        chosen = {kind: spec for kind in BLOCK_KINDS}
    else:
        chosen = {kind: "none" for kind in BLOCK_KINDS}
        for item in spec.split(","):
            kind, _, policy = item.partition("=")
            if kind.strip() not in BLOCK_KINDS:
                raise ValueError(f"remat_policy {spec!r}: block kind {kind.strip()!r} not in {BLOCK_KINDS}")
            chosen[kind.strip()] = policy.strip()
    for policy in chosen.values():
        if policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {spec!r}: policy {policy!r} not in {sorted(REMAT_POLICIES)}")
    return chosen


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
    """in_channels: latent channels; hidden size = num_heads * head_dim; axes_dims must sum to
    head_dim; context_dim / pooled_dim: widths of the incoming text tokens / pooled vector;
    attention_impl: see ``models.attention`` (None/"xla", "cudnn", "splash" on TPU);
    remat_policy: "none" | "full" | "dots" for every block, or per kind ("double=dots,single=full");
    image_pos_embed: "none" (Flux: image tokens know their place only through RoPE, which is
    relative between image tokens) or "sincos" (a fixed 2D sin-cos embedding of the image ids,
    ``rope.sincos_position_embedding``, added to the image tokens after ``x_embedder``, as SD3 and
    DiT do: absolute position for every token; no parameters);
    style_tag_sizes: number of values of each style-tag attribute; () = no adapter (no parameters,
    the model is exactly the adapter-less one). Otherwise the VMix-style aesthetic adapter of
    ``models/style_adapter.py``, with style_tags s int [B, A] (0 = attribute absent, k = value k-1):
    e = W_2 silu(W_1 sum_a E_a[s_a] + b_1) + b_2 (width ``style_dim``, parameters ``style_adapter/``),
    and in each double block i the image tokens' values v_img <- v_img + (W_v,i e + c_i)[:, None]
    (per head; ``transformer_blocks_i/attn/style_value``, zero-initialised, so at initialisation the
    output equals the adapter-less model's for any tags);
    style_dim: width D_t of the tag embeddings and the tag encoder's MLP;
    cond_channels: channels of a conditioning latent (the refiner's upsampled low-resolution
    latent, ``stages/refiner.py``) concatenated to the noisy latent on the channel axis before
    patchify, Flux Fill's convention: ``x_embedder`` then has (in_channels + cond_channels) p^2
    input rows and the output keeps in_channels. 0 = no conditioning input (the base model)."""
    in_channels: int = 16
    patch_size: int = 2
    num_heads: int = 8
    head_dim: int = 128
    num_double_blocks: int = 6
    num_single_blocks: int = 6
    mlp_ratio: float = 4.0
    context_dim: int = 1024
    pooled_dim: int = 1024
    axes_dims: Tuple[int, ...] = (16, 56, 56)
    rope_theta: float = 10000.0
    rope_rule: str = "scaled"
    rope_base_grid: int = 32
    text_ids: str = "diagonal"
    image_pos_embed: str = "none"
    qk_norm_eps: float = 1e-6
    dtype: str = "float32"
    attention_impl: Optional[str] = None
    remat_policy: str = "none"
    style_tag_sizes: Tuple[int, ...] = ()
    style_dim: int = 256
    cond_channels: int = 0

    def __post_init__(self):
        object.__setattr__(self, "style_tag_sizes", tuple(int(n) for n in self.style_tag_sizes))
        if any(n < 1 for n in self.style_tag_sizes):
            raise ValueError(f"style_tag_sizes {self.style_tag_sizes}: every attribute needs >= 1 value")
        if self.style_dim < 1:
            raise ValueError(f"style_dim must be >= 1, got {self.style_dim}")
        if self.cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {self.cond_channels}")
        if sum(self.axes_dims) != self.head_dim:
            raise ValueError(f"axes_dims {self.axes_dims} must sum to head_dim {self.head_dim}")
        block_remat_policies(self.remat_policy)
        if self.image_pos_embed not in IMAGE_POS_EMBEDS:
            raise ValueError(f"image_pos_embed must be one of {IMAGE_POS_EMBEDS}, got {self.image_pos_embed!r}")
        attention.check_implementation(self.attention_impl)

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """diffusers ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``: [B] -> [B, dim] = [cos, sin]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)(W/p), C p p], features ordered (c, ph, pw) as diffusers packs them."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: jax.Array, h: int, w: int, p: int) -> jax.Array:
    """Inverse of ``patchify``: [B, N, C p p] -> [B, H, W, C] for a latent of size H x W."""
    b, _, f = x.shape
    c = f // (p * p)
    x = x.reshape(b, h // p, w // p, c, p, p).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h, w, c)


class MLPEmbedder(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers TimestepEmbedding / PixArtAlphaTextProjection)."""
    features: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        x = layers.dense(self.features, axes.EMBED, axes.MLP, dtype=self.dtype, name="linear_1")(x)
        return layers.dense(self.features, axes.MLP, axes.EMBED, dtype=self.dtype, name="linear_2")(nn.silu(x))


class Modulation(nn.Module):
    """adaLN-Zero: ``linear(silu(temb))`` split into ``n`` [B, 1, D] chunks; the linear starts at
    zero, so every shift, scale and gate is 0 at initialisation."""
    dim: int
    n: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, temb):
        out = layers.dense(self.n * self.dim, axes.EMBED, axes.MLP, dtype=self.dtype, name="linear",
                           kernel_init=nn.initializers.zeros)(nn.silu(temb))
        return [c[:, None, :] for c in jnp.split(out, self.n, axis=-1)]


def _modulate(x, shift, scale):
    """LayerNorm (no affine, eps 1e-6, fp32) then x * (1 + scale) + shift."""
    return layers.LayerNorm(eps=1e-6, use_affine=False)(x) * (1 + scale) + shift


def _heads(x, head_dim):
    return x.reshape(x.shape[:-1] + (-1, head_dim))


def _attention(q, k, v, key_mask, impl):
    """q, k, v [B, T, H, D]; key_mask [B, T] bool -> [B, T, H*D]."""
    out = attention.attend(q, k, v, mask=key_mask[:, None, None, :], impl=impl)
    return out.reshape(out.shape[:2] + (-1,))


class DoubleStreamBlock(nn.Module):
    """diffusers FluxTransformerBlock: per-modality weights, joint attention over [text; image]."""
    config: MMDiTConfig

    @nn.compact
    def __call__(self, img, txt, temb, cos, sin, key_mask, style=None):
        cfg = self.config
        dt, d = layers.compute_dtype(cfg.dtype), cfg.hidden_size
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = Modulation(d, 6, dt, name="norm1")(temb)
        c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = Modulation(
            d, 6, dt, name="norm1_context")(temb)
        img_n = _modulate(img, shift_msa, scale_msa)
        txt_n = _modulate(txt, c_shift_msa, c_scale_msa)
        attn = JointAttention(cfg, name="attn")
        img_attn, txt_attn = attn(img_n, txt_n, cos, sin, key_mask, style)
        img = img + gate_msa * img_attn
        img = img + gate_mlp * Mlp(d, int(d * cfg.mlp_ratio), dt, name="ff")(_modulate(img, shift_mlp, scale_mlp))
        txt = txt + c_gate_msa * txt_attn
        txt = txt + c_gate_mlp * Mlp(d, int(d * cfg.mlp_ratio), dt, name="ff_context")(
            _modulate(txt, c_shift_mlp, c_scale_mlp))
        return img.astype(dt), txt.astype(dt)


class Mlp(nn.Module):
    """diffusers FeedForward('gelu-approximate'): net_0/proj -> GELU(tanh) -> net_2."""
    dim: int
    hidden: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        h = layers.dense(self.hidden, axes.EMBED, axes.MLP, dtype=self.dtype, name="net_0_proj")(x)
        return layers.dense(self.dim, axes.MLP, axes.EMBED, dtype=self.dtype, name="net_2")(nn.gelu(h, approximate=True))


class JointAttention(nn.Module):
    """FluxAttention with added (text) projections: returns (image out, text out) after to_out_0 / to_add_out.
    ``style``: the style adapter's tag vector e [B, D_t] (or None): the image values get
    ``style_value(e)`` per head (``style_adapter.mix_values``)."""
    config: MMDiTConfig

    @nn.compact
    def __call__(self, img, txt, cos, sin, key_mask, style=None):
        cfg = self.config
        dt, d, hd, eps = layers.compute_dtype(cfg.dtype), cfg.hidden_size, cfg.head_dim, cfg.qk_norm_eps
        proj = lambda name: layers.dense(d, axes.EMBED, axes.HEADS, dtype=dt, name=name)
        q, k, v = (_heads(proj(n)(img), hd) for n in ("to_q", "to_k", "to_v"))
        cq, ck, cv = (_heads(proj(n)(txt), hd) for n in ("add_q_proj", "add_k_proj", "add_v_proj"))
        if style is not None:
            v = style_adapter.mix_values(v, style_adapter.style_value(d, dt)(style))
        q, k = layers.RMSNorm(eps, name="norm_q")(q), layers.RMSNorm(eps, name="norm_k")(k)
        cq, ck = layers.RMSNorm(eps, name="norm_added_q")(cq), layers.RMSNorm(eps, name="norm_added_k")(ck)
        q = rope.apply_rope(jnp.concatenate([cq, q], axis=1), cos, sin)
        k = rope.apply_rope(jnp.concatenate([ck, k], axis=1), cos, sin)
        out = _attention(q, k, jnp.concatenate([cv, v], axis=1), key_mask, cfg.attention_impl).astype(dt)
        n_txt = txt.shape[1]
        txt_out = layers.dense(d, axes.HEADS, axes.EMBED, dtype=dt, name="to_add_out")(out[:, :n_txt])
        img_out = layers.dense(d, axes.HEADS, axes.EMBED, dtype=dt, name="to_out_0")(out[:, n_txt:])
        return img_out, txt_out


class SingleStreamBlock(nn.Module):
    """diffusers FluxSingleTransformerBlock over x = [text; image]: parallel attention and MLP,
    ``proj_out`` over [attn | mlp], gated residual."""
    config: MMDiTConfig

    @nn.compact
    def __call__(self, x, temb, cos, sin, key_mask):
        cfg = self.config
        dt, d, hd, eps = layers.compute_dtype(cfg.dtype), cfg.hidden_size, cfg.head_dim, cfg.qk_norm_eps
        shift, scale, gate = Modulation(d, 3, dt, name="norm")(temb)
        xn = _modulate(x, shift, scale)
        mlp = nn.gelu(layers.dense(int(d * cfg.mlp_ratio), axes.EMBED, axes.MLP, dtype=dt, name="proj_mlp")(xn),
                      approximate=True)
        q, k, v = (_heads(layers.dense(d, axes.EMBED, axes.HEADS, dtype=dt, name=f"attn_{n}")(xn), hd)
                   for n in ("to_q", "to_k", "to_v"))
        q, k = layers.RMSNorm(eps, name="attn_norm_q")(q), layers.RMSNorm(eps, name="attn_norm_k")(k)
        q, k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)
        attn = _attention(q, k, v, key_mask, cfg.attention_impl).astype(dt)
        out = layers.dense(d, axes.MLP, axes.EMBED, dtype=dt, name="proj_out")(jnp.concatenate([attn, mlp], axis=-1))
        return (x + gate * out).astype(dt)


def _with_condition(latents, cond_latents, cond_channels: int):
    """latents [B, h, w, C] ++ cond_latents [B, h, w, cond_channels] on the channel axis ->
    [B, h, w, C + cond_channels]; with cond_channels = 0 the latents unchanged (cond_latents must
    then be None)."""
    if cond_channels == 0:
        if cond_latents is not None:
            raise ValueError(f"cond_latents {tuple(cond_latents.shape)} given to a model with cond_channels=0")
        return latents
    expected = latents.shape[:3] + (cond_channels,)
    if cond_latents is None:
        raise ValueError(f"this model has cond_channels={cond_channels}: cond_latents {expected} is required")
    if tuple(cond_latents.shape) != tuple(expected):
        raise ValueError(f"cond_latents shape {tuple(cond_latents.shape)} != expected {expected} "
                         f"(batch, latent height, width of the latents, cond_channels)")
    return jnp.concatenate([latents, cond_latents.astype(latents.dtype)], axis=-1)


def _maybe_remat(block_cls, policy_name: str):
    if policy_name == "none":
        return block_cls
    return nn.remat(block_cls, policy=REMAT_POLICIES[policy_name], prevent_cse=False)


class MMDiT(nn.Module):
    """Velocity prediction: latents [B, h, w, C] (NHWC), timesteps [B] in [0, 1] (1 = noise),
    context [B, L, context_dim], context_mask [B, L] bool, pooled [B, pooled_dim]
    -> velocity [B, h, w, C] (float32). Position ids default to the config's rules; pass
    img_ids [N, 3] / [B, N, 3] and txt_ids [L, 3] / [B, L, 3] to override. style_tags int [B, A]
    (A = len(style_tag_sizes); 0 = absent, k = value k-1; None = all absent) drive the style
    adapter; giving them to a model without one is an error. cond_latents [B, h, w, cond_channels]
    (required iff ``cond_channels`` > 0) are concatenated to the latents before patchify; the
    output keeps the latents' C channels."""
    config: MMDiTConfig

    @nn.compact
    def __call__(self, latents, timesteps, context, context_mask, pooled, img_ids=None, txt_ids=None,
                 style_tags=None, cond_latents=None):
        cfg = self.config
        dt, d, p = layers.compute_dtype(cfg.dtype), cfg.hidden_size, cfg.patch_size
        b, h, w, c = latents.shape
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {p}")
        x = _with_condition(latents, cond_latents, cfg.cond_channels)
        gh, gw = h // p, w // p
        if img_ids is None:
            img_ids = rope.image_position_ids(gh, gw, rule=cfg.rope_rule, base_grid=cfg.rope_base_grid)
        if txt_ids is None:
            txt_ids = rope.text_position_ids(context.shape[1], gh, gw, scheme=cfg.text_ids, rule=cfg.rope_rule,
                                             base_grid=cfg.rope_base_grid)
        img_ids, txt_ids = jnp.asarray(img_ids), jnp.asarray(txt_ids)
        if img_ids.ndim != txt_ids.ndim:
            img_ids = jnp.broadcast_to(img_ids, (b,) + img_ids.shape[-2:])
            txt_ids = jnp.broadcast_to(txt_ids, (b,) + txt_ids.shape[-2:])
        cos, sin = rope.rope_frequencies(jnp.concatenate([txt_ids, img_ids], axis=-2), cfg.axes_dims, cfg.rope_theta)

        img = layers.dense(d, None, axes.EMBED, dtype=dt, name="x_embedder")(patchify(x.astype(dt), p))
        if cfg.image_pos_embed == "sincos":
            img = img + rope.sincos_position_embedding(img_ids, d).astype(dt)
        img = layers.constrain_tokens(img)
        txt = layers.constrain_tokens(
            layers.dense(d, axes.MLP, axes.EMBED, dtype=dt, name="context_embedder")(context.astype(dt)))
        temb = MLPEmbedder(d, dt, name="time_text_embed_timestep_embedder")(
            timestep_embedding(timesteps * 1000.0).astype(dt))
        temb = temb + MLPEmbedder(d, dt, name="time_text_embed_text_embedder")(pooled.astype(dt))
        key_mask = jnp.concatenate([context_mask.astype(bool), jnp.ones((b, gh * gw), bool)], axis=1)
        style = None
        if cfg.style_tag_sizes or style_tags is not None:
            tags = style_adapter.check_tags(style_tags, cfg.style_tag_sizes, b)
            style = style_adapter.StyleTagEncoder(cfg.style_tag_sizes, cfg.style_dim, dt, name="style_adapter")(tags)

        remat = block_remat_policies(cfg.remat_policy)
        double = _maybe_remat(DoubleStreamBlock, remat["double"])
        for i in range(cfg.num_double_blocks):
            img, txt = double(cfg, name=f"transformer_blocks_{i}")(img, txt, temb, cos, sin, key_mask, style)
            img, txt = layers.constrain_tokens(img), layers.constrain_tokens(txt)
        single = _maybe_remat(SingleStreamBlock, remat["single"])
        x = layers.constrain_tokens(jnp.concatenate([txt, img], axis=1))
        for i in range(cfg.num_single_blocks):
            x = layers.constrain_tokens(single(cfg, name=f"single_transformer_blocks_{i}")(x, temb, cos, sin, key_mask))
        img = layers.constrain_tokens(x[:, txt.shape[1]:])

        scale, shift = Modulation(d, 2, dt, name="norm_out")(temb)
        img = layers.LayerNorm(eps=1e-6, use_affine=False)(img) * (1 + scale) + shift
        out = layers.dense(p * p * c, axes.EMBED, None, dtype=dt, name="proj_out",
                           kernel_init=nn.initializers.zeros)(img)
        return unpatchify(out.astype(jnp.float32), h, w, p)
