"""MMDiT <-> diffusers ``FluxTransformer2DModel`` (no guidance embedding).

diffusers' Flux model takes already-packed p x p patches (its ``patch_size`` is 1 and its
``in_channels`` is latent channels x p^2; Flux itself uses p = 2); our MMDiT patchifies inside
with the same feature order (c, ph, pw), so the weights are identical. The folder's config does
not say p: give it as ``patch_size`` (the exported pipeline's ``seedream_pipeline.json`` records it). Position ids: pass ``flux_position_ids`` to diffusers as
``img_ids`` / ``txt_ids`` to reproduce our rotary embedding.

Conditioning latents (``MMDiTConfig.cond_channels`` = Cc > 0, the refiner): our MMDiT concatenates
cond_latents [B, h, w, Cc] to the latents [B, h, w, C] on channels before patchify, so its packed
tokens are [pack(latents) (C p^2 features); pack(cond_latents) (Cc p^2)]: Flux Fill's convention,
diffusers' ``FluxTransformer2DModel(in_channels=(C + Cc) p^2, out_channels=C p^2)`` fed
``torch.cat([pack_latents(x), pack_latents(cond)], -1)``.

Style adapter (``MMDiTConfig.style_tag_sizes``, ``models/style_adapter.py``): diffusers' Flux
cannot express it, so ``export_mmdit`` writes the base weights as a plain Flux transformer and
the adapter's as ``seedream_style_adapter.safetensors`` in the same folder (diffusers loads only
its own ``diffusion_pytorch_model*`` files and ignores it). Keys (PyTorch ``nn.Linear`` layout,
weight [out, in]; ``torch_pipeline.StyleAdapter`` is the module they load into)::

    tag_embedding.{a}.weight      [tag_sizes[a] + 1, D_t]   row 0 = attribute a absent
    mlp_in.weight / .bias         [D_t, D_t] / [D_t]
    mlp_out.weight / .bias        [D_t, D_t] / [D_t]
    style_value.{i}.weight / .bias  [D, D_t] / [D]          double block i (D = heads * head_dim)

``torch_pipeline.flux_velocity(..., style_tags=, style_adapter=)`` adds ``style_value.{i}(e)`` to
the output of ``transformer_blocks[i].attn.to_v`` (the image tokens' values) with forward hooks.
``load_mmdit`` reads the file back and takes the tag sizes and D_t from its shapes.
"""
import json
import os
import re
from typing import Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.interop import convert, safetensors_io
from seedream_jax.models import rope, style_adapter
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig

WEIGHTS_NAME = "diffusion_pytorch_model"
STYLE_WEIGHTS_NAME = "seedream_style_adapter"  # <transformer folder>/seedream_style_adapter.safetensors
STYLE_FILE = STYLE_WEIGHTS_NAME + ".safetensors"
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


def style_name_fn(path: Tuple[str, ...], ndim: int) -> convert.TorchParam:
    """Flax path of a style-adapter parameter -> its key in ``seedream_style_adapter.safetensors``."""
    leaf = path[-1]
    if len(path) == 2 and path[0] == "style_adapter" and leaf.startswith("tag_embedding_"):
        return convert.TorchParam(f"tag_embedding.{leaf[len('tag_embedding_'):]}.weight", convert.SAME)
    if len(path) == 3 and path[0] == "style_adapter" and path[1] in ("mlp_in", "mlp_out"):
        name = path[1]
    elif len(path) == 4 and path[0].startswith("transformer_blocks_") and path[1:3] == ("attn", "style_value"):
        name = f"style_value.{path[0][len('transformer_blocks_'):]}"
    else:
        raise ValueError(f"{'/'.join(path)} is not a style-adapter parameter")
    if leaf == "kernel":
        return convert.TorchParam(f"{name}.weight", convert.LINEAR)
    return convert.TorchParam(f"{name}.{leaf}", convert.SAME)


def style_config_from_file(path: str) -> Tuple[Tuple[int, ...], int]:
    """(style_tag_sizes, style_dim) from the shapes in a ``seedream_style_adapter.safetensors``."""
    tensors = safetensors_io.LazyTensors(path)
    n = sum(1 for k in tensors if re.fullmatch(r"tag_embedding\.\d+\.weight", k))
    if n == 0:
        raise ValueError(f"{path}: no tag_embedding.<a>.weight tensors: not a style-adapter file")
    shapes = [tensors.spec(f"tag_embedding.{a}.weight").shape for a in range(n)]
    return tuple(int(s[0]) - 1 for s in shapes), int(shapes[0][1])


def mmdit_config_from_diffusers(cfg: dict, patch_size: int = 2, **overrides) -> MMDiTConfig:
    """Our config from a diffusers Flux ``config.json`` dict whose tokens are packed
    ``patch_size`` x ``patch_size`` patches (2 for every Flux checkpoint); ``overrides`` set our
    own fields (rope_rule, text_ids, dtype, ...). in_channels = (C + Cc) p^2 and out_channels =
    C p^2 (None: equal to in_channels) give latent channels C and conditioning channels Cc."""
    if cfg.get("guidance_embeds"):
        raise ValueError("guidance-distilled Flux (guidance_embeds=True) is not supported: "
                         "our MMDiT uses true classifier-free guidance")
    if cfg.get("patch_size", 1) != 1:
        raise ValueError(f"expected diffusers patch_size 1 (packing outside the model), got {cfg['patch_size']}")
    in_ch = cfg["in_channels"]
    out_ch = cfg.get("out_channels") or in_ch
    p2 = patch_size * patch_size
    if in_ch % p2 or out_ch % p2 or out_ch > in_ch:
        raise ValueError(f"in_channels {in_ch} / out_channels {out_ch}: expected (latent + conditioning channels) "
                         f"and latent channels times {p2} (patch size {patch_size} squared), out <= in")
    heads, hd = cfg["num_attention_heads"], cfg["attention_head_dim"]
    return MMDiTConfig(in_channels=out_ch // p2, cond_channels=(in_ch - out_ch) // p2, patch_size=patch_size,
                       num_heads=heads, head_dim=hd,
                       num_double_blocks=cfg["num_layers"], num_single_blocks=cfg["num_single_layers"],
                       context_dim=cfg["joint_attention_dim"], pooled_dim=cfg["pooled_projection_dim"],
                       axes_dims=tuple(cfg.get("axes_dims_rope", (16, 56, 56))), **overrides)


def mmdit_to_diffusers_config(cfg: MMDiTConfig) -> dict:
    if cfg.mlp_ratio != 4.0:
        raise ValueError("diffusers Flux has mlp_ratio 4")
    if cfg.rope_theta != FLUX_ROPE_THETA or cfg.qk_norm_eps != FLUX_QK_NORM_EPS:
        raise ValueError(f"diffusers Flux fixes rope_theta {FLUX_ROPE_THETA} and qk_norm_eps {FLUX_QK_NORM_EPS}; "
                         f"this model has {cfg.rope_theta} and {cfg.qk_norm_eps}")
    p2 = cfg.patch_size ** 2
    return {"_class_name": "FluxTransformer2DModel", "patch_size": 1,
            "in_channels": (cfg.in_channels + cfg.cond_channels) * p2,
            "out_channels": cfg.in_channels * p2 if cfg.cond_channels else None,
            "num_layers": cfg.num_double_blocks, "num_single_layers": cfg.num_single_blocks,
            "attention_head_dim": cfg.head_dim, "num_attention_heads": cfg.num_heads,
            "joint_attention_dim": cfg.context_dim, "pooled_projection_dim": cfg.pooled_dim,
            "guidance_embeds": False, "axes_dims_rope": list(cfg.axes_dims)}


def abstract_params(cfg: MMDiTConfig, num_text_tokens: int = 4):
    side = 2 * cfg.patch_size
    lat = jnp.zeros((1, side, side, cfg.in_channels))
    cond = jnp.zeros((1, side, side, cfg.cond_channels)) if cfg.cond_channels else None
    return jax.eval_shape(lambda: MMDiT(cfg).init(
        jax.random.PRNGKey(0), lat, jnp.zeros((1,)), jnp.zeros((1, num_text_tokens, cfg.context_dim)),
        jnp.ones((1, num_text_tokens), bool), jnp.zeros((1, cfg.pooled_dim)), cond_latents=cond))["params"]


def _split(tree) -> Tuple[dict, dict]:
    """(base leaves, style-adapter leaves) of a parameter tree, as nested dicts."""
    flat = convert.flatten(tree)
    pick = lambda style: {p: v for p, v in flat.items() if style_adapter.is_style_path(p) == style}
    return flax.traverse_util.unflatten_dict(pick(False)), flax.traverse_util.unflatten_dict(pick(True))


def _base_weights(path: str) -> str:
    """What holds the Flux weights of a transformer folder: the folder when it has a shard index,
    else its ``diffusion_pytorch_model.safetensors`` (so the style file beside it is not mixed in)."""
    if any(f.endswith(safetensors_io.INDEX_SUFFIX) for f in os.listdir(path)):
        return path
    single = os.path.join(path, WEIGHTS_NAME + ".safetensors")
    return single if os.path.isfile(single) else path


def load_mmdit(path: str, **overrides):
    """(MMDiTConfig, params) from a diffusers Flux transformer folder (config.json + safetensors),
    with the style adapter when the folder has ``seedream_style_adapter.safetensors`` (its tag
    sizes and width from the file; a ``style_tag_sizes`` override must agree with it)."""
    style_path = os.path.join(path, STYLE_FILE)
    want = tuple(overrides.pop("style_tag_sizes", None) or ())
    if os.path.isfile(style_path):
        sizes, dim = style_config_from_file(style_path)
        if want and want != sizes:
            raise ValueError(f"{style_path} holds a style adapter with tag sizes {sizes}, expected {want}")
        if overrides.get("style_dim", dim) != dim:
            raise ValueError(f"{style_path} holds a style adapter of width {dim}, expected {overrides['style_dim']}")
        overrides.update(style_tag_sizes=sizes, style_dim=dim)
    elif want:
        raise FileNotFoundError(f"{path}: a style adapter with tag sizes {want} is expected but {STYLE_FILE} "
                                "is missing")
    with open(os.path.join(path, "config.json")) as f:
        cfg = mmdit_config_from_diffusers(json.load(f), **overrides)
    base, style = _split(abstract_params(cfg))
    params = convert.import_params(safetensors_io.LazyTensors(_base_weights(path)), base, flux_name_fn, source=path)
    if style:
        style = convert.import_params(safetensors_io.LazyTensors(style_path), style, style_name_fn, source=style_path)
        params = flax.traverse_util.unflatten_dict({**convert.flatten(params), **convert.flatten(style)})
    return cfg, params


def export_mmdit(params, cfg: MMDiTConfig, folder: str, dtype=np.float32, max_shard_bytes: int = 5 * 2**30) -> list:
    """Write ``config.json`` + safetensors loadable by ``FluxTransformer2DModel.from_pretrained``,
    plus ``seedream_style_adapter.safetensors`` when ``cfg`` has a style adapter (see the module
    docstring). ``params``: the MMDiT's tree or a ``convert.ParamSource``. Returns the files written."""
    source = convert.as_source(params)
    style = lambda p: style_adapter.is_style_path(p)
    has_style = any(style(p) for p in source.shapes())
    if has_style != bool(cfg.style_tag_sizes):
        raise ValueError(f"the parameters {'have' if has_style else 'have no'} style-adapter weights but the "
                         f"config's style_tag_sizes is {cfg.style_tag_sizes}")
    files = convert.write_component(source.select(lambda p: not style(p)), folder, name_fn=flux_name_fn,
                                    config=mmdit_to_diffusers_config(cfg), basename=WEIGHTS_NAME, dtype=dtype,
                                    max_shard_bytes=max_shard_bytes)
    style_path = os.path.join(folder, STYLE_FILE)
    if has_style:
        files += convert.write_component(source.select(style), folder, name_fn=style_name_fn,
                                         basename=STYLE_WEIGHTS_NAME, dtype=dtype, max_shard_bytes=2**62)
    elif os.path.exists(style_path):
        os.remove(style_path)  # a stale adapter from an earlier export would be read back
    return files


def flux_position_ids(cfg: MMDiTConfig, latent_h: int, latent_w: int, num_text_tokens: int):
    """(img_ids [N, 3], txt_ids [L, 3]) float32 that reproduce our embedding in diffusers."""
    gh, gw = latent_h // cfg.patch_size, latent_w // cfg.patch_size
    img = rope.image_position_ids(gh, gw, rule=cfg.rope_rule, base_grid=cfg.rope_base_grid)
    txt = rope.text_position_ids(num_text_tokens, gh, gw, scheme=cfg.text_ids, rule=cfg.rope_rule,
                                 base_grid=cfg.rope_base_grid)
    return img, txt
