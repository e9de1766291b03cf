"""Stage ``vae``: train the AutoencoderKL on the dataset's images.

Batches are random ``crop_size`` crops (the VAE is fully convolutional, so it trains on
crops and runs on any size). Loss: ``mse_weight * MSE + l1_weight * L1`` between image and
reconstruction (pixels in [-1, 1]) plus ``kl_weight * KL(q(z|x) || N(0, I))`` averaged per latent element. No
perceptual (LPIPS) or adversarial term: none is implemented, so reconstructions of
fine texture are blurrier than a production VAE's; for the synthetic world's flat colours
and glyphs the pixel losses suffice.

At the end the stage fits the latent normalisation (``shift_factor`` = mean,
``scaling_factor`` = 1/std of the posterior means over the dataset) into the VAE config that
``<stage_dir>/stage.json`` records, where the DiT stages, sampling and export read it
(``fitted_config``).
"""
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax import config_lib
from seedream_jax.checkpoint.stage_dir import StageDescription, open_stage
from seedream_jax.data import augment, records as records_lib, synthetic
from seedream_jax.data import sources as data_sources
from seedream_jax.data.batches import IndexedBatches
from seedream_jax.eval.grid import image_grid
from seedream_jax.models.vae import AutoencoderKL, VAEConfig
from seedream_jax.stages import common
from seedream_jax.training import loop


def vae_loss(recon, x, mean, logvar, *, mse_weight, l1_weight, kl_weight):
    """Returns (loss, metrics). All arrays [B, ...]; means over every element."""
    err = recon.astype(jnp.float32) - x
    mse, l1 = jnp.mean(err ** 2), jnp.mean(jnp.abs(err))
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    loss = mse_weight * mse + l1_weight * l1 + kl_weight * kl
    return loss, {"mse": mse, "l1": l1, "kl": kl}


def training_images(data_cfg, workdir: str) -> np.ndarray:
    """uint8 [N, S, S, 3]: the images the VAE trains on, held in memory. The synthetic world of
    ``data.dir`` as it is; an ArrayRecord dataset (``format='arrayrecord'``, ``data.path``, e.g.
    the styled record world) decoded whole, each image fitted to ``data.image_size`` squares
    (``augment.fit_to_bucket``), so it must fit in host memory."""
    if str(data_cfg.format) == "synthetic":
        return synthetic.load_dataset(common.resolve(workdir, data_cfg.dir))[0]
    size = int(data_cfg.image_size)
    images = []
    for record in data_sources.record_stream(data_cfg, workdir):
        images.append(augment.fit_to_bucket(records_lib.decode_image(record.image), (size, size)))
    if not images:
        raise ValueError(f"vae: the data section's {data_cfg.format} dataset {data_cfg.path} holds no record")
    return np.stack(images)


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The VAE training Task on ``training_images`` of the stage's data section (``vae.data`` when
    it has one, else ``cfg.data``)."""
    s = stage_cfg
    data_cfg = common.stage_data_cfg(cfg, s)
    model = AutoencoderKL(config_lib.build_model_configs(cfg.model)[2])
    images = training_images(data_cfg, workdir)
    eval_images = common.images_to_model(np.asarray(images[:int(s.num_eval_images)]))

    crop = int(s.crop_size)

    def make_batch(idx, rng):
        batch = np.asarray(images[np.sort(idx)])
        if crop and crop < batch.shape[1]:
            ys = rng.integers(0, batch.shape[1] - crop + 1, size=len(idx))
            xs = rng.integers(0, batch.shape[2] - crop + 1, size=len(idx))
            batch = np.stack([im[y:y + crop, x:x + crop] for im, y, x in zip(batch, ys, xs)])
        return {"image": common.images_to_model(batch)}

    def init_params(rng):
        x = jnp.zeros((1,) + images.shape[1:3] + (3,), jnp.float32)
        return {"vae": model.init(rng, x)["params"]}, {}

    def loss_fn(params, frozen, batch, rng):
        recon, mean, logvar = model.apply({"params": params["vae"]}, batch["image"], rng=rng)
        return vae_loss(recon, batch["image"], mean, logvar, mse_weight=float(s.mse_weight),
                        l1_weight=float(s.l1_weight), kl_weight=float(s.kl_weight))

    reconstruct = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])

    def evaluate(state, step):
        recon = reconstruct(state.params["vae"], eval_images)
        pics = list(common.images_from_model(eval_images)) + list(common.images_from_model(recon))
        return {"reconstructions": image_grid(pics, columns=len(eval_images))}

    data = IndexedBatches(len(images), int(s.train.batch_size), int(data_cfg.seed), make_batch)
    return loop.Task(name="vae", init_params=init_params, loss_fn=loss_fn, data=data, evaluate=evaluate)


def encode_images(model, params, images, batch_size: int = 64):
    """Posterior (mean, logvar) of uint8 ``images`` [N, H, W, 3] as float32 NumPy [N, h, w, C]."""
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
    out = [jax.device_get(encode(params, common.images_to_model(np.asarray(images[i:i + batch_size]))))
           for i in range(0, len(images), batch_size)]
    return np.concatenate([m for m, _ in out]), np.concatenate([v for _, v in out])


def fit_latent_normalisation(model, params, images, max_images: int = 1024):
    """(shift_factor, scaling_factor) = (mean, 1/std) of the posterior means of ``images``."""
    z = encode_images(model, params, images[:max_images])[0].astype(np.float64)
    return float(z.mean()), float(1.0 / max(z.std(), 1e-6))


def finish(cfg, stage_cfg, workdir: str, stage_dir: str, result) -> dict:
    """Fit the latent normalisation of the trained VAE; returns it for the summary and ``describe``."""
    model = AutoencoderKL(config_lib.build_model_configs(cfg.model)[2])
    images = training_images(common.stage_data_cfg(cfg, stage_cfg), workdir)
    shift, scale = fit_latent_normalisation(model, jax.device_get(result.state.params["vae"]), images)
    logging.info("vae: latent shift %.4f scale %.4f", shift, scale)
    return {"latent_shift": shift, "latent_scale": scale}


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """One component, the VAE; with the fitted normalisation once ``finish`` has run."""
    vae_cfg = config_lib.build_model_configs(cfg.model)[2]
    if finished:
        vae_cfg = dataclasses.replace(vae_cfg, shift_factor=finished["latent_shift"],
                                      scaling_factor=finished["latent_scale"])
    return StageDescription(components={"vae": (AutoencoderKL, vae_cfg)})


def fitted_config(stage_dir: str, attention_impl=None) -> VAEConfig:
    """The VAE config (with its fitted latent normalisation) recorded in a stage directory."""
    return open_stage(stage_dir).component("vae", attention_impl=attention_impl)[1]
