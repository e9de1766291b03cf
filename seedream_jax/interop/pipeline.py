"""Whole-pipeline export to, and import from, one folder of HF transformers / diffusers components.

Export layout (``export_pipeline``; every weight file is safetensors):

    <out>/
      README.md                  how to assemble the components in PyTorch (written per export)
      seedream_pipeline.json     sizes, RoPE rule, time-grid shift, sampling defaults, provenance
      seedream_torch.py          a copy of interop/torch_pipeline.py (torch-only reference pipeline)
      text_encoder/              transformers Qwen2Model (or Qwen2ForCausalLM): config.json + model*.safetensors
      byt5/                      transformers T5EncoderModel
      conditioner/               config.json + conditioner.safetensors (layout: interop/conditioner_layers.py)
      transformer/               diffusers FluxTransformer2DModel (+ seedream_style_adapter.safetensors
                                 with a style adapter: see interop/flux.py)
      vae/                       diffusers AutoencoderKL (fitted scaling_factor / shift_factor)
      tokenizer/                 the LLM tokenizer files
      refiner/                   (with a refiner) diffusers FluxTransformer2DModel whose in_channels hold
                                 the noisy and the conditioning latent (see ``RefinerExport``)

Parameters come from any ``convert.ParamSource`` shaped like the pretrain stage's tree
{'conditioner': {'text_encoder': {'llm', 'adapter'?}, 'byt5'?, 'glyph_mapper'?, 'context_proj'},
'mmdit', 'vae'}; ``export_checkpoint`` builds it from a stage's Orbax checkpoint and a run config
and streams tensor by tensor. ``import_pipeline`` reads such a folder back into configs and a
parameter tree (every key and shape checked); ``import_components`` does the same for any
subset of single HF / diffusers folders; ``import_refiner`` reads the refiner back.

The refiner (``stages/refiner.py``, ``sampling/generate.Refiner``) is a second MMDiT with
``cond_channels`` = the VAE's latent channels; it shares the base's conditioner and VAE, so the
export holds only its transformer, plus its sampler settings in ``seedream_pipeline.json``
(``refiner``: scale, num_steps, guidance_scale, strength, its time-shift schedule, position-id
rules).
``seedream_torch.SeedreamPipeline.refine`` runs it.
"""
import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Dict, Optional, Sequence

import numpy as np

from seedream_jax.interop import (autoencoder_kl, conditioner_layers, convert, flux, orbax_io, qwen2, t5,
                                  torch_pipeline)
from seedream_jax.models.conditioner import ConditionerConfig
from seedream_jax.models.mmdit import MMDiTConfig
from seedream_jax.models.vae import VAEConfig

PIPELINE_FILE = torch_pipeline.PIPELINE_FILE
TORCH_FILE = "seedream_torch.py"
COMPONENTS = ("text_encoder", "byt5", "conditioner", "transformer", "vae")
# component -> (path of its parameters in the pipeline tree, folder name); the conditioner
# entry holds only the conditioner's own layers (glyph_mapper, context_proj, text_encoder/adapter).
_WHERE = {"text_encoder": ("conditioner/text_encoder/llm", "text_encoder"), "byt5": ("conditioner/byt5", "byt5"),
          "conditioner": ("conditioner", "conditioner"), "transformer": ("mmdit", "transformer"),
          "vae": ("vae", "vae")}
REFINER_FOLDER = "refiner"
DEFAULT_SCHEDULE = dict(base_tokens=256, max_tokens=4096, base_shift=0.5, max_shift=1.15)
# Files of an HF tokenizer folder that are copied (never code).
_TOKENIZER_SUFFIXES = (".json", ".txt", ".model", ".vocab", ".tiktoken", ".merges")


@dataclasses.dataclass
class RefinerExport:
    """A refiner to export beside the base pipeline: ``params`` the refiner MMDiT's tree (or a
    ``convert.ParamSource`` of it), ``mmdit_cfg`` its config (``cond_channels`` = the VAE's latent
    channels), ``scale`` (output side / input side), its sampler's ``num_steps``,
    ``guidance_scale`` and ``strength`` (Euler steps: the PyTorch pipeline's solver), ``schedule`` (its
    ``schedules.resolution_shift`` keywords, applied at the output size) and ``provenance`` (where
    the weights come from, recorded with it)."""
    params: Any
    mmdit_cfg: MMDiTConfig
    scale: int = 2
    num_steps: int = 20
    guidance_scale: float = 1.0
    strength: float = 1.0
    schedule: Optional[dict] = None
    provenance: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TokenizerFiles:
    """The LLM tokenizer to ship: ``kind`` 'sentencepiece' (``path`` = the .model file) or 'hf'
    (``path`` = a folder saved with ``save_pretrained``)."""
    kind: str
    path: str


def _components_present(source: convert.ParamSource, conditioner_cfg: ConditionerConfig) -> list:
    tops = {p[0] for p in source.shapes()}
    out = []
    if "conditioner" in tops:
        out += ["text_encoder"] + (["byt5"] if conditioner_cfg.byt5 is not None else []) + ["conditioner"]
    out += [c for c, top in (("transformer", "mmdit"), ("vae", "vae")) if top in tops]
    return out


def _check_components(source, components, conditioner_cfg, mmdit_cfg, vae_cfg):
    """Every requested component present with exactly the shapes of the configs (before writing)."""
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; expected some of {list(COMPONENTS)}")
    if "byt5" in components and conditioner_cfg.byt5 is None:
        raise ValueError("component 'byt5' requested but the model config has no ByT5 branch (model.byt5 is None)")
    te = conditioner_cfg.text_encoder
    if "text_encoder" in components and te.output_layer not in (-1, te.llm.num_hidden_layers):
        raise ValueError(f"text_encoder: output_layer {te.output_layer} < num_hidden_layers "
                         f"{te.llm.num_hidden_layers}: the model holds only the first {te.output_layer} layers and "
                         "no final norm, which is not a complete HF Qwen2 model; export the other components "
                         "(--components) or use output_layer -1")
    checks = {"conditioner": lambda: conditioner_layers.abstract_params(conditioner_cfg),
              "mmdit": lambda: flux.abstract_params(mmdit_cfg), "vae": lambda: autoencoder_kl.abstract_params(vae_cfg)}
    for top in sorted({_WHERE[c][0].split("/")[0] for c in components}):
        convert.check_shapes(source.scoped(top), checks[top](), where=f"{source.describe}: {top}")


def copy_tokenizer(tok: TokenizerFiles, out_dir: str) -> dict:
    """Copy the tokenizer files to ``out_dir/tokenizer``; returns the ``tokenizer`` entry of the
    export's JSON ({'kind', 'path'} relative to ``out_dir``), which ``torch_pipeline.LLMTokenizer`` reads."""
    dest = os.path.join(out_dir, "tokenizer")
    os.makedirs(dest, exist_ok=True)
    if tok.kind == "sentencepiece":
        if not os.path.isfile(tok.path):
            raise FileNotFoundError(f"SentencePiece model {tok.path} does not exist")
        shutil.copyfile(tok.path, os.path.join(dest, os.path.basename(tok.path)))
        vocab = os.path.splitext(tok.path)[0] + ".vocab"
        if os.path.isfile(vocab):
            shutil.copyfile(vocab, os.path.join(dest, os.path.basename(vocab)))
        return {"kind": "sentencepiece", "path": f"tokenizer/{os.path.basename(tok.path)}"}
    if tok.kind == "hf":
        if not os.path.isdir(tok.path):
            raise FileNotFoundError(f"HF tokenizer folder {tok.path} does not exist")
        skipped = []
        for f in sorted(os.listdir(tok.path)):
            src = os.path.join(tok.path, f)
            if os.path.isfile(src) and f.endswith(_TOKENIZER_SUFFIXES):
                shutil.copyfile(src, os.path.join(dest, f))
            elif os.path.isfile(src):
                skipped.append(f)
        if skipped:
            logging.warning("tokenizer: not copied (not tokenizer data): %s", skipped)
        return {"kind": "hf", "path": "tokenizer"}
    raise ValueError(f"tokenizer kind must be 'sentencepiece' or 'hf', got {tok.kind!r}")


def style_vocab_entry(mmdit_cfg: MMDiTConfig, vocab) -> Optional[list]:
    """``vocab`` ({attribute: [value names]} in attribute order, [(attribute, [values])], the JSON
    form itself, or None) as the JSON list [{'attribute', 'values'}], checked against ``style_tag_sizes``."""
    if vocab is None:
        return None
    pairs = (list(vocab.items()) if isinstance(vocab, dict) else
             [(p["attribute"], p["values"]) if isinstance(p, dict) else tuple(p) for p in vocab])
    sizes = tuple(len(v) for _, v in pairs)
    if sizes != mmdit_cfg.style_tag_sizes:
        raise ValueError(f"style vocabulary {dict(pairs)} has {sizes} values per attribute; the model's "
                         f"style_tag_sizes is {mmdit_cfg.style_tag_sizes}")
    return [{"attribute": str(a), "values": [str(x) for x in v]} for a, v in pairs]


def style_adapter_config(mmdit_cfg: MMDiTConfig, vocab=None) -> Optional[dict]:
    """The ``style_adapter`` entry of ``seedream_pipeline.json`` (None without an adapter)."""
    if not mmdit_cfg.style_tag_sizes:
        if vocab:
            raise ValueError("a style vocabulary was given but the model has no style adapter")
        return None
    return {"file": f"{_WHERE['transformer'][1]}/{flux.STYLE_FILE}", "tag_sizes": list(mmdit_cfg.style_tag_sizes),
            "dim": mmdit_cfg.style_dim, "vocab": style_vocab_entry(mmdit_cfg, vocab),
            "formula": "e = mlp_out(silu(mlp_in(sum_a tag_embedding[a][tags[:, a]]))); in double block i the "
                       "image tokens' values (output of attn.to_v) += style_value[i](e); tag 0 = absent"}


def rope_config(mmdit_cfg: MMDiTConfig) -> dict:
    """The ``rope`` entry of ``seedream_pipeline.json``: our position-id rules diffusers does not store."""
    return {"rule": mmdit_cfg.rope_rule, "base_grid": mmdit_cfg.rope_base_grid, "text_ids": mmdit_cfg.text_ids,
            "image_pos_embed": mmdit_cfg.image_pos_embed, "theta": mmdit_cfg.rope_theta,
            "axes_dims": list(mmdit_cfg.axes_dims)}


def check_refiner(refiner: RefinerExport, vae_cfg: VAEConfig) -> None:
    """A refiner the PyTorch cascade can run: conditioned on this VAE's latents, no style adapter, scale >= 2."""
    cfg = refiner.mmdit_cfg
    if cfg.cond_channels != vae_cfg.latent_channels:
        raise ValueError(f"refiner: cond_channels {cfg.cond_channels} != the VAE's latent channels "
                         f"{vae_cfg.latent_channels} (the refiner is conditioned on the upsampled image's latent)")
    if cfg.style_tag_sizes:
        raise ValueError(f"refiner: a style adapter (style_tag_sizes {cfg.style_tag_sizes}) is not exported for the "
                         "refiner")
    if int(refiner.scale) < 2 or int(refiner.num_steps) < 1:
        raise ValueError(f"refiner: scale {refiner.scale} must be >= 2 and num_steps {refiner.num_steps} >= 1")
    from seedream_jax.sampling import sampler as sampler_lib
    try:
        sampler_lib.start_step_for_strength(int(refiner.num_steps), refiner.strength)
    except ValueError as e:
        raise ValueError(f"refiner: {e}") from None


def refiner_config(refiner: RefinerExport) -> dict:
    """The ``refiner`` entry of ``seedream_pipeline.json`` (what ``SeedreamPipeline.refine`` reads)."""
    cfg = refiner.mmdit_cfg
    return {"folder": REFINER_FOLDER, "scale": int(refiner.scale), "cond_channels": cfg.cond_channels,
            "num_steps": int(refiner.num_steps), "guidance_scale": float(refiner.guidance_scale),
            "strength": float(refiner.strength), "solver": "euler",
            "schedule": dict(refiner.schedule or DEFAULT_SCHEDULE), "latent": {"patch_size": cfg.patch_size},
            "rope": rope_config(cfg), "source": dict(refiner.provenance),
            "conditioning": "uint8 image / 127.5 - 1, bicubic upsampling by scale (F.interpolate, "
                            "align_corners=False) clipped to [-1, 1], VAE posterior mean, (z - shift_factor) * "
                            "scaling_factor; concatenated to the noisy latent on channels before packing"}


def pipeline_config(conditioner_cfg: ConditionerConfig, mmdit_cfg: MMDiTConfig, vae_cfg: VAEConfig, *,
                    tokenizer: Optional[dict], schedule: dict, defaults: dict, provenance: dict,
                    text_encoder_class: str, style_vocab=None, refiner: Optional[RefinerExport] = None) -> dict:
    """The ``seedream_pipeline.json`` dict (what ``torch_pipeline.SeedreamPipeline`` reads)."""
    components = {c: _WHERE[c][1] for c in COMPONENTS if c != "byt5" or conditioner_cfg.byt5 is not None}
    if refiner is not None:
        components["refiner"] = REFINER_FOLDER
    return {"format": "seedream-jax-pipeline", "version": 1, "components": components,
            "text_encoder_class": text_encoder_class, "tokenizer": tokenizer,
            "latent": {"vae_downsample_factor": vae_cfg.downsample_factor, "latent_channels": vae_cfg.latent_channels,
                       "patch_size": mmdit_cfg.patch_size},
            "rope": rope_config(mmdit_cfg),
            "style_adapter": style_adapter_config(mmdit_cfg, style_vocab),
            "schedule": dict(schedule), "defaults": dict(defaults), "source": provenance,
            "refiner": refiner_config(refiner) if refiner is not None else None}


def export_pipeline(params, conditioner_cfg: ConditionerConfig, mmdit_cfg: MMDiTConfig, vae_cfg: VAEConfig,
                    out_dir: str, *, dtype=np.float32, components: Optional[Sequence[str]] = None,
                    causal_lm: bool = False, lm_head_from: Optional[str] = None,
                    tokenizer: Optional[TokenizerFiles] = None, schedule: Optional[dict] = None,
                    defaults: Optional[dict] = None, provenance: Optional[dict] = None,
                    max_shard_bytes: int = 5 * 2**30, style_vocab=None,
                    refiner: Optional[RefinerExport] = None) -> Dict[str, list]:
    """Write the components of a pipeline parameter tree (or ``convert.ParamSource``) to ``out_dir``.

    ``components``: a subset of ``COMPONENTS`` (default: all the parameters have). Shapes are
    checked against the configs before anything is written (``CheckpointMismatchError`` lists
    the differences). With every component and a ``tokenizer``, also writes the tokenizer files,
    ``seedream_pipeline.json``, ``seedream_torch.py`` and ``README.md``. ``dtype``: stored dtype
    of every tensor (float32 / bfloat16 / float16). ``style_vocab``: with a style adapter, the
    tag names ({attribute: [value names]} in attribute order) recorded in the JSON so the PyTorch
    pipeline takes named tags. ``refiner``: a ``RefinerExport`` written to ``refiner/`` (its shapes
    checked first too) and recorded in the JSON. Returns {component: files written} ('refiner' too).
    """
    source = convert.as_source(params)
    dt = convert.export_dtype(dtype)
    style_adapter_config(mmdit_cfg, style_vocab)  # a vocabulary that does not fit fails before writing
    components = list(components) if components is not None else _components_present(source, conditioner_cfg)
    _check_components(source, components, conditioner_cfg, mmdit_cfg, vae_cfg)
    refiner_source = None
    if refiner is not None:
        check_refiner(refiner, vae_cfg)
        refiner_source = convert.as_source(refiner.params)
        convert.check_shapes(refiner_source, flux.abstract_params(refiner.mmdit_cfg),
                             where=f"{refiner_source.describe}: refiner mmdit")
    extra_tops = sorted({p[0] for p in source.shapes()} - {"conditioner", "mmdit", "vae"})
    if extra_tops:
        logging.warning("%s: components %s have no export format and are not exported", source.describe, extra_tops)
    os.makedirs(out_dir, exist_ok=True)
    sub = lambda c: source.scoped(_WHERE[c][0])
    folder = lambda c: os.path.join(out_dir, _WHERE[c][1])
    writers = {
        "text_encoder": lambda: qwen2.export_qwen2(sub("text_encoder"), conditioner_cfg.text_encoder.llm,
                                                   folder("text_encoder"), dt, max_shard_bytes,
                                                   causal_lm=causal_lm, lm_head_from=lm_head_from),
        "byt5": lambda: t5.export_byt5(sub("byt5"), conditioner_cfg.byt5, folder("byt5"), dt, max_shard_bytes),
        "conditioner": lambda: conditioner_layers.export_conditioner_layers(sub("conditioner"), conditioner_cfg,
                                                                            folder("conditioner"), dt),
        "transformer": lambda: flux.export_mmdit(sub("transformer"), mmdit_cfg, folder("transformer"), dt,
                                                 max_shard_bytes),
        "vae": lambda: autoencoder_kl.export_vae(sub("vae"), vae_cfg, folder("vae"), dt, max_shard_bytes),
    }
    written = {}
    for c in components:
        logging.info("export: %s -> %s", c, folder(c))
        written[c] = writers[c]()
    if refiner is not None:
        logging.info("export: refiner -> %s", os.path.join(out_dir, REFINER_FOLDER))
        written["refiner"] = flux.export_mmdit(refiner_source, refiner.mmdit_cfg, os.path.join(out_dir, REFINER_FOLDER),
                                               dt, max_shard_bytes)
    complete = set(COMPONENTS) - ({"byt5"} if conditioner_cfg.byt5 is None else set()) <= set(components)
    provenance = {**(provenance or {}), "dtype": dt.name, "components": components,
                  "not_exported": extra_tops}
    info = pipeline_config(conditioner_cfg, mmdit_cfg, vae_cfg,
                           tokenizer=copy_tokenizer(tokenizer, out_dir) if tokenizer and complete else None,
                           schedule=schedule or DEFAULT_SCHEDULE,
                           defaults=defaults or {"height": 512, "width": 512, "num_steps": 28, "guidance_scale": 4.0},
                           provenance=provenance,
                           text_encoder_class="Qwen2ForCausalLM" if causal_lm else "Qwen2Model",
                           style_vocab=style_vocab, refiner=refiner)
    with open(os.path.join(out_dir, PIPELINE_FILE), "w") as f:
        json.dump(info, f, indent=2, ensure_ascii=False)
    written["pipeline"] = [os.path.join(out_dir, PIPELINE_FILE)]
    if complete and info["tokenizer"] is not None:
        shutil.copyfile(torch_pipeline.__file__, os.path.join(out_dir, TORCH_FILE))
        written["pipeline"].append(os.path.join(out_dir, TORCH_FILE))
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(readme(info, conditioner_cfg, mmdit_cfg, complete=complete and info["tokenizer"] is not None))
    written["pipeline"].append(os.path.join(out_dir, "README.md"))
    return written


def stage_configs(cfg, stage_dir: str):
    """(ConditionerConfig, MMDiTConfig, VAEConfig) that ``stage_dir/stage.json`` records; a
    component the stage does not hold (a VAE-only stage has no DiT) comes from ``cfg.model``."""
    from seedream_jax import config_lib
    from seedream_jax.checkpoint.stage_dir import open_stage

    stage = open_stage(stage_dir)
    defaults = dict(zip(("conditioner", "mmdit", "vae"), config_lib.build_model_configs(cfg.model)))
    return tuple(stage.component(name)[1] if stage.has_component(name) else default
                 for name, default in defaults.items())


def refiner_export_from_stage(cfg, stage_dir: str, conditioner_cfg: ConditionerConfig, vae_cfg: VAEConfig, *,
                       weights: str = "ema") -> RefinerExport:
    """The ``RefinerExport`` of a refiner stage directory (its latest checkpoint's MMDiT, read lazily;
    its recorded scale, schedule and sampler settings, ``cfg.sample.refiner_steps`` /
    ``refiner_guidance_scale`` / ``refiner_strength`` overriding them when > 0). Its conditioner and VAE configs must be
    the exported base's (the cascade runs the refiner on the base's text encoding and VAE)."""
    from seedream_jax.checkpoint.stage_dir import open_stage

    opened = open_stage(stage_dir)
    if opened.kind != "refiner":
        raise ValueError(f"{stage_dir} is a {opened.kind!r} stage, not a refiner stage")
    r_conditioner, r_mmdit, r_vae = stage_configs(cfg, stage_dir)
    differ = ([f"conditioner.{d}" for d in config_differences(r_conditioner, conditioner_cfg)] +
              [f"vae.{d}" for d in config_differences(r_vae, vae_cfg)])
    if differ:
        raise ValueError(f"refiner stage {stage_dir} was trained on another conditioner / VAE than the exported "
                         f"base: {differ}")
    settings = opened.meta["settings"]
    if settings.get("solver", "euler") != "euler":
        logging.warning("refiner stage %s samples with %r; the exported PyTorch pipeline takes Euler steps",
                        stage_dir, settings["solver"])
    s = cfg.sample
    steps, guidance = int(s.get("refiner_steps", 0)), float(s.get("refiner_guidance_scale", 0.0))
    strength = float(s.get("refiner_strength", 0.0)) or float(settings.get("strength", 1.0))
    source = orbax_io.OrbaxSource(stage_dir, weights=weights)
    return RefinerExport(source.scoped("mmdit"), r_mmdit, scale=int(settings["scale"]),
                         num_steps=steps or int(settings["num_steps"]),
                         guidance_scale=guidance or float(settings["guidance_scale"]), strength=strength,
                         schedule=opened.meta["schedule"],
                         provenance={"checkpoint": source.path, "step": source.step,
                                     "weights": "ema" if source.used_ema else "raw"})


def export_checkpoint(cfg, workdir: str, out_dir: str, *, stage: str = "pretrain", step: Optional[int] = None,
                      weights: str = "ema", dtype=np.float32, components: Optional[Sequence[str]] = None,
                      causal_lm: bool = False, lm_head_from: Optional[str] = None,
                      max_shard_bytes: int = 5 * 2**30, refiner: Optional[str] = None) -> dict:
    """Export a stage's Orbax checkpoint (run config ``cfg``, run directory ``workdir``).

    ``stage``: the stage directory, relative to ``workdir`` or absolute. ``weights``: 'ema' or
    'raw' (``orbax_io.OrbaxSource``). Tensors are read from the checkpoint in bounded chunks and
    written one at a time. ``refiner``: a refiner stage directory (relative or absolute) exported
    beside it (``refiner_export_from_stage``, the same ``weights``). Returns {'files': {component: files},
    'step', 'used_ema', 'stage_dir'}.
    """
    from seedream_jax.checkpoint.stage_dir import open_stage

    stage_dir = os.path.join(workdir, stage)  # an absolute ``stage`` stays as it is
    source = orbax_io.OrbaxSource(stage_dir, step=step, weights=weights)
    conditioner_cfg, mmdit_cfg, vae_cfg = stage_configs(cfg, stage_dir)
    refiner_export = (refiner_export_from_stage(cfg, os.path.join(workdir, refiner), conditioner_cfg, vae_cfg,
                                         weights=weights) if refiner else None)
    tokenizer = None
    present = _components_present(source, conditioner_cfg)
    opened = open_stage(stage_dir)
    if set(components or present) >= {"text_encoder", "transformer", "vae"}:
        rec = opened.tokenizer()  # the one it was trained with, unchanged
        tokenizer = TokenizerFiles(rec["kind"], rec["path"])
    s = cfg.sample
    files = export_pipeline(
        source, conditioner_cfg, mmdit_cfg, vae_cfg, out_dir, dtype=dtype, components=components,
        causal_lm=causal_lm, lm_head_from=lm_head_from, tokenizer=tokenizer,
        schedule=opened.meta.get("schedule"),
        defaults=dict(height=int(s.height), width=int(s.width), num_steps=int(s.num_steps),
                      guidance_scale=float(s.guidance_scale)),
        provenance={"checkpoint": source.path, "step": source.step,
                    "weights": "ema" if source.used_ema else "raw"},
        max_shard_bytes=max_shard_bytes,
        style_vocab=opened.meta.get("style_vocab") if mmdit_cfg.style_tag_sizes else None, refiner=refiner_export)
    return {"files": files, "step": source.step, "used_ema": source.used_ema, "stage_dir": stage_dir}


# ----------------------------------------------------------------------------- import

def _set(tree: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    for k in parents:
        tree = tree.setdefault(k, {})
    tree[last] = value


def import_components(*, text_encoder: Optional[str] = None, byt5: Optional[str] = None,
                      conditioner: Optional[str] = None, transformer: Optional[str] = None,
                      vae: Optional[str] = None, conditioner_cfg: Optional[ConditionerConfig] = None,
                      mmdit_overrides: Optional[dict] = None):
    """Load HF / diffusers component folders into one pipeline parameter tree.

    Each folder's config.json gives the component's config; every key and shape is checked
    (``convert.CheckpointMismatchError``). The conditioner layers need the conditioner config:
    from ``conditioner_cfg``, or built from its config.json with the LLM / ByT5 configs of the
    ``text_encoder`` / ``byt5`` folders. ``mmdit_overrides``: our MMDiT fields diffusers does not
    store (rope_rule, rope_base_grid, text_ids). Returns (configs {component: config}, params)
    with params nested as in the pretrain stage ({'conditioner': {...}, 'mmdit', 'vae'}), float32.
    """
    configs, params = {}, {}
    if text_encoder:
        configs["text_encoder"], p = qwen2.load_qwen2(text_encoder)
        _set(params, _WHERE["text_encoder"][0], p)
    if byt5:
        configs["byt5"], p = t5.load_byt5(byt5)
        _set(params, _WHERE["byt5"][0], p)
    if conditioner:
        if conditioner_cfg is None:
            if "text_encoder" not in configs:
                raise ValueError("importing conditioner layers needs the LLM config: pass the text_encoder folder "
                                 "too, or a run config")
            with open(os.path.join(conditioner, "config.json")) as f:
                d = json.load(f)
            if d.get("byt5_d_model") is not None and "byt5" not in configs:
                raise ValueError(f"{conditioner} has a glyph branch: pass the byt5 folder too, or a run config")
            conditioner_cfg = conditioner_layers.conditioner_config_from_json(d, configs["text_encoder"],
                                                                             configs.get("byt5"))
        configs["conditioner"] = conditioner_cfg
        own = conditioner_layers.load_conditioner_layers(conditioner, conditioner_cfg)
        for path, leaf in convert.flatten(own).items():
            _set(params, "/".join(("conditioner",) + path), leaf)
    if transformer:
        configs["transformer"], p = flux.load_mmdit(transformer, **(mmdit_overrides or {}))
        _set(params, "mmdit", p)
    if vae:
        configs["vae"], p = autoencoder_kl.load_vae(vae)
        _set(params, "vae", p)
    return configs, params


def _mmdit_overrides(rope: dict, patch_size: int) -> dict:
    """Our MMDiT fields diffusers does not store, from a ``rope`` entry of seedream_pipeline.json."""
    return dict(rope_rule=rope["rule"], rope_base_grid=rope["base_grid"], text_ids=rope["text_ids"],
                image_pos_embed=rope.get("image_pos_embed", "none"), patch_size=patch_size)


def _pipeline_info(folder: str) -> dict:
    with open(os.path.join(folder, PIPELINE_FILE)) as f:
        return json.load(f)


def import_pipeline(folder: str):
    """(ConditionerConfig, MMDiTConfig, VAEConfig, params) from a whole-pipeline export folder;
    the parameter tree is that of the pretrain stage, float32 (bf16 / fp16 exports accepted).
    A refiner, if any, is read by ``import_refiner``."""
    info = _pipeline_info(folder)
    comp = info["components"]
    path = lambda c: os.path.join(folder, comp[c]) if c in comp else None
    style = info.get("style_adapter") or {}
    configs, params = import_components(
        text_encoder=path("text_encoder"), byt5=path("byt5"), conditioner=path("conditioner"),
        transformer=path("transformer"), vae=path("vae"),
        mmdit_overrides=dict(_mmdit_overrides(info["rope"], info["latent"]["patch_size"]),
                             style_tag_sizes=tuple(style.get("tag_sizes", ())),
                             **({"style_dim": style["dim"]} if style else {})))
    return configs["conditioner"], configs["transformer"], configs["vae"], params


def import_refiner(folder: str):
    """(MMDiTConfig, params, settings) of the refiner of a whole-pipeline export folder, or None
    when it has none; ``settings`` is its ``refiner`` entry of seedream_pipeline.json (scale,
    num_steps, guidance_scale, schedule, ...). Params float32, every key and shape checked."""
    r = _pipeline_info(folder).get("refiner")
    if not r:
        return None
    cfg, params = flux.load_mmdit(os.path.join(folder, r["folder"]), **_mmdit_overrides(r["rope"],
                                                                                      r["latent"]["patch_size"]))
    return cfg, params, r


def config_differences(imported, expected, ignore: Sequence[str] = ("dtype", "attention_impl", "remat_policy")) -> list:
    """['field: imported X vs expected Y', ...] between two config dataclasses (nested ones recursed)."""
    out = []
    for f in dataclasses.fields(expected):
        if f.name in ignore:
            continue
        a, b = getattr(imported, f.name), getattr(expected, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            out += [f"{f.name}.{d}" for d in config_differences(a, b, ignore)]
        elif a != b:
            out.append(f"{f.name}: imported {a!r} vs expected {b!r}")
    return out


# ----------------------------------------------------------------------------- README

def _tokenizer_hint(tok: Optional[dict]) -> str:
    if tok is None:
        return "not included"
    if tok["kind"] == "sentencepiece":
        return f"`sentencepiece.SentencePieceProcessor(model_file='{tok['path']}')`"
    return f"`AutoTokenizer.from_pretrained('{tok['path']}')`"


def readme(info: dict, conditioner_cfg: ConditionerConfig, mmdit_cfg: MMDiTConfig, *, complete: bool) -> str:
    """The export folder's README.md: what each folder is and how to assemble them in PyTorch."""
    shapes = convert.flatten(conditioner_layers.own_abstract_params(conditioner_cfg))
    conditioner_rows = "\n".join(
        f"| `{tp.name}` | {list(convert.to_torch_layout(np.empty(s.shape, np.int8), tp.layout).shape)} |"
        for tp, s in sorted(((conditioner_layers.conditioner_layers_name_fn(p, len(s.shape)), s)
                             for p, s in shapes.items()), key=lambda x: x[0].name))
    src, d, r, sch = info["source"], info["defaults"], info["rope"], info["schedule"]
    te = conditioner_cfg.text_encoder
    layer = te.output_layer
    hidden = ("out.last_hidden_state" if layer in (-1, te.llm.num_hidden_layers)
              else f"out.hidden_states[{layer}]  # output_hidden_states=True")
    f, c, p = (info["latent"][k] for k in ("vae_downsample_factor", "latent_channels", "patch_size"))
    glyph = conditioner_cfg.byt5 is not None
    glyph_inputs = f"""
   Glyph text: the quoted spans of the prompt ("..", “..”, 「..」, 『..』, '..'; an apostrophe inside a
   word is not a quote) joined by a space; ByT5 ids: its UTF-8 bytes + 3, then EOS = 1, truncated to
   {conditioner_cfg.byt5_max_length} keeping the EOS, right-padded with 0. `has_glyphs` is False when there is
   no quoted text (those glyph tokens are then masked).""" if glyph else ""
    glyph_encoding = """
   glyph = `byt5(byt5_ids, byt5_mask).last_hidden_state`, glyph_mask = `byt5_mask & has_glyphs[:, None]`.""" \
        if glyph else ""
    glyph_args = ", glyph, glyph_mask" if glyph else ""
    stack = (f"the {te.adapter} adapter ({te.adapter_layers} blocks), " if te.adapter != "none" else "") + (
        "the glyph mapper, concatenation of LLM and glyph tokens, " if glyph else "")
    sa = info.get("style_adapter")
    style_step = "" if not sa else f"""   **Style adapter** (`{sa['file']}`, `seedream_torch.StyleAdapter`): style tags int [B, {len(sa['tag_sizes'])}]
   (attribute a takes 0 = absent or k = value k-1 of {sa['tag_sizes']}{'; names in seedream_pipeline.json' if sa.get('vocab') else ''}):
   e = mlp_out(silu(mlp_in(sum_a tag_embedding[a](tags[:, a])))), and in double block i the output of
   `transformer_blocks[i].attn.to_v` (the image tokens' values) gets `style_value[i](e)[:, None]` added
   (forward hooks in `flux_velocity`). Sampling with tags: the unconditional branch has every tag absent;
   negative-tag guidance adds v_neg (the prompt with the negative tags): v = v_u + g (v_c - v_u) + g_neg (v_c - v_neg).
"""
    lm_cls = info["text_encoder_class"]
    load = lambda cls, folder: f"`{cls}.from_pretrained('{folder}', use_safetensors=True)`"
    rows = [("text_encoder/", f"transformers `{lm_cls}`",
             load(lm_cls, "text_encoder") + (" (use its `.model`)" if lm_cls != "Qwen2Model" else "")),
            ("byt5/", "transformers `T5EncoderModel`", load("T5EncoderModel", "byt5")),
            ("conditioner/", "`seedream_torch.ConditionerLayers`",
             "`ConditionerLayers.from_pretrained('conditioner')`"),
            ("transformer/", "diffusers `FluxTransformer2DModel`", load("FluxTransformer2DModel", "transformer")),
            ("vae/", "diffusers `AutoencoderKL`", load("AutoencoderKL", "vae")),
            ("tokenizer/", "the LLM tokenizer", _tokenizer_hint(info["tokenizer"])),
            (f"{REFINER_FOLDER}/", "diffusers `FluxTransformer2DModel` (the refiner: step 7)",
             load("FluxTransformer2DModel", REFINER_FOLDER))]
    refiner = info.get("refiner")
    present = (set(info["source"]["components"]) | ({"tokenizer"} if info["tokenizer"] else set())
               | ({REFINER_FOLDER} if refiner else set()))
    table = "\n".join(f"| `{f}` | {cls} | {how} |" for f, cls, how in rows if f.rstrip("/") in present)
    refine_quick = "" if not refiner else f"""
big = pipe(["a large red circle"], refine=True)   # base, then the refiner: uint8 [B, {refiner['scale']} H, {refiner['scale']} W, 3]
big = pipe.refine(images, ["a large red circle", '黑色的文字“你好”'])   # the refiner alone, on uint8 images"""
    rp = refiner["latent"]["patch_size"] if refiner else p
    rs = refiner["schedule"] if refiner else {}
    refine_step = "" if not refiner else f"""7. **Refiner** (`refiner/`, {refiner['scale']}x super-resolution; `SeedreamPipeline.refine`). Its transformer's
   `in_channels` = {rp * rp} x (C + C_cond) = {rp * rp * (c + refiner['cond_channels'])}, C = {c} latent and C_cond = {refiner['cond_channels']} conditioning channels:
   the packed noisy latent and the packed conditioning latent concatenated on the feature axis
   (`torch.cat([pack_latents(x, {rp}), pack_latents(cond, {rp})], -1)`, Flux Fill's layout); `out_channels` = {rp * rp} x C = {rp * rp * c}.
   Conditioning of a uint8 image [B, h, w, 3]: x / 127.5 - 1, bicubic upsampling to {refiner['scale']}h x {refiner['scale']}w
   (`F.interpolate(mode="bicubic", align_corners=False)`), clipped to [-1, 1], VAE posterior mean
   (`vae.encode(x).latent_dist.mean`), then (z - shift_factor) * scaling_factor. Sampling as in step 5 at the
   output size: {refiner['num_steps']} Euler steps, guidance {refiner['guidance_scale']} (the unconditional branch keeps
   the conditioning latent), strength {refiner.get('strength', 1.0)}: the last k = int(num_steps x strength) steps of the grid
   run, from (1 - t0) cond + t0 noise at their first time t0 (strength 1: every step, from the noise), mu = {rs['base_shift']} + ({rs['max_shift']} - {rs['base_shift']}) (N - {rs['base_tokens']}) / ({rs['max_tokens']} - {rs['base_tokens']}) for the
   output's N tokens; positions (step 4) with rule `{refiner['rope']['rule']}`, base grid {refiner['rope']['base_grid']}, text ids
   `{refiner['rope']['text_ids']}`, absolute position `{refiner['rope']['image_pos_embed']}`. Decode as in step 6.
"""
    quick = f"""## Quick start

```python
import sys; sys.path.insert(0, "<this folder>")
from seedream_torch import SeedreamPipeline
pipe = SeedreamPipeline.from_pretrained("<this folder>")          # float32; torch_dtype=torch.bfloat16 works too
images = pipe(["a large red circle", '黑色的文字“你好”'], height={d['height']}, width={d['width']},
              num_steps={d['num_steps']}, guidance_scale={d['guidance_scale']})   # uint8 [B, H, W, 3]{refine_quick}
```

`seedream_torch.py` needs numpy, torch, safetensors, transformers, diffusers (and sentencepiece
for a SentencePiece tokenizer); it does not need JAX. It is the reference for the steps below.
It loads every component strictly: files that miss a tensor, add one or change a shape are
refused with a `StrictLoadError` naming the tensors (a plain `from_pretrained` would only warn
and random-initialise them).
""" if complete else "This is a partial export (not every component): there is no `seedream_torch.py`.\n"
    return f"""# Seedream-JAX export

Exported by seedream-jax from `{src.get('checkpoint', '<in-memory parameters>')}` (step {src.get('step', '-')},
{src.get('weights', '-')} weights), every tensor stored as **{src['dtype']}**, in safetensors only
(no pickle files: loading runs no code from this folder). Components: {', '.join(src['components'] + (['refiner'] if refiner else []))}.

| folder | PyTorch class | load with |
|---|---|---|
{table}

{quick}
## Assembling the pipeline by hand

1. **Text inputs.** LLM ids: the tokenizer without BOS/EOS, truncated to {conditioner_cfg.llm_max_length} tokens,
   right-padded with the pad id; mask True on real tokens; the empty prompt "" gets an all-False mask (the
   unconditional input for guidance).{glyph_inputs}
2. **Text encoding.** `out = llm(input_ids, attention_mask)`; hidden = `{hidden}`.{glyph_encoding}
   `context, mask, pooled = ConditionerLayers(hidden, llm_mask{glyph_args})`:
   {stack}`context_proj`, padded tokens zeroed, pooled = masked mean. Layout of
   `conditioner.safetensors`: the section below.
3. **Latents.** An image of H x W has latents [B, H/{f}, W/{f}, {c}] (NHWC). The transformer takes
   {p}x{p}-packed tokens [B, (h/{p})(w/{p}), {p * p * c}], features ordered (channel, row, column) as diffusers'
   Flux pipeline packs its 2x2 patches (`pack_latents(x, {p})`).
4. **Position ids** (`img_ids` [N, 3], `txt_ids` [T, 3], passed to the transformer). Image patch (i, j) of a
   gh x gw grid (gh = h/{p}): d = i + 0.5 - gh/2 (rows; columns alike), then rule `{r['rule']}` with base grid {r['base_grid']}:
   `scaled` keeps d where |d| <= B/2 and maps the rest to sign(d) (B/2 + (|d| - B/2) B/g); ids (0, row, col).
   Text token k: `{r['text_ids']}` ('diagonal': (0, m + k, m + k) with m = 1 + the largest |image id|).
   Absolute image position: `{r.get('image_pos_embed', 'none')}` ('sincos': `sincos_position_embedding(img_ids, D)`,
   [sin(r w), cos(r w), sin(c w), cos(c w)] with w_k = 10000^(-k / (D/4)), is added to the image tokens right
   after `x_embedder`; `flux_velocity` does it with a forward hook. 'none': nothing, as in Flux).
{style_step}5. **Sampling** (rectified flow, t = 1 is noise, the model predicts v = noise - x0). For N image tokens
   mu = {sch['base_shift']} + ({sch['max_shift']} - {sch['base_shift']}) (N - {sch['base_tokens']}) / ({sch['max_tokens']} - {sch['base_tokens']}); times
   t_i = exp(mu) / (exp(mu) + 1/s_i - 1) for s = linspace(1, 0, steps + 1) (t = 0 at the end).
   Euler: x += (t_(i+1) - t_i) v, where v = v_u + g (v_c - v_u) from one transformer call on
   [unconditional; conditional] with `timestep` = t in [0, 1] (diffusers multiplies by 1000) and the
   padded text tokens masked: `joint_attention_kwargs={{"attention_mask": key_mask[:, None, None, :]}}` with
   key_mask = [text mask, all-True for the image tokens].
6. **Decode.** z = x / vae.config.scaling_factor + vae.config.shift_factor, `vae.decode(z).sample`, then
   pixels = clip((image + 1) * 127.5, 0, 255), rounded.
{refine_step}
Defaults of this model: {d['height']}x{d['width']} px, {d['num_steps']} steps, guidance {d['guidance_scale']}.

## `conditioner/conditioner.safetensors`

{conditioner_layers.LAYOUT}
Tensors of this export:

| key | shape |
|---|---|
{conditioner_rows}
"""
