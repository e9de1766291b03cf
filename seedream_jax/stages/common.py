"""Helpers shared by stage modules: paths inside a workdir, image conversion, model configs."""
import json
import logging
import os
import time

import numpy as np
from ml_collections import ConfigDict

from seedream_jax.data import synthetic


def resolve(workdir: str, path: str) -> str:
    """A config path: absolute as given, relative ones inside ``workdir``."""
    return path if os.path.isabs(path) else os.path.join(workdir, path)


def images_to_model(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 in [-1, 1]."""
    return images_uint8.astype(np.float32) / 127.5 - 1.0


def images_from_model(x) -> np.ndarray:
    """float in [-1, 1] [B, H, W, 3] -> uint8."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def read_json(path: str, what: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: {path} does not exist")
    with open(path) as f:
        return json.load(f)


def stage_section(cfg: ConfigDict, name: str) -> ConfigDict:
    if name not in cfg:
        raise KeyError(f"config has no section {name!r} for stage {name!r}")
    return cfg[name]


def stage_data_cfg(cfg: ConfigDict, stage_cfg: ConfigDict) -> ConfigDict:
    """The data section a stage reads: its own ``<stage>.data`` when it has one
    (``config_lib.data_section(...)``), else the run-wide ``cfg.data``."""
    if "data" not in stage_cfg:
        return cfg.data
    if not isinstance(stage_cfg.data, ConfigDict):
        raise TypeError(f"a stage's data section must be a ConfigDict (config_lib.data_section(...)), "
                        f"got {type(stage_cfg.data).__name__}")
    return stage_cfg.data


def world_mix(cfg: ConfigDict, stage_cfg: ConfigDict):
    """The synthetic world's scene mix (``synthetic.SyntheticWorldConfig``) of the stage's data
    section (``stage_data_cfg``): what the reward stages draw their scenes and captions from."""
    return synthetic.SyntheticWorldConfig(**stage_data_cfg(cfg, stage_cfg).world.to_dict())


def load_tokenizer(cfg: ConfigDict, workdir: str):
    """The LLM tokenizer named by ``cfg.tokenizer`` (a SentencePiece model or a local HF dir)."""
    tok = open_tokenizer(cfg.tokenizer.format, resolve(workdir, cfg.tokenizer.path))
    if tok.vocab_size > cfg.model.llm.vocab_size:
        raise ValueError(f"tokenizer {cfg.tokenizer.path} has {tok.vocab_size} tokens but model.llm.vocab_size is "
                         f"{cfg.model.llm.vocab_size}")
    return tok


def open_tokenizer(kind: str, path: str):
    """A ``TextTokenizer`` of ``kind`` 'sentencepiece' (a .model file) or 'hf' (a local directory)."""
    from seedream_jax.data.tokenizer import TextTokenizer

    if kind == "sentencepiece":
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer.path: SentencePiece model {path} does not exist "
                                    "(the 'tokenizer' stage trains it)")
        return TextTokenizer.from_sentencepiece(path)
    if kind == "hf":
        return TextTokenizer.from_hf(path)
    raise ValueError(f"tokenizer.format must be 'sentencepiece' or 'hf', got {kind!r}")


def stage_tokenizer(stage):
    """The tokenizer an opened stage (``checkpoint.stage_dir.Stage``) recorded, checked unchanged."""
    rec = stage.tokenizer()
    return open_tokenizer(rec["kind"], rec["path"])


def generate_images(pipe, params, prompts, *, height: int, width: int, batch_size: int, seed: int,
                    rows=None, what: str = "images", **sampler) -> np.ndarray:
    """uint8 [N, height, width, 3]: ``pipe`` (a ``TextToImage``) on ``prompts`` in batches of
    ``batch_size`` (the last one padded, so one program serves every batch); image i uses the noise
    of row i % batch_size under seed ``seed + i - i % batch_size``, so it depends on i alone.
    ``rows``: optional {keyword: array [N, ...]} passed per batch (e.g. ``style_tags``); ``sampler``:
    the other keywords of every call (num_steps, solver, guidance_scale, tags). Logs progress as ``what``."""
    rows = rows or {}
    pics, t0, n = [], time.time(), len(prompts)
    for start in range(0, n, batch_size):
        chunk = list(prompts[start:start + batch_size])
        pad = batch_size - len(chunk)
        extra = {k: np.concatenate([v[start:start + batch_size], np.repeat(v[start + len(chunk) - 1:][:1], pad, 0)])
                 for k, v in rows.items()}
        images = pipe(params, chunk + [chunk[-1]] * pad, height=height, width=width, seed=seed + start,
                      **sampler, **extra)
        pics.append(images[:len(chunk)])
        logging.info("%s: %d/%d (%.1fs)", what, min(start + batch_size, n), n, time.time() - t0)
    return np.concatenate(pics) if pics else np.zeros((0, height, width, 3), np.uint8)


def open_rewriter(stage_dir: str, weights: str = "ema", **limits):
    """The prompt rewriter (``sampling/rewriter.Rewriter``) of a ``pe_sft``/``pe_pref`` stage
    directory, from its stage.json alone: EMA weights when it kept them, the generation limits it
    recorded unless ``limits`` (max_prompt_length, max_new_tokens) say otherwise."""
    from seedream_jax.checkpoint.stage_dir import open_stage
    from seedream_jax.sampling.rewriter import COMPONENT, Rewriter

    stage = open_stage(stage_dir)
    _, config = stage.component(COMPONENT)
    recorded = {k: int(v) for k, v in stage.meta.get("settings", {}).items()
                if k in ("max_prompt_length", "max_new_tokens")}
    weights = weights if stage.has_ema() else "raw"
    return Rewriter(config, stage.params(weights)[COMPONENT], stage_tokenizer(stage), **{**recorded, **limits})
