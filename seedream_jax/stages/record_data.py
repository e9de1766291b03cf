"""The caches of an ArrayRecord dataset (``data.format = "arrayrecord"``) for diffusion stages.

The dataset itself is opened through ``data/sources.py`` (the Grain pipeline of the stage's data
section); this module finds and checks what may replace its images and captions: the latent cache
(``data.cache_dir``, or ``<data.path>-latents`` next to the dataset; it must match the dataset,
buckets and the VAE that trains) and the text cache (``data.text_cache_dir``, or
``<data.path>-text``; only with a frozen conditioner loaded by ``init_from``, and it must match the
dataset, those weights, the model config and the tokenizer). Also both sides of
``tools/cache_latents.py`` (``vae_encoder``/``vae_identity``, ``text_stack``).
"""
import dataclasses
import json
import logging
import os
import zlib
from typing import Callable, Optional, Tuple

import jax
import numpy as np

from seedream_jax import config_lib
from seedream_jax.checkpoint.init_from import load_component, parse_sources
from seedream_jax.data import arrayrecord_io, latent_cache, sources, text_cache as text_cache_lib
from seedream_jax.models.conditioner import Conditioner, tokenize_prompts
from seedream_jax.models.vae import AutoencoderKL
from seedream_jax.models.partition import split_params
from seedream_jax.stages import common


def vae_identity(stage_dir: str, params, step: int) -> dict:
    """What a latent cache records about the VAE: checkpoint step and CRC32 of its parameters."""
    return {"stage": os.path.basename(os.path.normpath(stage_dir)), "step": int(step),
            "params_crc32": latent_cache.params_fingerprint(params)}


def vae_encoder(vae_cfg, params) -> Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """uint8 [B, H, W, 3] -> posterior (mean, logvar) float32 [B, H/f, W/f, C] (jitted per shape)."""
    model = AutoencoderKL(vae_cfg)
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
    return lambda images: tuple(np.asarray(a) for a in jax.device_get(encode(params, common.images_to_model(images))))


def find_cache(data_cfg, workdir: str) -> Optional[str]:
    """The latent cache directory to use, or None: ``data.cache_dir`` (must exist) or the one next to the dataset."""
    if data_cfg.cache_dir:
        path = common.resolve(workdir, data_cfg.cache_dir)
        if not os.path.exists(os.path.join(path, arrayrecord_io.MANIFEST)):
            raise FileNotFoundError(f"data.cache_dir: no complete latent cache at {path} "
                                    "(tools/cache_latents.py writes it)")
        return path
    path = latent_cache.default_cache_dir(sources.arrayrecord_path(data_cfg, workdir))
    return path if os.path.exists(os.path.join(path, arrayrecord_io.MANIFEST)) else None


def open_latent_cache(data_cfg, workdir: str, vae_source: str) -> Optional[latent_cache.LatentCache]:
    """The latent cache of the dataset (``find_cache``), checked against the VAE of ``vae_source``
    it must have been encoded with, or None when there is none."""
    cache_dir = find_cache(data_cfg, workdir)
    if cache_dir is None:
        return None
    cache = latent_cache.LatentCache(cache_dir)
    params, step = load_component(vae_source, "vae")
    cache.check_vae(vae_identity(vae_source, params, step))
    logging.info("data: using latent cache %s", cache_dir)
    return cache


def tokenizer_fingerprint(path: str) -> int:
    """CRC32 of a tokenizer: the SentencePiece model file, or every file of an HF tokenizer folder."""
    files = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in sorted(os.listdir(path))
                                                   if os.path.isfile(os.path.join(path, n))]
    crc = 0
    for name in files:
        with open(name, "rb") as f:
            crc = zlib.crc32(f.read(), zlib.crc32(os.path.basename(name).encode(), crc))
    return crc


def conditioner_source(cfg, workdir: str, stage_cfg) -> str:
    """The stage dir the frozen conditioner is loaded from; ``ValueError`` saying why a text cache
    cannot be used unless every conditioner parameter is in ``stage_cfg.frozen`` and
    ``stage_cfg.init_from.conditioner`` names its checkpoint."""
    conditioner_cfg = config_lib.build_model_configs(cfg.model)[0]
    tokens = {k: np.zeros(v.shape, v.dtype) for k, v in tokenize_prompts(
        [""], lambda texts, n: (np.zeros((len(texts), n), np.int32), np.zeros((len(texts), n), bool)),
        conditioner_cfg).items()}
    shapes = jax.eval_shape(lambda: Conditioner(conditioner_cfg).init(jax.random.PRNGKey(0), **tokens)["params"])
    prefixes = [p for p in stage_cfg.frozen if p.strip("/").split("/")[0] == "conditioner"]
    trainable, _ = split_params({"conditioner": shapes}, prefixes)
    if trainable:
        raise ValueError(f"a text cache needs the whole conditioner frozen, but pretrain.frozen={tuple(stage_cfg.frozen)} "
                         "leaves conditioner parameters trainable; add 'conditioner' to pretrain.frozen or drop the cache")
    source = parse_sources(stage_cfg.init_from, workdir).get("conditioner")
    if not source:
        raise ValueError("a text cache needs the frozen conditioner loaded from a checkpoint: set "
                         "pretrain.init_from.conditioner to the stage dir the cache was encoded with")
    return source[0]


def text_identity(cfg, workdir: str, stage_dir: str, params, step: int) -> dict:
    """What a text cache records about the text stack: the conditioner's stage, checkpoint step,
    parameter CRC32 and config, and the tokenizer's CRC32."""
    conditioner_cfg = config_lib.build_model_configs(cfg.model)[0]
    return {"stage": os.path.basename(os.path.normpath(stage_dir)), "step": int(step),
            "params_crc32": latent_cache.params_fingerprint(params),
            "conditioner_config": json.loads(json.dumps(dataclasses.asdict(conditioner_cfg))),
            "tokenizer_crc32": tokenizer_fingerprint(common.resolve(workdir, cfg.tokenizer.path))}


def text_stack(cfg, workdir: str, stage_cfg) -> Tuple[text_cache_lib.EncodeFn, dict]:
    """(encode, identity) of the frozen conditioner a stage trains with (``conditioner_source``):
    encode maps a list of captions to the conditioner's (context [B, L, D], mask [B, L],
    pooled [B, D]) NumPy arrays (jitted per batch size); identity is ``text_identity``."""
    source = conditioner_source(cfg, workdir, stage_cfg)
    params, step = load_component(source, "conditioner")
    conditioner_cfg = config_lib.build_model_configs(cfg.model)[0]
    tokenizer = common.load_tokenizer(cfg, workdir)
    model = Conditioner(conditioner_cfg)
    apply = jax.jit(lambda p, tokens: model.apply({"params": p}, **tokens))

    def encode(texts):
        tokens = tokenize_prompts(list(texts), tokenizer, conditioner_cfg)
        return tuple(np.asarray(a) for a in jax.device_get(apply(params, tokens)))

    return encode, text_identity(cfg, workdir, source, params, step)


def open_text_cache(cfg, workdir: str, stage_cfg) -> Optional[text_cache_lib.TextCache]:
    """The checked text cache to train with, or None.

    The stage's ``data.text_cache_dir`` (must exist) or ``<data.path>-text`` when present. A cache
    named in the config that cannot be used (conditioner not fully frozen or not loaded by
    ``init_from``) raises ``ValueError``; one merely found next to the dataset is then ignored
    with a warning. A cache of other weights, config or tokenizer raises ``CacheMismatchError``.
    """
    data_cfg = common.stage_data_cfg(cfg, stage_cfg)
    explicit = bool(data_cfg.text_cache_dir)
    if explicit:
        path = common.resolve(workdir, data_cfg.text_cache_dir)
        if not os.path.exists(os.path.join(path, arrayrecord_io.MANIFEST)):
            raise FileNotFoundError(f"data.text_cache_dir: no complete text cache at {path} "
                                    "(tools/cache_latents.py --text_config writes it)")
    else:
        path = text_cache_lib.default_text_cache_dir(sources.arrayrecord_path(data_cfg, workdir))
        if not os.path.exists(os.path.join(path, arrayrecord_io.MANIFEST)):
            return None
    try:
        source = conditioner_source(cfg, workdir, stage_cfg)
    except ValueError as e:
        if explicit:
            raise ValueError(f"data.text_cache_dir={path}: {e}") from None
        logging.warning("data: not using the text cache %s: %s", path, e)
        return None
    cache = text_cache_lib.TextCache(path)
    params, step = load_component(source, "conditioner")
    cache.check_text_stack(text_identity(cfg, workdir, source, params, step))
    logging.info("data: using text cache %s", path)
    return cache
