"""Precompute the frozen VAE's posterior of every record (latent cache) and/or the frozen
conditioner's outputs for every caption of every record (text cache).

    python tools/cache_latents.py --dataset data/world --vae runs/x/vae \\
        --base_resolution 256 --bucket_multiple 32 --bucket_max_ratio 3.0 [--out data/world-latents]
    python tools/cache_latents.py --dataset data/world --text_config configs/tiny.py --workdir runs/x \\
        [--text_dtype float16] [--text_out data/world-text]

Text cache (``seedream_jax/data/text_cache.py``): the conditioner is the one the training config
loads (``pretrain.init_from.conditioner``, resolved in ``--workdir``), with its ``model`` section
and tokenizer; training uses the cache only with the whole conditioner frozen and checks its
weights (CRC32), config and tokenizer.

The cache (``seedream_jax/data/latent_cache.py``) holds, per record, the posterior of the image
fitted to its aspect-ratio bucket (centre crop); captions are not cached (caption sampling stays
per step). By default it is written next to the dataset (``<dataset>-latents``), where the
pretrain stage finds it when ``data.format = "arrayrecord"``; the bucket flags must equal the
training config's ``data.image_size``/``bucket_multiple``/``bucket_max_ratio``, and the VAE
must be the one pretraining loads (checked by step and parameter CRC32). Interrupted runs resume.

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import json
import runpy
import time

from seedream_jax.checkpoint.init_from import load_component
from seedream_jax.checkpoint.manager import CheckpointReadError
from seedream_jax.data import arrayrecord_io, latent_cache, text_cache
from seedream_jax.stages import record_data, vae as vae_stage


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="seedream ArrayRecord dataset directory")
    p.add_argument("--vae", default="", help="VAE stage directory (checkpoints/ and stage.json)")
    p.add_argument("--out", default="", help="latent cache directory (default <dataset>-latents)")
    p.add_argument("--base_resolution", type=int, default=0, help="bucket base resolution (with --vae)")
    p.add_argument("--bucket_multiple", type=int, default=32)
    p.add_argument("--bucket_max_ratio", type=float, default=3.0)
    p.add_argument("--chunk", type=int, default=64, help="records (latents) or captions (text) encoded together")
    p.add_argument("--text_config", default="", help="training config file whose frozen conditioner to cache")
    p.add_argument("--workdir", default=".", help="workdir the config's relative paths are inside")
    p.add_argument("--text_dtype", default="float16", choices=sorted(text_cache.DTYPES))
    p.add_argument("--text_out", default="", help="text cache directory (default <dataset>-text)")
    a = p.parse_args()
    if not a.vae and not a.text_config:
        p.error("nothing to cache: give --vae (latent cache) and/or --text_config (text cache)")
    source = arrayrecord_io.ArrayRecordSource(a.dataset)
    if a.text_config:
        cfg = runpy.run_path(a.text_config)["get_config"]()
        encode, identity = record_data.text_stack(cfg, a.workdir, cfg.pretrain)
        out = a.text_out or text_cache.default_text_cache_dir(a.dataset)
        t = time.time()
        manifest = text_cache.write_text_cache(source, out, encode, identity, dtype=a.text_dtype, chunk=a.chunk)
        print(f"text cache of {manifest['num_records']} records in {out} [{time.time() - t:.1f}s]")
        print(json.dumps({k: v for k, v in manifest["summary"]["text"].items() if k != "conditioner_config"}))
    if not a.vae:
        return
    if a.base_resolution <= 0:
        p.error("--vae needs --base_resolution (the training config's data.image_size)")
    params, step = load_component(a.vae, "vae")
    encode = record_data.vae_encoder(vae_stage.fitted_config(a.vae), params)
    out = a.out or latent_cache.default_cache_dir(a.dataset)
    t = time.time()
    manifest = latent_cache.write_latent_cache(
        source, out, encode, {"base_resolution": a.base_resolution, "bucket_multiple": a.bucket_multiple,
                              "bucket_max_ratio": a.bucket_max_ratio},
        record_data.vae_identity(a.vae, params, step), chunk=a.chunk)
    print(f"latent cache of {manifest['num_records']} records in {out} [{time.time() - t:.1f}s]")
    print(json.dumps(manifest["summary"]["vae"]))


if __name__ == "__main__":
    try:
        main()
    except CheckpointReadError as e:  # a damaged --vae / conditioner checkpoint: the step, the file, why
        raise SystemExit(f"error: {e}") from None
