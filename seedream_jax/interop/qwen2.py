"""Our ``Qwen2Model`` <-> HF transformers ``Qwen2Model`` / ``Qwen2ForCausalLM`` checkpoints.

Parameter names are HF's with ``layers_{i}`` <-> ``layers.{i}`` and ``kernel`` (transposed) /
``scale`` / ``embedding`` <-> ``weight``, so ``convert.default_torch_name`` is the whole table.
A ``Qwen2ForCausalLM`` checkpoint is the same keys under ``model.`` plus ``lm_head.weight``
(absent when the head is tied to the embedding): our ``models.causal_lm.Qwen2ForCausalLM``
has exactly that tree (``model/...``, ``lm_head/kernel``), so the same table maps it whole
(``load_causal_lm`` / ``export_causal_lm``).
"""
import json
import os
from typing import Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.interop import convert, safetensors_io
from seedream_jax.models.causal_lm import CausalLMConfig, Qwen2ForCausalLM
from seedream_jax.models.text_encoder import Qwen2Config, Qwen2Model

WEIGHTS_NAME = "model"
CAUSAL_LM_PREFIX = "model."
LM_HEAD = "lm_head.weight"


def qwen2_name_fn(path: Tuple[str, ...], ndim: int) -> convert.TorchParam:
    """Flax path (e.g. ``('layers_0', 'self_attn', 'q_proj', 'kernel')``) -> HF ``Qwen2Model`` key."""
    return convert.default_torch_name(path, ndim)


def _rope_theta(cfg: dict) -> float:
    """theta from ``rope_parameters`` (transformers >= 5) or ``rope_theta`` (older); only default RoPE."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(f"unsupported RoPE scaling {params}: only the default RoPE is implemented")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _sliding_layers(cfg: dict) -> list:
    """Indices of layers that HF runs with sliding-window attention (its ``layer_types`` rule)."""
    if "layer_types" in cfg and cfg["layer_types"] is not None:
        return [i for i, t in enumerate(cfg["layer_types"]) if t == "sliding_attention"]
    if not cfg.get("use_sliding_window") or cfg.get("sliding_window") is None:
        return []
    first = cfg.get("max_window_layers", 28)
    return list(range(first, cfg["num_hidden_layers"]))


def qwen2_config_from_hf(cfg: dict, **overrides) -> Qwen2Config:
    """Our ``Qwen2Config`` from an HF Qwen2 / Qwen2.5 ``config.json`` dict.

    ``overrides`` set our own fields (``dtype``, ``attention_impl``). Refused, with a ValueError:
    another ``model_type``, an activation other than SiLU, a ``head_dim`` other than
    hidden/heads, RoPE scaling (YaRN etc.), and sliding-window attention on any layer: we only
    implement full causal attention, and a checkpoint whose layers slide would silently differ
    on prompts longer than the window. Released Qwen2/2.5 checkpoints set
    ``use_sliding_window: false``, so every layer is full attention and they load.
    """
    if cfg.get("model_type", "qwen2") != "qwen2":
        raise ValueError(f"expected model_type 'qwen2', got {cfg.get('model_type')!r}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r}: Qwen2 uses 'silu'")
    heads = cfg["num_attention_heads"]
    if cfg.get("head_dim") not in (None, cfg["hidden_size"] // heads):
        raise ValueError(f"head_dim {cfg['head_dim']} != hidden_size / num_attention_heads "
                         f"({cfg['hidden_size']} / {heads}) is not supported")
    sliding = _sliding_layers(cfg)
    if sliding:
        raise ValueError(f"sliding-window attention (window {cfg.get('sliding_window')}) on layers {sliding} "
                         "is not supported: only full causal attention is implemented")
    return Qwen2Config(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                       intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
                       num_attention_heads=heads, num_key_value_heads=cfg.get("num_key_value_heads", heads),
                       rope_theta=_rope_theta(cfg), rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), **overrides)


def qwen2_to_hf_config(cfg: Qwen2Config, dtype: str = "float32", *, causal_lm: bool = False,
                       tie_word_embeddings: bool = False) -> dict:
    """HF ``config.json`` dict for a ``Qwen2Model`` (or ``Qwen2ForCausalLM``) of ``cfg`` whose
    weights are stored in ``dtype``.

    Both the transformers 5 (``rope_parameters``, ``dtype``, ``layer_types``) and the older
    (``rope_theta``, ``torch_dtype``) spellings are written, so either generation reads it.
    """
    return {"architectures": ["Qwen2ForCausalLM" if causal_lm else "Qwen2Model"], "model_type": "qwen2",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rms_norm_eps": cfg.rms_norm_eps, "hidden_act": "silu", "max_position_embeddings": 32768,
            "tie_word_embeddings": tie_word_embeddings, "use_sliding_window": False, "sliding_window": None,
            "layer_types": ["full_attention"] * cfg.num_hidden_layers, "attention_dropout": 0.0,
            "dtype": dtype, "torch_dtype": dtype}


def abstract_params(cfg: Qwen2Config):
    """The parameter tree of ``Qwen2Model(cfg)`` as ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return jax.eval_shape(lambda: Qwen2Model(cfg).init(jax.random.PRNGKey(0), ids, jnp.ones((1, 2), bool)))["params"]


def load_qwen2(path: str, **overrides):
    """(Qwen2Config, params) from a local HF folder: ``config.json`` + safetensors (single or sharded).

    Accepts ``Qwen2Model`` keys or ``Qwen2ForCausalLM`` keys (``model.`` prefix stripped,
    ``lm_head.weight`` ignored); fp32, bf16 or fp16 tensors become float32 NumPy arrays, read
    one tensor at a time. ``overrides`` set our config's own fields (``dtype``, ``attention_impl``).
    Raises ``convert.CheckpointMismatchError`` listing missing, unexpected and mis-shaped keys.
    """
    with open(os.path.join(path, "config.json")) as f:
        cfg = qwen2_config_from_hf(json.load(f), **overrides)
    tensors = safetensors_io.LazyTensors(
        path, rename=lambda k: k[len(CAUSAL_LM_PREFIX):] if k.startswith(CAUSAL_LM_PREFIX) else k)
    params = convert.import_params(tensors, abstract_params(cfg), qwen2_name_fn, source=path,
                                   allow_unexpected=lambda k: k == LM_HEAD)
    return cfg, params


def export_qwen2(params, cfg: Qwen2Config, folder: str, dtype=np.float32, max_shard_bytes: int = 5 * 2**30, *,
                 causal_lm: bool = False, lm_head_from: Optional[str] = None) -> list:
    """Write ``config.json`` + safetensors (sharded with an index above ``max_shard_bytes``) that
    ``transformers.Qwen2Model.from_pretrained(folder)`` loads with no missing or unexpected keys.

    ``params``: the LLM's parameter tree or a ``convert.ParamSource`` (streamed tensor by tensor).
    ``dtype``: stored dtype, ``np.float32``, ``np.float16`` or ``ml_dtypes.bfloat16`` (or a name).
    ``causal_lm``: write a ``Qwen2ForCausalLM`` instead (keys under ``model.``). Our encoder has
    no LM head: by default the head is tied to the input embedding (``tie_word_embeddings``),
    exact for tied LLMs such as Qwen2.5-0.5B/1.5B/3B; ``lm_head_from`` (an HF Qwen2ForCausalLM
    folder, e.g. the checkpoint the LLM was imported from) copies its ``lm_head.weight`` instead.
    Returns the list of files written.
    """
    dt = convert.export_dtype(dtype)
    extra = []
    if lm_head_from is not None:
        if not causal_lm:
            raise ValueError("lm_head_from only applies to a Qwen2ForCausalLM export (causal_lm=True)")
        source = safetensors_io.LazyTensors(lm_head_from)
        if LM_HEAD not in source:
            raise KeyError(f"{lm_head_from} has no {LM_HEAD!r} (a tied-embedding model: export without lm_head_from)")
        spec = source.spec(LM_HEAD)
        if spec.shape != (cfg.vocab_size, cfg.hidden_size):
            raise ValueError(f"{lm_head_from}: {LM_HEAD} has shape {spec.shape}, expected "
                             f"{(cfg.vocab_size, cfg.hidden_size)}")
        extra.append(convert.ExtraTensor(safetensors_io.TensorSpec(LM_HEAD, spec.shape, dt),
                                         lambda: source[LM_HEAD]))
    config = qwen2_to_hf_config(cfg, dt.name, causal_lm=causal_lm, tie_word_embeddings=causal_lm and not extra)
    return convert.write_component(params, folder, name_fn=qwen2_name_fn, config=config, basename=WEIGHTS_NAME,
                                   dtype=dt, key_prefix=CAUSAL_LM_PREFIX if causal_lm else "", extra=extra,
                                   max_shard_bytes=max_shard_bytes)


# ----------------------------------------------------------------------------- causal LM

def causal_lm_config_from_hf(cfg: dict, **overrides) -> CausalLMConfig:
    """Our ``CausalLMConfig`` from an HF ``Qwen2ForCausalLM`` ``config.json`` dict (HF's default
    ``tie_word_embeddings`` is False); ``overrides`` as ``qwen2_config_from_hf``."""
    return CausalLMConfig(qwen2_config_from_hf(cfg, **overrides),
                          tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))


def causal_lm_abstract_params(config: CausalLMConfig):
    """The parameter tree of ``Qwen2ForCausalLM(config)`` as ``jax.ShapeDtypeStruct`` leaves."""
    ids = jnp.zeros((1, 2), jnp.int32)
    model = Qwen2ForCausalLM(config)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, jnp.ones((1, 2), bool)))["params"]


def causal_lm_params_from_tensors(tensors: Mapping[str, np.ndarray], config: CausalLMConfig, *,
                                  source: str = "<state dict>"):
    """Our ``Qwen2ForCausalLM`` parameters (float32 NumPy) from an HF ``Qwen2ForCausalLM`` state
    dict (name -> NumPy array, e.g. ``{k: v.numpy() for k, v in model.state_dict().items()}``).

    A tied ``config`` ignores a stored ``lm_head.weight`` (HF keeps the tied copy in its state dict);
    an untied one requires it. Raises ``convert.CheckpointMismatchError`` listing every missing,
    unexpected and mis-shaped key.
    """
    return convert.import_params(tensors, causal_lm_abstract_params(config), convert.default_torch_name,
                                 source=source, allow_unexpected=lambda k: config.tie_word_embeddings and k == LM_HEAD)


def load_causal_lm(path: str, **overrides) -> Tuple[CausalLMConfig, dict]:
    """(CausalLMConfig, params) from a local HF ``Qwen2ForCausalLM`` folder (``config.json`` +
    safetensors, single or sharded, fp32 / bf16 / fp16), tied or untied as its config says.
    ``overrides`` set our config's own fields (``dtype``, ``attention_impl``)."""
    with open(os.path.join(path, "config.json")) as f:
        config = causal_lm_config_from_hf(json.load(f), **overrides)
    return config, causal_lm_params_from_tensors(safetensors_io.LazyTensors(path), config, source=path)


def export_causal_lm(params, config: CausalLMConfig, folder: str, dtype=np.float32,
                     max_shard_bytes: int = 5 * 2**30) -> list:
    """Write ``config.json`` + safetensors that ``transformers.Qwen2ForCausalLM.from_pretrained(folder)``
    loads with no missing or unexpected keys; ``params`` is our ``Qwen2ForCausalLM`` tree or a
    ``convert.ParamSource`` over one (streamed tensor by tensor). A tied config writes no
    ``lm_head.weight`` and ``tie_word_embeddings: true``. ``dtype`` as ``export_qwen2``.
    Returns the list of files written."""
    dt = convert.export_dtype(dtype)
    hf_config = qwen2_to_hf_config(config.llm, dt.name, causal_lm=True,
                                   tie_word_embeddings=config.tie_word_embeddings)
    source = convert.as_source(params)
    convert.check_shapes(source, causal_lm_abstract_params(config), where=source.describe)
    return convert.write_component(source, folder, name_fn=convert.default_torch_name, config=hf_config,
                                   basename=WEIGHTS_NAME, dtype=dt, max_shard_bytes=max_shard_bytes)
