"""The Grain record pipeline: process shards, buckets, exact resume (also through Orbax), corrupt records."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from seedream_jax.checkpoint.manager import Checkpointer
from seedream_jax.data import arrayrecord_io, captions, records
from seedream_jax.data import synthetic as S
from seedream_jax.data import synthetic_records as SR
from seedream_jax.data.pipeline import PipelineConfig, RecordPipeline

WORLD = SR.RecordWorldConfig(S.SyntheticWorldConfig(num_images=48, image_size=32, seed=1), style_probability=0.5,
                             sizes=((32, 32), (24, 40)))
CFG = PipelineConfig(global_batch=8, seed=3, base_resolution=32, bucket_multiple=8, random_crop=True,
                     caption_types=("short", "long", "text"), caption_type_probs=(0.4, 0.4, 0.2))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("world") / "ds")
    SR.write_record_world(WORLD, path, records_per_shard=20)
    return arrayrecord_io.ArrayRecordSource(path)


def _take(pipe, n):
    return [next(pipe) for _ in range(n)]


def test_process_shards_are_disjoint_cover_each_batch_and_share_its_bucket(world):
    pipes = [RecordPipeline(world, CFG, process_index=p, process_count=2) for p in range(2)]
    whole = RecordPipeline(world, CFG, process_index=0, process_count=1)
    steps = whole.plan.steps_per_epoch
    assert steps == sum(np.bincount(whole.bucket_ids) // 8) and len(set(whole.bucket_ids)) == 2
    seen = []
    for k in range(steps):
        parts = [next(p) for p in pipes]
        full = next(whole)
        got = [set(part["index"].tolist()) for part in parts]
        assert not got[0] & got[1] and got[0] | got[1] == set(full["index"].tolist())
        for r in range(8):  # row r of the global batch comes from process r % 2
            part = parts[r % 2]
            assert part["index"][r // 2] == full["index"][r]
            np.testing.assert_array_equal(part["image"][r // 2], full["image"][r])
            assert part["caption"][r // 2] == full["caption"][r]
        bucket = whole.bucket_of(k)
        assert full["image"].shape == (8, *bucket, 3)
        assert {tuple(whole.bucket_table[b]) for b in whole.bucket_ids[full["index"]]} == {bucket}
        seen += full["index"].tolist()
    assert len(seen) == len(set(seen)) == whole.plan.records_per_epoch()  # one epoch: each record at most once
    assert {whole.bucket_of(k) for k in range(steps)} == {(32, 32), (24, 40)}
    epoch2 = [whole.plan.batch(steps + k)[1].tolist() for k in range(steps)]
    assert epoch2 != [whole.plan.batch(k)[1].tolist() for k in range(steps)]  # each epoch reshuffles


def test_examples_are_the_records_fitted_to_their_bucket_with_sampled_captions(world):
    pipe = RecordPipeline(world, dataclasses.replace(CFG, random_crop=False, cfg_drop_prob=0.0), 0, 1)
    batch = next(pipe)
    for idx, img, cap in zip(batch["index"], batch["image"], batch["caption"]):
        rec = records.decode_record(world[int(idx)])
        expected = records.decode_image(rec.image)  # the world's sizes are buckets: no resize
        np.testing.assert_allclose(img, expected.astype(np.float32) / 127.5 - 1.0, atol=1e-6)
        assert str(cap) in {t for by in rec.captions.values() for t in by.values()}
    assert pipe.skipped == 0


def test_worker_threads_give_the_inline_batches(world):
    a = _take(RecordPipeline(world, CFG, 0, 1), 3)
    b = _take(RecordPipeline(world, dataclasses.replace(CFG, num_workers=3, prefetch=2), 0, 1), 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def _check_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_resume_from_state_and_through_an_orbax_checkpoint(world, tmp_path):
    cfg = dataclasses.replace(CFG, num_workers=2)
    pipe = RecordPipeline(world, cfg, 1, 2)
    _take(pipe, 4)
    state = pipe.get_state()
    expected = _take(pipe, 5)  # crosses the epoch boundary (steps_per_epoch = 5)
    fresh = RecordPipeline(world, cfg, 1, 2)
    fresh.set_state(state)
    _check_same(_take(fresh, 5), expected)

    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(4, {"w": jnp.zeros(2)}, state, force=True)
    ckpt.wait()
    _, restored = ckpt.restore({"w": jnp.zeros(2)})
    ckpt.close()
    assert restored == state
    again = RecordPipeline(world, cfg, 1, 2)
    again.set_state(restored)
    _check_same(_take(again, 5), expected)
    with pytest.raises(ValueError, match="seed=3"):
        RecordPipeline(world, dataclasses.replace(cfg, seed=4), 1, 2).set_state(state)


def test_corrupt_record_is_counted_and_replaced_from_its_bucket(world):
    data = [world[i] for i in range(len(world))]
    pipe = RecordPipeline(data, CFG, 0, 1)
    victim = int(pipe.plan.batch(0)[1][2])
    data[victim] = data[victim][:-20] + b"\0" * 20  # image bytes damaged: CRC mismatch
    batch = next(pipe)
    assert pipe.skipped == 1 and victim not in batch["index"].tolist()
    replacement = int(batch["index"][2])
    assert pipe.bucket_ids[replacement] == pipe.bucket_ids[victim]


def test_skipped_counts_only_yielded_batches_with_prefetching_threads(world):
    data = [world[i] for i in range(len(world))]
    pipe = RecordPipeline(data, dataclasses.replace(CFG, num_workers=2, prefetch=2), 0, 1)
    victim = int(pipe.plan.batch(1)[1][0])
    data[victim] = data[victim][:-20] + b"\0" * 20
    next(pipe)  # batch 1 (holding the victim) is decoded ahead by the threads, not yielded yet
    assert pipe.skipped == 0
    assert victim not in next(pipe)["index"].tolist() and pipe.skipped == 1


def test_caption_fallback_and_one_implementation():
    data_cfg = dataclasses.replace(CFG, caption_languages=("zh", "en"), language_probs=(1.0, 0.0),
                                   caption_types=("long",), caption_type_probs=(1.0,), cfg_drop_prob=0.0)
    caps = [{"en": {"long": "en long"}}, {"zh": {"long": "zh long"}}]
    assert captions.choose_captions(caps, np.random.default_rng(0), data_cfg) == ["en long", "zh long"]
    with pytest.raises(KeyError, match="record 'k1'.*no caption"):
        captions.choose_captions([{"en": {"short": "x"}}], np.random.default_rng(0), data_cfg, keys=["k1"])
    from seedream_jax.data import sources  # the in-memory synthetic source draws with the same function
    assert sources.choose_captions is captions.choose_captions
