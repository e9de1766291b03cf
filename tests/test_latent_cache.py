"""Latent cache: the pipeline serves cached posteriors equal to on-the-fly encoding; mismatches are refused."""
import dataclasses

import jax
import numpy as np
import pytest

from seedream_jax.data import arrayrecord_io, latent_cache
from seedream_jax.data import synthetic as S
from seedream_jax.data import synthetic_records as SR
from seedream_jax.data.pipeline import PipelineConfig, RecordPipeline
from seedream_jax.models.vae import AutoencoderKL, VAEConfig
from seedream_jax.stages import record_data

WORLD = SR.RecordWorldConfig(S.SyntheticWorldConfig(num_images=24, image_size=32, seed=2), style_probability=0.5,
                             sizes=((32, 32), (24, 40)))
CFG = PipelineConfig(global_batch=4, seed=1, base_resolution=32, bucket_multiple=8, random_crop=False)
BUCKETS = {k: getattr(CFG, k) for k in latent_cache.BUCKET_KEYS}
VAE = VAEConfig(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    SR.write_record_world(WORLD, str(root / "ds"), records_per_shard=10)
    source = arrayrecord_io.ArrayRecordSource(str(root / "ds"))
    params = AutoencoderKL(VAE).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
    encode = record_data.vae_encoder(VAE, params)
    ident = {"stage": "vae", "step": 7, "params_crc32": latent_cache.params_fingerprint(params)}
    cache_dir = latent_cache.default_cache_dir(str(root / "ds"))
    manifest = latent_cache.write_latent_cache(source, cache_dir, encode, BUCKETS, ident, chunk=8)
    return source, encode, ident, cache_dir, manifest


def test_cached_posteriors_equal_encoding_on_the_fly(setup):
    source, encode, ident, cache_dir, manifest = setup
    assert manifest["num_records"] == len(source) and cache_dir.endswith("ds-latents")
    cache = latent_cache.LatentCache(cache_dir)
    cache.check_vae(ident)
    plain = RecordPipeline(source, CFG, 0, 1)
    cached = RecordPipeline(source, CFG, 0, 1, cache=cache)
    shapes = set()
    for _ in range(plain.plan.steps_per_epoch):
        a, b = next(plain), next(cached)
        assert "image" not in b and np.array_equal(a["index"], b["index"]) and list(a["caption"]) == list(b["caption"])
        images = np.round((a["image"] + 1.0) * 127.5).astype(np.uint8)
        mean, logvar = encode(images)
        np.testing.assert_allclose(b["latent_mean"], mean, atol=1e-5)
        np.testing.assert_allclose(b["latent_logvar"], logvar, atol=1e-5)
        shapes.add(b["latent_mean"].shape)
    assert len(shapes) == 2  # both buckets served from the cache


def test_mismatched_cache_is_refused(setup, tmp_path):
    source, encode, ident, cache_dir, _ = setup
    cache = latent_cache.LatentCache(cache_dir)
    with pytest.raises(latent_cache.CacheMismatchError, match="encoded by VAE"):
        cache.check_vae({**ident, "params_crc32": ident["params_crc32"] + 1})
    with pytest.raises(latent_cache.CacheMismatchError, match="bucket settings"):
        RecordPipeline(source, dataclasses.replace(CFG, bucket_multiple=16), 0, 1, cache=cache)
    SR.write_record_world(dataclasses.replace(WORLD, world=dataclasses.replace(WORLD.world, num_images=20)),
                          str(tmp_path / "other"))
    with pytest.raises(latent_cache.CacheMismatchError, match="built for dataset"):
        RecordPipeline(arrayrecord_io.ArrayRecordSource(str(tmp_path / "other")), CFG, 0, 1, cache=cache)
    with pytest.raises(latent_cache.CacheMismatchError, match="not a latent cache"):
        latent_cache.LatentCache(str(tmp_path / "other"))
