"""Our ByT5Encoder <-> HF ``T5EncoderModel`` (and the encoder half of ``T5ForConditionalGeneration``).

Names map one to one (``block_3/layer_1/DenseReluDense/wi_0/kernel`` <->
``encoder.block.3.layer.1.DenseReluDense.wi_0.weight``, transposed); HF ties
``encoder.embed_tokens.weight`` to ``shared.weight``, so only ``shared`` is read and written.
"""
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
# T5 v1.1 layouts whose encoder is ours: mT5 shares it; umT5 (a relative bias in every block) does not.
_MODEL_TYPES = ("t5", "mt5")
# feed_forward_proj values meaning "gated, tanh-approximated GELU" to transformers.
_GATED_GELU = ("gated-gelu", "gated-gelu_new")
_REQUIRED = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")


def t5_name_fn(path: Tuple[str, ...], ndim: int) -> convert.TorchParam:
    """Flax path -> HF T5 key: the default mapping, keeping ``wi_0``/``wi_1`` (not ``wi.0``)."""
    tp = convert.default_torch_name(path, ndim)
    return convert.TorchParam(re.sub(r"\.wi\.([01])\.", r".wi_\1.", tp.name), tp.layout)


def t5_config_from_hf(cfg: dict, **overrides) -> ByT5Config:
    """Our config from an HF T5 ``config.json`` dict; ``overrides`` set dtype / attention_impl.

    Raises ValueError unless it describes a T5 v1.1 (ByT5 / mT5) encoder: model_type 't5' or
    'mt5', gated-GELU feed-forward, and every size key present.
    """
    model_type = cfg.get("model_type", "t5")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"T5 config: model_type {model_type!r} is not supported; expected one of "
                         f"{_MODEL_TYPES} (a T5 v1.1 encoder with one shared relative-position bias)")
    ff = cfg.get("feed_forward_proj", "relu")
    if ff not in _GATED_GELU:
        raise ValueError(f"T5 config: feed_forward_proj {ff!r} is not supported; only the T5 v1.1 / ByT5 "
                         f"gated-GELU layout ({' or '.join(map(repr, _GATED_GELU))}) is implemented")
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"T5 config lacks the keys {missing}")
    return ByT5Config(**{k: cfg[k] for k in _REQUIRED},
                      relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
                      relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128),
                      layer_norm_epsilon=cfg.get("layer_norm_epsilon", 1e-6), **overrides)


def t5_to_hf_config(cfg: ByT5Config) -> dict:
    """An HF ``T5Config`` dict (``config.json``) for ``T5EncoderModel`` with our sizes."""
    return {"architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff, "num_layers": cfg.num_layers,
            "num_decoder_layers": cfg.num_layers, "num_heads": cfg.num_heads,
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "feed_forward_proj": "gated-gelu",
            "is_encoder_decoder": True, "tie_word_embeddings": False, "dropout_rate": 0.0,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def abstract_params(cfg: ByT5Config):
    """The encoder's parameter tree as boxed ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(lambda: ByT5Encoder(cfg).init(jax.random.PRNGKey(0), ids, jnp.ones((1, 2), bool)))["params"]


def _not_encoder(key: str) -> bool:
    """Keys of a T5 checkpoint the encoder ignores: the decoder, the LM head, the tied embedding copy."""
    return key.startswith(("decoder.", "lm_head.")) or key == "encoder.embed_tokens.weight"


def load_byt5(path: str, **overrides) -> Tuple[ByT5Config, dict]:
    """(ByT5Config, float32 params) from a local HF folder (``config.json`` + safetensors, single
    or sharded) holding a ``T5EncoderModel`` or ``T5ForConditionalGeneration``; fp32/bf16/fp16.

    Raises ValueError for a config that is not a T5 v1.1 encoder and
    ``convert.CheckpointMismatchError`` listing missing / unexpected / mis-shaped keys.
    """
    config_path = os.path.join(path, "config.json")
    with open(config_path) as f:
        hf_cfg = json.load(f)
    try:
        cfg = t5_config_from_hf(hf_cfg, **overrides)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from e
    tensors = safetensors_io.LazyTensors(path)
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:  # tied pair saved once
        tensors = tensors.renamed(lambda k: "shared.weight" if k == "encoder.embed_tokens.weight" else k)
    params = convert.import_params(tensors, abstract_params(cfg), t5_name_fn, source=path,
                                   allow_unexpected=_not_encoder)
    return cfg, params


def export_byt5(params, cfg: ByT5Config, folder: str, dtype=np.float32, max_shard_bytes: int = 5 * 2**30) -> list:
    """Write ``config.json`` + ``model.safetensors`` (tensors cast to ``dtype``) that
    ``transformers.T5EncoderModel.from_pretrained(folder)`` loads with no missing or unexpected
    keys. ``params``: the encoder's tree or a ``convert.ParamSource``. Returns the files written."""
    config = {**t5_to_hf_config(cfg), "torch_dtype": convert.export_dtype(dtype).name}
    return convert.write_component(params, folder, name_fn=t5_name_fn, config=config, basename=WEIGHTS_NAME,
                                   dtype=dtype, max_shard_bytes=max_shard_bytes)
