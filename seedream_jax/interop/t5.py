"""Our ByT5Encoder <-> HF ``T5EncoderModel`` (and the encoder half of ``T5ForConditionalGeneration``)."""
import json
import os
import re
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.interop import convert, safetensors_io
from seedream_jax.models.byt5 import ByT5Config, ByT5Encoder

WEIGHTS_NAME = "model"


def t5_name_fn(path: Tuple[str, ...], ndim: int) -> convert.TorchParam:
    tp = convert.default_torch_name(path, ndim)
    return convert.TorchParam(re.sub(r"\.wi\.([01])\.", r".wi_\1.", tp.name), tp.layout)


def t5_config_from_hf(cfg: dict, **overrides) -> ByT5Config:
    """Our config from an HF T5 ``config.json``; only the T5 v1.1 gated-GELU layout is supported."""
    ff = cfg.get("feed_forward_proj", "relu")
    if ff != "gated-gelu":
        raise ValueError(f"feed_forward_proj {ff!r}: only T5 v1.1 / ByT5 'gated-gelu' encoders are supported")
    return ByT5Config(vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], d_kv=cfg["d_kv"], d_ff=cfg["d_ff"],
                      num_layers=cfg["num_layers"], num_heads=cfg["num_heads"],
                      relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
                      relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
                      layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-6), **overrides)


def t5_to_hf_config(cfg: ByT5Config) -> dict:
    return {"architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff, "num_layers": cfg.num_layers,
            "num_decoder_layers": cfg.num_layers, "num_heads": cfg.num_heads,
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "feed_forward_proj": "gated-gelu",
            "is_encoder_decoder": True, "tie_word_embeddings": False, "dropout_rate": 0.0,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def abstract_params(cfg: ByT5Config):
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(lambda: ByT5Encoder(cfg).init(jax.random.PRNGKey(0), ids, jnp.ones((1, 2), bool)))["params"]


def _encoder_only(key: str) -> bool:
    """Keys of a full T5 checkpoint that the encoder does not use."""
    return key.startswith(("decoder.", "lm_head.")) or key == "encoder.embed_tokens.weight"


def load_byt5(path: str, **overrides):
    """(ByT5Config, params) from a local HF T5EncoderModel or T5ForConditionalGeneration folder."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = t5_config_from_hf(json.load(f), **overrides)
    tensors = safetensors_io.load_tensors(path)
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]  # tied embedding saved once
    params = convert.import_params(tensors, abstract_params(cfg), t5_name_fn, source=path,
                                   allow_unexpected=_encoder_only)
    return cfg, params


def export_byt5(params, cfg: ByT5Config, folder: str, dtype=np.float32) -> list:
    """Write ``config.json`` + safetensors that ``T5EncoderModel.from_pretrained`` loads."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(t5_to_hf_config(cfg), f, indent=2)
    tensors = dict(convert.export_params(params, t5_name_fn, dtype=dtype))
    tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"].copy()
    return safetensors_io.save_tensors(tensors, folder, basename=WEIGHTS_NAME)
