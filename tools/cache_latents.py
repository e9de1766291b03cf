"""Precompute the frozen VAE's posterior (mean, logvar) of every record of a dataset (latent cache).

    python tools/cache_latents.py --dataset data/world --vae runs/x/vae \\
        --base_resolution 256 --bucket_multiple 32 --bucket_max_ratio 3.0 [--out data/world-latents]

The cache (``seedream_jax/data/latent_cache.py``) holds, per record, the posterior of the image
fitted to its aspect-ratio bucket (centre crop); captions are not cached (caption sampling stays
per step). By default it is written next to the dataset (``<dataset>-latents``), where the
pretrain stage finds it when ``data.format = "arrayrecord"``; the bucket flags must equal the
training config's ``data.image_size``/``bucket_multiple``/``bucket_max_ratio``, and the VAE
must be the one pretraining loads (checked by step and parameter CRC32). Interrupted runs resume.
"""
import argparse
import json
import time

from seedream_jax.checkpoint.init_from import load_component
from seedream_jax.data import arrayrecord_io, latent_cache
from seedream_jax.training.stages import record_data, vae as vae_stage


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="seedream ArrayRecord dataset directory")
    p.add_argument("--vae", required=True, help="VAE stage directory (checkpoints/ and vae_config.json)")
    p.add_argument("--out", default="", help="cache directory (default <dataset>-latents)")
    p.add_argument("--base_resolution", type=int, required=True)
    p.add_argument("--bucket_multiple", type=int, default=32)
    p.add_argument("--bucket_max_ratio", type=float, default=3.0)
    p.add_argument("--chunk", type=int, default=64, help="records read and encoded together")
    a = p.parse_args()
    source = arrayrecord_io.ArrayRecordSource(a.dataset)
    params, step = load_component(a.vae, "vae")
    encode = record_data.vae_encoder(vae_stage.load_fitted_config(a.vae), params)
    out = a.out or latent_cache.default_cache_dir(a.dataset)
    t = time.time()
    manifest = latent_cache.write_latent_cache(
        source, out, encode, {"base_resolution": a.base_resolution, "bucket_multiple": a.bucket_multiple,
                              "bucket_max_ratio": a.bucket_max_ratio},
        record_data.vae_identity(a.vae, params, step), chunk=a.chunk)
    print(f"latent cache of {manifest['num_records']} records in {out} [{time.time() - t:.1f}s]")
    print(json.dumps(manifest["summary"]["vae"]))


if __name__ == "__main__":
    main()
