"""The conditioner's own layers <-> one small safetensors file with a documented layout.

The conditioner (``models/conditioner.py``) is the LLM (exported as an HF Qwen2 model), ByT5
(an HF ``T5EncoderModel``) and its own layers, which have no upstream PyTorch class. Those are
written to ``conditioner.safetensors`` plus a ``config.json`` (``conditioner_layers_config``),
with the key layout ``LAYOUT`` below (also written into every pipeline export's README).
``interop/torch_pipeline.py`` (written into a pipeline export as ``seedream_torch.py``)
implements these layers in PyTorch; the parity tests compare it with ``models/conditioner.py``.
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
from seedream_jax.models.conditioner import Conditioner, ConditionerConfig
from seedream_jax.models.text_encoder import Qwen2Config, TextEncoderConfig

LAYOUT = """\
Keys (PyTorch nn.Linear layout, weight [out, in]; W = LLM width, Db = ByT5 width,
Hg = glyph_mapper_hidden, M = W * adapter_mlp_ratio, C = context_dim):

    glyph_mapper.norm.weight, .bias [Db]                          LayerNorm, eps 1e-5
    glyph_mapper.linear_1.weight [Hg, Db], .bias [Hg]             then exact (erf) GELU
    glyph_mapper.linear_2.weight [Hg, Hg], .bias [Hg]             then exact (erf) GELU
    glyph_mapper.linear_3.weight [W, Hg], .bias [W]
    adapter.layers.{i}.attn_norm.weight [W]                       RMSNorm eps 1e-6 ('transformer' adapter only)
    adapter.layers.{i}.{q,k,v,o}_proj.weight [W, W], .bias [W]    bidirectional, adapter_heads heads
    adapter.layers.{i}.mlp_norm.weight [W]                        RMSNorm eps 1e-6
    adapter.layers.{i}.fc1.weight [M, W], .bias [M]               then tanh GELU
    adapter.layers.{i}.fc2.weight [W, M], .bias [W]
    context_proj.weight [C, W], .bias [C]

glyph_mapper.* exists only with a ByT5 branch, adapter.* only with an adapter (config 'adapter').
Each adapter block: x += o_proj(attn(attn_norm(x))) over real tokens (a padded query sees itself),
then x += fc2(gelu(fc1(mlp_norm(x)))). Forward: LLM hidden states (padded rows zeroed) -> adapter
-> padded rows zeroed; glyph tokens = glyph_mapper(ByT5 last_hidden_state); tokens = [LLM; glyph],
mask = [llm_mask; byt5_mask & has_glyphs]; context = context_proj(tokens) with padded rows zeroed;
pooled = mean of context over the mask (0 for an empty prompt).
"""
WEIGHTS_NAME = "conditioner"
CLASS_NAME = "SeedreamConditionerLayers"
# Sub-trees of the conditioner that are exported elsewhere (HF models).
LLM_PATH, BYT5_PATH = ("text_encoder", "llm"), ("byt5",)


def is_own_layer(path: Tuple[str, ...]) -> bool:
    """True for a conditioner parameter path that belongs in ``conditioner.safetensors``."""
    return path[:2] != LLM_PATH and path[:1] != BYT5_PATH


def conditioner_layers_name_fn(path: Tuple[str, ...], ndim: int) -> convert.TorchParam:
    """Conditioner path (``text_encoder/adapter/layers_0/fc1/kernel``, ``glyph_mapper/norm/scale``)
    -> key (``adapter.layers.0.fc1.weight``, ``glyph_mapper.norm.weight``)."""
    if path[:2] == ("text_encoder", "adapter"):
        path = path[1:]
    tp = convert.default_torch_name(path, ndim)
    return convert.TorchParam(re.sub(r"^glyph_mapper\.linear\.(\d)\.", r"glyph_mapper.linear_\1.", tp.name), tp.layout)


def conditioner_layers_config(cfg: ConditionerConfig) -> dict:
    """``config.json`` of the conditioner layers: every size and option the PyTorch side needs."""
    te, width = cfg.text_encoder, cfg.text_encoder.llm.hidden_size
    return {"_class_name": CLASS_NAME, "llm_hidden_size": width,
            "llm_output_layer": te.output_layer, "llm_num_hidden_layers": te.llm.num_hidden_layers,
            "adapter": te.adapter, "adapter_layers": te.adapter_layers if te.adapter != "none" else 0,
            "adapter_heads": te.adapter_heads, "adapter_mlp_ratio": te.adapter_mlp_ratio,
            "adapter_norm_eps": 1e-6,
            "byt5_d_model": cfg.byt5.d_model if cfg.byt5 is not None else None,
            "glyph_mapper_hidden": (cfg.glyph_mapper_hidden or width) if cfg.byt5 is not None else None,
            "glyph_mapper_norm_eps": 1e-5, "context_dim": cfg.context_dim,
            "llm_max_length": cfg.llm_max_length, "byt5_max_length": cfg.byt5_max_length if cfg.byt5 else 0,
            "pooling": "masked_mean"}


def conditioner_config_from_json(d: dict, llm: Qwen2Config, byt5, **overrides) -> ConditionerConfig:
    """Our ``ConditionerConfig`` from a conditioner ``config.json`` and the LLM / ByT5 configs
    (None for no glyph branch); raises ValueError if they disagree on widths."""
    if d.get("_class_name") != CLASS_NAME:
        raise ValueError(f"conditioner config: _class_name {d.get('_class_name')!r}, expected {CLASS_NAME!r}")
    if d["llm_hidden_size"] != llm.hidden_size or d["llm_num_hidden_layers"] != llm.num_hidden_layers:
        raise ValueError(f"conditioner config was written for an LLM of width {d['llm_hidden_size']} and "
                         f"{d['llm_num_hidden_layers']} layers; the text encoder has {llm.hidden_size} and "
                         f"{llm.num_hidden_layers}")
    if (d["byt5_d_model"] is None) != (byt5 is None) or (byt5 is not None and byt5.d_model != d["byt5_d_model"]):
        raise ValueError(f"conditioner config expects a ByT5 of width {d['byt5_d_model']}, got "
                         f"{None if byt5 is None else byt5.d_model}")
    adapter = d["adapter"]
    te = TextEncoderConfig(llm=llm, output_layer=d["llm_output_layer"], adapter=adapter,
                           adapter_layers=max(1, d["adapter_layers"]), adapter_heads=d["adapter_heads"],
                           adapter_mlp_ratio=d["adapter_mlp_ratio"])
    hidden = d["glyph_mapper_hidden"] or 0
    return ConditionerConfig(text_encoder=te, byt5=byt5, context_dim=d["context_dim"],
                             glyph_mapper_hidden=0 if hidden == llm.hidden_size else hidden,
                             llm_max_length=d["llm_max_length"],
                             byt5_max_length=d["byt5_max_length"] if byt5 is not None else 32, **overrides)


def abstract_params(cfg: ConditionerConfig):
    """The whole conditioner's parameter tree as ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
    b, n = 1, 2
    ids, mask = jnp.zeros((b, n), jnp.int32), jnp.ones((b, n), bool)
    glyph = (ids, mask, jnp.ones((b,), bool)) if cfg.byt5 is not None else ()
    return jax.eval_shape(lambda: Conditioner(cfg).init(jax.random.PRNGKey(0), ids, mask, *glyph))["params"]


def own_abstract_params(cfg: ConditionerConfig):
    """Only the conditioner's own layers (no LLM, no ByT5), nested as in the conditioner tree."""
    flat = convert.flatten(abstract_params(cfg))
    return flax.traverse_util.unflatten_dict({p: v for p, v in flat.items() if is_own_layer(p)})


def export_conditioner_layers(params, cfg: ConditionerConfig, folder: str, dtype=np.float32) -> list:
    """Write ``config.json`` + ``conditioner.safetensors`` from the conditioner's parameters.

    ``params``: the whole conditioner tree (or ``convert.ParamSource``); the LLM and ByT5 leaves
    are skipped. Returns the files written.
    """
    source = convert.as_source(params).select(is_own_layer)
    convert.check_shapes(source, own_abstract_params(cfg), where=f"{source.describe} (conditioner layers)")
    return convert.write_component(source, folder, name_fn=conditioner_layers_name_fn,
                                   config=conditioner_layers_config(cfg), basename=WEIGHTS_NAME, dtype=dtype)


def load_conditioner_layers(folder: str, cfg: ConditionerConfig) -> dict:
    """The conditioner's own layers ({'glyph_mapper', 'context_proj', 'text_encoder': {'adapter'}},
    float32) from an exported folder; every key and shape is checked against ``cfg``."""
    with open(os.path.join(folder, "config.json")) as f:
        written = json.load(f)
    expected = conditioner_layers_config(cfg)
    differ = {k: (written.get(k), v) for k, v in expected.items() if written.get(k) != v}
    if differ:
        raise ValueError(f"{folder}/config.json does not match the conditioner config: "
                         + ", ".join(f"{k}: file {a!r} vs config {b!r}" for k, (a, b) in differ.items()))
    return convert.import_params(safetensors_io.LazyTensors(folder), own_abstract_params(cfg),
                                 conditioner_layers_name_fn, source=folder)
