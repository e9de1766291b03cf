"""Our AutoencoderKL <-> diffusers ``AutoencoderKL`` (DownEncoderBlock2D / UpDecoderBlock2D layout)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.interop import convert, safetensors_io
from seedream_jax.models.vae import AutoencoderKL, VAEConfig

WEIGHTS_NAME = "diffusion_pytorch_model"
vae_name_fn = convert.default_torch_name


def vae_config_from_diffusers(cfg: dict, **overrides) -> VAEConfig:
    """Our config from a diffusers AutoencoderKL ``config.json``."""
    downs = set(cfg.get("down_block_types", ["DownEncoderBlock2D"]))
    ups = set(cfg.get("up_block_types", ["UpDecoderBlock2D"]))
    if downs != {"DownEncoderBlock2D"} or ups != {"UpDecoderBlock2D"}:
        raise ValueError(f"unsupported block types {sorted(downs | ups)}: only DownEncoderBlock2D/UpDecoderBlock2D")
    if cfg.get("act_fn", "silu") != "silu":
        raise ValueError(f"unsupported act_fn {cfg['act_fn']!r}")
    shift = cfg.get("shift_factor")
    return VAEConfig(in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
                     block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg.get("layers_per_block", 1),
                     latent_channels=cfg.get("latent_channels", 4), norm_num_groups=cfg.get("norm_num_groups", 32),
                     scaling_factor=cfg.get("scaling_factor", 0.18215), shift_factor=0.0 if shift is None else shift,
                     use_quant_conv=cfg.get("use_quant_conv", True), use_post_quant_conv=cfg.get("use_post_quant_conv", True),
                     mid_block_add_attention=cfg.get("mid_block_add_attention", True), **overrides)


def vae_to_diffusers_config(cfg: VAEConfig) -> dict:
    n = len(cfg.block_out_channels)
    return {"_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
            "act_fn": "silu", "latent_channels": cfg.latent_channels, "norm_num_groups": cfg.norm_num_groups,
            "scaling_factor": cfg.scaling_factor, "shift_factor": cfg.shift_factor,
            "use_quant_conv": cfg.use_quant_conv, "use_post_quant_conv": cfg.use_post_quant_conv,
            "mid_block_add_attention": cfg.mid_block_add_attention}


def abstract_params(cfg: VAEConfig):
    f = cfg.downsample_factor
    return jax.eval_shape(lambda: AutoencoderKL(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, f, f, cfg.in_channels))))["params"]


def load_vae(path: str, **overrides):
    """(VAEConfig, params) from a local diffusers AutoencoderKL folder; fp32, bf16 or fp16 weights."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = vae_config_from_diffusers(json.load(f), **overrides)
    return cfg, convert.import_params(safetensors_io.LazyTensors(path), abstract_params(cfg), vae_name_fn, source=path)


def export_vae(params, cfg: VAEConfig, folder: str, dtype=np.float32, max_shard_bytes: int = 5 * 2**30) -> list:
    """Write ``config.json`` + safetensors that ``diffusers.AutoencoderKL.from_pretrained`` loads.
    ``params``: the VAE's tree or a ``convert.ParamSource``. Returns the files written."""
    return convert.write_component(params, folder, name_fn=vae_name_fn, config=vae_to_diffusers_config(cfg),
                                   basename=WEIGHTS_NAME, dtype=dtype, max_shard_bytes=max_shard_bytes)
