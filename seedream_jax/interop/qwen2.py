"""Our Qwen2Model <-> HF transformers ``Qwen2Model`` / ``Qwen2ForCausalLM`` checkpoints."""
import json
import os
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.interop import convert, safetensors_io
from seedream_jax.models.text_encoder import Qwen2Config, Qwen2Model

WEIGHTS_NAME = "model"


def qwen2_name_fn(path: Tuple[str, ...], ndim: int) -> convert.TorchParam:
    return convert.default_torch_name(path, ndim)


def _rope_theta(cfg: dict) -> float:
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if params.get("rope_type", params.get("type", "default")) not in ("default", None):
        raise ValueError(f"unsupported RoPE scaling {params}: only the default RoPE is implemented")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def qwen2_config_from_hf(cfg: dict, **overrides) -> Qwen2Config:
    """Our config from an HF Qwen2 ``config.json`` dict.

    Sliding-window attention (``use_sliding_window``) is refused: text prompts are far shorter
    than any Qwen2 window, but a checkpoint that needs it would silently differ.
    """
    if cfg.get("model_type", "qwen2") != "qwen2":
        raise ValueError(f"expected model_type 'qwen2', got {cfg.get('model_type')!r}")
    if cfg.get("use_sliding_window"):
        raise ValueError("Qwen2 sliding-window attention is not supported (use_sliding_window=true)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r}")
    return Qwen2Config(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                       intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
                       num_attention_heads=cfg["num_attention_heads"],
                       num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                       rope_theta=_rope_theta(cfg), rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), **overrides)


def qwen2_to_hf_config(cfg: Qwen2Config) -> dict:
    return {"architectures": ["Qwen2Model"], "model_type": "qwen2", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rms_norm_eps": cfg.rms_norm_eps, "hidden_act": "silu", "max_position_embeddings": 32768,
            "tie_word_embeddings": False, "use_sliding_window": False, "torch_dtype": "float32"}


def abstract_params(cfg: Qwen2Config):
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(lambda: Qwen2Model(cfg).init(jax.random.PRNGKey(0), ids, jnp.ones((1, 2), bool)))["params"]


def load_qwen2(path: str, **overrides):
    """(Qwen2Config, params) from a local HF folder holding a Qwen2Model or Qwen2ForCausalLM
    checkpoint (``model.`` prefix stripped, ``lm_head`` ignored); fp32, bf16 or fp16."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = qwen2_config_from_hf(json.load(f), **overrides)
    tensors = safetensors_io.load_tensors(path)
    if any(k.startswith("model.") for k in tensors):
        tensors = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()}
    params = convert.import_params(tensors, abstract_params(cfg), qwen2_name_fn, source=path,
                                   allow_unexpected=lambda k: k == "lm_head.weight")
    return cfg, params


def export_qwen2(params, cfg: Qwen2Config, folder: str, dtype=np.float32, max_shard_bytes: int = 5 * 2**30) -> list:
    """Write ``config.json`` + safetensors (sharded with an index above ``max_shard_bytes``)
    that ``transformers.Qwen2Model.from_pretrained`` loads."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(qwen2_to_hf_config(cfg), f, indent=2)
    return safetensors_io.save_tensors(dict(convert.export_params(params, qwen2_name_fn, dtype=dtype)), folder,
                                       basename=WEIGHTS_NAME, max_shard_bytes=max_shard_bytes)
