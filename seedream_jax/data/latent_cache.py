"""Latent cache: the frozen VAE's posterior of every record, precomputed once into ArrayRecord.

What is cached: for record ``i`` of a dataset, entry ``i`` of the cache holds the VAE posterior
``mean`` and ``logvar`` (float32 [h/f, w/f, C], ``np.savez`` bytes) of the record's image fitted to
its aspect-ratio bucket with the deterministic centre crop (``augment.fit_to_bucket`` without
randomness; the bucket table is the pipeline's, from ``base_resolution``, ``bucket_multiple`` and
``bucket_max_ratio``). Training then samples ``z = mean + exp(logvar / 2) * eps`` per step as it
would on the fly, so only the random crop and flip are lost. Captions are not in this cache:
the frozen conditioner's outputs have their own (``text_cache.py``, sharing ``open_cache``,
``check_dataset`` and ``params_fingerprint`` from here).

The cache is a seedream ArrayRecord dataset (``arrayrecord_io``) whose manifest ``summary`` says
what it matches: ``dataset`` (record count and the dataset manifests' settings), ``buckets``
(the three bucket settings) and ``vae`` (the VAE stage directory, checkpoint step and a CRC32 of
its parameters). ``LatentCache.check_matches`` / ``check_vae`` raise ``CacheMismatchError``
naming the cache and what differs, so a stale cache is never trained on silently.

    python tools/cache_latents.py --dataset data/world --vae runs/x/vae --base_resolution 256
"""
import io
import os
import zlib
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from seedream_jax.data import arrayrecord_io, augment, batch_plan, records as records_lib

CACHE_KIND = "seedream-latent-cache"
CACHE_VERSION = 1
BUCKET_KEYS = ("base_resolution", "bucket_multiple", "bucket_max_ratio")


class CacheMismatchError(ValueError):
    """A cache does not belong to the dataset, bucket settings, VAE or text stack it is used with."""


def default_cache_dir(dataset_path: str) -> str:
    """Where a dataset's cache sits when the config names none: ``<dataset>-latents``."""
    return os.path.normpath(dataset_path).rstrip(os.sep) + "-latents"


def params_fingerprint(params) -> int:
    """CRC32 of every parameter array (sorted by path): identifies exact weights (VAE, text stack)."""
    import jax
    crc = 0
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda x: jax.tree_util.keystr(x[0])):
        crc = zlib.crc32(jax.tree_util.keystr(path).encode(), crc)
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes(), crc)
    return crc


def dataset_identity(source) -> dict:
    """Record count, and for an ``ArrayRecordSource`` its manifests' settings and record counts."""
    ident = {"num_records": len(source)}
    if isinstance(source, arrayrecord_io.ArrayRecordSource):
        ident["manifests"] = [{"settings": m["settings"], "num_records": m["num_records"]} for m in source.manifests]
    return ident


def open_cache(path: str, kind: str, what: str):
    """(ArrayRecordSource, identity summary) of the cache at ``path``; ``CacheMismatchError`` unless
    its manifest summary says ``kind`` (shared by the latent and the text cache)."""
    source = arrayrecord_io.ArrayRecordSource(path)
    identity = source.manifests[0]["summary"]
    if identity.get("kind") != kind:
        raise CacheMismatchError(f"{path} is an ArrayRecord dataset but not a {what} "
                                 f"(summary kind {identity.get('kind')!r}, expected {kind!r})")
    return source, identity


def check_dataset(identity: dict, source, path: str, what: str) -> None:
    """Raises ``CacheMismatchError`` unless the cache ``identity`` was built from ``source``."""
    want = dataset_identity(source)
    if identity["dataset"] != want:
        raise CacheMismatchError(f"{what} {path} was built for dataset {identity['dataset']}, "
                                 f"not this one {want}; rebuild it with tools/cache_latents.py")


def _pack(mean: np.ndarray, logvar: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, mean=np.asarray(mean, np.float32), logvar=np.asarray(logvar, np.float32))
    return buf.getvalue()


def write_latent_cache(source, out_dir: str, encode: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]],
                       bucket_settings: Dict[str, float], vae_identity: dict, chunk: int = 64,
                       records_per_shard: int = 4096) -> dict:
    """Encodes every record of ``source`` (encoded record bytes) and writes the cache to ``out_dir``.

    encode: uint8 [B, h, w, 3] (one bucket) -> (mean, logvar) float [B, h/f, w/f, C].
    bucket_settings: ``{"base_resolution", "bucket_multiple", "bucket_max_ratio"}`` as the pipeline's.
    vae_identity: JSON dict identifying the VAE weights (``vae_identity`` of the stage below).
    Records are read ``chunk`` at a time and encoded grouped by bucket, each group padded to
    ``chunk`` rows (so ``encode`` sees one shape per bucket). An interrupted write
    resumes (finished shards are kept). Returns the manifest.
    """
    from seedream_jax.data.pipeline import PipelineConfig  # the bucket table of the pipeline

    settings = {k: bucket_settings[k] for k in BUCKET_KEYS}
    table = PipelineConfig(global_batch=1, **settings).bucket_table()
    identity = {"kind": CACHE_KIND, "version": CACHE_VERSION, "dataset": dataset_identity(source),
                "buckets": settings, "vae": vae_identity}
    writer = arrayrecord_io.ShardedWriter(out_dir, records_per_shard, config=identity, prefix="latents")
    if writer.complete:
        return writer.close()
    for start in range(writer.records_done, len(source), chunk):
        indices = list(range(start, min(start + chunk, len(source))))
        images, groups = {}, {}
        for i in indices:
            rec = records_lib.decode_record(source[i])
            bucket = table[int(batch_plan.assign_buckets([(rec.height, rec.width)], table)[0])]
            images[i] = augment.fit_to_bucket(records_lib.decode_image(rec.image), bucket)
            groups.setdefault(bucket, []).append(i)
        out = {}
        for members in groups.values():  # padded to ``chunk`` rows: one encoder shape per bucket
            batch = np.stack([images[i] for i in members] + [images[members[0]]] * (chunk - len(members)))
            mean, logvar = encode(batch)
            out.update({i: (np.asarray(mean[j]), np.asarray(logvar[j])) for j, i in enumerate(members)})
        for i in indices:
            writer.write(_pack(*out[i]))
    return writer.close(identity)


class LatentCache:
    """Reads a latent cache: ``posterior(i, bucket)`` -> (mean, logvar) float32 [h/f, w/f, C]."""

    def __init__(self, path: str):
        self.path = path
        self.source, self.identity = open_cache(path, CACHE_KIND, "latent cache")

    def check_matches(self, source, cfg) -> None:
        """Raises ``CacheMismatchError`` unless the cache was built from ``source`` with ``cfg``'s buckets."""
        check_dataset(self.identity, source, self.path, "latent cache")
        buckets = {k: getattr(cfg, k) for k in BUCKET_KEYS}
        if {k: float(v) for k, v in self.identity["buckets"].items()} != {k: float(v) for k, v in buckets.items()}:
            raise CacheMismatchError(f"latent cache {self.path} used bucket settings {self.identity['buckets']}, "
                                     f"the pipeline uses {buckets}; rebuild the cache or match data.* settings")

    def check_vae(self, vae_identity: dict) -> None:
        """Raises ``CacheMismatchError`` unless the cache was encoded by the VAE ``vae_identity``."""
        if self.identity["vae"] != vae_identity:
            raise CacheMismatchError(f"latent cache {self.path} was encoded by VAE {self.identity['vae']}, "
                                     f"training uses VAE {vae_identity}; rebuild it with tools/cache_latents.py")

    def posterior(self, index: int, bucket: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        with np.load(io.BytesIO(self.source[int(index)])) as z:
            mean, logvar = z["mean"], z["logvar"]
        factor = bucket[0] / mean.shape[0]
        if factor * mean.shape[1] != bucket[1]:
            raise CacheMismatchError(f"latent cache {self.path}: entry {index} is {mean.shape}, not a latent of "
                                     f"bucket {tuple(bucket)}")
        return mean, logvar
