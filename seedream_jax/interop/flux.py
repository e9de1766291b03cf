"""MMDiT <-> diffusers ``FluxTransformer2DModel`` (no guidance embedding).

diffusers' Flux model takes already-packed p x p patches (its ``patch_size`` is 1 and its
``in_channels`` is latent channels x p^2; Flux itself uses p = 2); our MMDiT patchifies inside
with the same feature order (c, ph, pw), so the weights are identical. The folder's config does
not say p: give it as ``patch_size`` (the exported pipeline's ``seedream_pipeline.json`` records it). Position ids: pass ``flux_position_ids`` to diffusers as
``img_ids`` / ``txt_ids`` to reproduce our rotary embedding.
"""
import json
import os
import re
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.interop import convert, safetensors_io
from seedream_jax.models import rope
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig

WEIGHTS_NAME = "diffusion_pytorch_model"
FLUX_ROPE_THETA, FLUX_QK_NORM_EPS = 10000.0, 1e-6  # fixed in diffusers' FluxTransformer2DModel
_RENAMES = [
    (r"time_text_embed_(timestep|text)_embedder", r"time_text_embed.\1_embedder"),
    (r"_embedder\.linear\.([12])\.", r"_embedder.linear_\1."),
    (r"\.net_0_proj\.", ".net.0.proj."),
    (r"\.attn_(to_[qkv]|norm_[qk])\.", r".attn.\1."),
]


def flux_name_fn(path: Tuple[str, ...], ndim: int) -> convert.TorchParam:
    tp = convert.default_torch_name(path, ndim)
    name = tp.name
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    return convert.TorchParam(name, tp.layout)


def mmdit_config_from_diffusers(cfg: dict, patch_size: int = 2, **overrides) -> MMDiTConfig:
    """Our config from a diffusers Flux ``config.json`` dict whose tokens are packed
    ``patch_size`` x ``patch_size`` patches (2 for every Flux checkpoint); ``overrides`` set our
    own fields (rope_rule, text_ids, dtype, ...)."""
    if cfg.get("guidance_embeds"):
        raise ValueError("guidance-distilled Flux (guidance_embeds=True) is not supported: "
                         "our MMDiT uses true classifier-free guidance")
    if cfg.get("patch_size", 1) != 1:
        raise ValueError(f"expected diffusers patch_size 1 (packing outside the model), got {cfg['patch_size']}")
    in_ch = cfg["in_channels"]
    out_ch = cfg.get("out_channels") or in_ch
    p2 = patch_size * patch_size
    if in_ch % p2 or out_ch != in_ch:
        raise ValueError(f"in_channels {in_ch} / out_channels {out_ch}: expected equal and {p2} (patch size "
                         f"{patch_size} squared) x latent channels")
    heads, hd = cfg["num_attention_heads"], cfg["attention_head_dim"]
    return MMDiTConfig(in_channels=in_ch // p2, patch_size=patch_size, num_heads=heads, head_dim=hd,
                       num_double_blocks=cfg["num_layers"], num_single_blocks=cfg["num_single_layers"],
                       context_dim=cfg["joint_attention_dim"], pooled_dim=cfg["pooled_projection_dim"],
                       axes_dims=tuple(cfg.get("axes_dims_rope", (16, 56, 56))), **overrides)


def mmdit_to_diffusers_config(cfg: MMDiTConfig) -> dict:
    if cfg.mlp_ratio != 4.0:
        raise ValueError("diffusers Flux has mlp_ratio 4")
    if cfg.rope_theta != FLUX_ROPE_THETA or cfg.qk_norm_eps != FLUX_QK_NORM_EPS:
        raise ValueError(f"diffusers Flux fixes rope_theta {FLUX_ROPE_THETA} and qk_norm_eps {FLUX_QK_NORM_EPS}; "
                         f"this model has {cfg.rope_theta} and {cfg.qk_norm_eps}")
    return {"_class_name": "FluxTransformer2DModel", "patch_size": 1,
            "in_channels": cfg.in_channels * cfg.patch_size ** 2,
            "out_channels": None, "num_layers": cfg.num_double_blocks, "num_single_layers": cfg.num_single_blocks,
            "attention_head_dim": cfg.head_dim, "num_attention_heads": cfg.num_heads,
            "joint_attention_dim": cfg.context_dim, "pooled_projection_dim": cfg.pooled_dim,
            "guidance_embeds": False, "axes_dims_rope": list(cfg.axes_dims)}


def abstract_params(cfg: MMDiTConfig, num_text_tokens: int = 4):
    lat = jnp.zeros((1, 2 * cfg.patch_size, 2 * cfg.patch_size, cfg.in_channels))
    return jax.eval_shape(lambda: MMDiT(cfg).init(
        jax.random.PRNGKey(0), lat, jnp.zeros((1,)), jnp.zeros((1, num_text_tokens, cfg.context_dim)),
        jnp.ones((1, num_text_tokens), bool), jnp.zeros((1, cfg.pooled_dim))))["params"]


def load_mmdit(path: str, **overrides):
    """(MMDiTConfig, params) from a diffusers Flux transformer folder (config.json + safetensors)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = mmdit_config_from_diffusers(json.load(f), **overrides)
    params = convert.import_params(safetensors_io.LazyTensors(path), abstract_params(cfg), flux_name_fn, source=path)
    return cfg, params


def export_mmdit(params, cfg: MMDiTConfig, folder: str, dtype=np.float32, max_shard_bytes: int = 5 * 2**30) -> list:
    """Write ``config.json`` + safetensors loadable by ``FluxTransformer2DModel.from_pretrained``.
    ``params``: the MMDiT's tree or a ``convert.ParamSource``. Returns the files written."""
    return convert.write_component(params, folder, name_fn=flux_name_fn, config=mmdit_to_diffusers_config(cfg),
                                   basename=WEIGHTS_NAME, dtype=dtype, max_shard_bytes=max_shard_bytes)


def flux_position_ids(cfg: MMDiTConfig, latent_h: int, latent_w: int, num_text_tokens: int):
    """(img_ids [N, 3], txt_ids [L, 3]) float32 that reproduce our embedding in diffusers."""
    gh, gw = latent_h // cfg.patch_size, latent_w // cfg.patch_size
    img = rope.image_position_ids(gh, gw, rule=cfg.rope_rule, base_grid=cfg.rope_base_grid)
    txt = rope.text_position_ids(num_text_tokens, gh, gw, scheme=cfg.text_ids, rule=cfg.rope_rule,
                                 base_grid=cfg.rope_base_grid)
    return img, txt
