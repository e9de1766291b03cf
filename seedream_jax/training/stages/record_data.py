"""Training data from an ArrayRecord dataset (``data.format = "arrayrecord"``) for diffusion stages.

Builds the Grain pipeline (``data/pipeline.py``) from the ``data`` config section and the stage's
batch size, attaches the latent cache when there is one (``data.cache_dir``, or
``<data.path>-latents`` next to the dataset; it must match the dataset, buckets and the VAE that
trains), and turns the sampled captions into the conditioner's token arrays. Also the VAE side of
``tools/cache_latents.py`` (``vae_encoder``, ``vae_identity``).
"""
import logging
import os
from typing import Callable, Optional, Tuple

import jax
import numpy as np

from seedream_jax.checkpoint.init_from import load_component
from seedream_jax.data import arrayrecord_io, latent_cache
from seedream_jax.data.pipeline import PipelineConfig, RecordPipeline
from seedream_jax.models.vae import AutoencoderKL
from seedream_jax.training.stages import common


def pipeline_config(data_cfg, global_batch: int) -> PipelineConfig:
    """``PipelineConfig`` of the ``data`` config section (base resolution ``data.image_size``)."""
    d = data_cfg
    return PipelineConfig(
        global_batch=int(global_batch), seed=int(d.seed), base_resolution=int(d.image_size),
        bucket_multiple=int(d.bucket_multiple), bucket_max_ratio=float(d.bucket_max_ratio),
        random_crop=bool(d.random_crop), flip_prob=float(d.flip_prob), num_workers=int(d.num_workers),
        worker_mode=str(d.worker_mode), caption_languages=tuple(d.caption_languages),
        language_probs=tuple(d.language_probs), caption_types=tuple(d.caption_types),
        caption_type_probs=tuple(d.caption_type_probs), cfg_drop_prob=float(d.cfg_drop_prob))


def dataset_path(cfg, workdir: str) -> str:
    if not cfg.data.path:
        raise ValueError("data.format = 'arrayrecord' needs data.path: a dataset written by tools/ingest.py, "
                         "tools/curate.py or tools/make_synthetic.py --format arrayrecord")
    return common.resolve(workdir, cfg.data.path)


def vae_identity(stage_dir: str, params, step: int) -> dict:
    """What a latent cache records about the VAE: checkpoint step and CRC32 of its parameters."""
    return {"stage": os.path.basename(os.path.normpath(stage_dir)), "step": int(step),
            "params_crc32": latent_cache.params_fingerprint(params)}


def vae_encoder(vae_cfg, params) -> Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """uint8 [B, H, W, 3] -> posterior (mean, logvar) float32 [B, H/f, W/f, C] (jitted per shape)."""
    model = AutoencoderKL(vae_cfg)
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
    return lambda images: tuple(np.asarray(a) for a in jax.device_get(encode(params, common.images_to_model(images))))


def find_cache(cfg, workdir: str) -> Optional[str]:
    """The latent cache directory to use, or None: ``data.cache_dir`` (must exist) or the one next to the dataset."""
    if cfg.data.cache_dir:
        path = common.resolve(workdir, cfg.data.cache_dir)
        if not os.path.exists(os.path.join(path, arrayrecord_io.MANIFEST)):
            raise FileNotFoundError(f"data.cache_dir: no complete latent cache at {path} "
                                    "(tools/cache_latents.py writes it)")
        return path
    path = latent_cache.default_cache_dir(dataset_path(cfg, workdir))
    return path if os.path.exists(os.path.join(path, arrayrecord_io.MANIFEST)) else None


def record_pipeline(cfg, workdir: str, global_batch: int, tokenize: Callable, vae_source: Optional[str],
                    use_cache: bool) -> RecordPipeline:
    """The stage's ``DataSource``: batches of ``image`` (or cached ``latent_mean``/``latent_logvar``)
    plus the token arrays of ``tokenize(list of captions)``.

    ``use_cache``: whether cached posteriors may replace images (the VAE is frozen and loaded
    from ``vae_source``, whose weights the cache must have been encoded with).
    """
    source = arrayrecord_io.ArrayRecordSource(dataset_path(cfg, workdir))
    cache = None
    cache_dir = find_cache(cfg, workdir) if use_cache else None
    if cache_dir is not None:
        cache = latent_cache.LatentCache(cache_dir)
        params, step = load_component(vae_source, "vae")
        cache.check_vae(vae_identity(vae_source, params, step))
        logging.info("data: using latent cache %s", cache_dir)

    def batch_fn(batch):
        out = {k: v for k, v in batch.items() if k in ("image", "latent_mean", "latent_logvar")}
        return {**out, **tokenize([str(c) for c in batch["caption"]])}

    return RecordPipeline(source, pipeline_config(cfg.data, global_batch), batch_fn=batch_fn, cache=cache)
