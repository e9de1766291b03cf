"""Sharded ArrayRecord writer and reader: layout, resume after interruption, Grain and TFDS sources."""
import os
import pickle

import pytest

from seedream_jax.data import arrayrecord_io, records


def _encoded(i: int) -> bytes:
    rec = records.Record(key=f"r{i:04d}", image=bytes([0xFF, 0xD8, 0xFF]) + bytes([i % 256]) * (50 + i),
                         image_format="jpeg", width=10 + i, height=20, captions={"en": {"short": f"caption {i}"}})
    return records.encode_record(rec)


def _write(out_dir, n, per_shard=4, stop_after=None, config=None):
    """Writes records 0..n-1 resuming where the directory left off; raises after ``stop_after`` writes."""
    w = arrayrecord_io.ShardedWriter(str(out_dir), per_shard, config=config or {"n": n})
    start = (w.resume_state or {"next": 0})["next"]
    assert start == w.records_done
    written = 0
    try:
        for i in range(start, n):
            if stop_after is not None and written == stop_after:
                raise KeyboardInterrupt("simulated interruption")
            w.write(_encoded(i), {"next": i + 1})
            written += 1
    except KeyboardInterrupt:
        w.abort()
        raise
    return w.close(summary={"n": n})


def _files(d):
    return {name: open(os.path.join(d, name), "rb").read() for name in sorted(os.listdir(d))}


def test_shards_manifest_and_random_access(tmp_path):
    manifest = _write(tmp_path / "ds", 10, per_shard=4)
    assert [s["num_records"] for s in manifest["shards"]] == [4, 4, 2]
    assert sorted(os.listdir(tmp_path / "ds")) == ["manifest.json", "records-00000.array_record",
                                                   "records-00001.array_record", "records-00002.array_record"]
    src = arrayrecord_io.ArrayRecordSource(str(tmp_path / "ds"))
    assert len(src) == 10
    assert src[7] == _encoded(7) and src[-1] == _encoded(9)
    assert src.__getitems__([9, 0, 5]) == [_encoded(9), _encoded(0), _encoded(5)]
    with pytest.raises(IndexError):
        src[10]
    dec = arrayrecord_io.ArrayRecordSource(str(tmp_path / "ds"), decode=True)
    assert [r.key for r in dec] == [f"r{i:04d}" for i in range(10)]
    clone = pickle.loads(pickle.dumps(dec))
    assert clone[3].key == "r0003"
    _write(tmp_path / "ds2", 3)
    both = arrayrecord_io.ArrayRecordSource([str(tmp_path / "ds"), str(tmp_path / "ds2")])
    assert len(both) == 13 and both[12] == _encoded(2)


def test_resume_after_interruption_gives_identical_shards(tmp_path):
    clean = tmp_path / "clean"
    _write(clean, 23, per_shard=5)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _write(resumed, 23, per_shard=5, stop_after=13)  # 2 shards finished, 3 records in the open one
    names = sorted(os.listdir(resumed))
    assert "manifest.json" not in names and "progress.json" in names
    assert "records-00002.array_record.tmp" in names
    with pytest.raises(arrayrecord_io.DatasetError, match="interrupted"):
        arrayrecord_io.ArrayRecordSource(str(resumed))
    w = arrayrecord_io.ShardedWriter(str(resumed), 5, config={"n": 23})
    assert w.records_done == 10 and w.resume_state == {"next": 10}
    assert "records-00002.array_record.tmp" not in os.listdir(resumed)  # the partial shard is discarded
    with pytest.raises(KeyboardInterrupt):  # interrupted a second time, exactly at a shard boundary
        _write(resumed, 23, per_shard=5, stop_after=5)
    _write(resumed, 23, per_shard=5)
    assert _files(resumed) == _files(clean)


def test_leftovers_of_a_killed_run_are_discarded(tmp_path):
    clean = tmp_path / "clean"
    _write(clean, 9, per_shard=3)
    d = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _write(d, 9, per_shard=3, stop_after=3)
    # A kill between renaming shard 1 and updating progress.json leaves an unlisted shard and a temp file.
    (d / "records-00001.array_record").write_bytes(b"garbage")
    (d / "progress.json.tmp").write_text("{")
    _write(d, 9, per_shard=3)
    assert _files(d) == _files(clean)


def test_rerun_with_other_settings_is_refused_and_complete_is_kept(tmp_path):
    d = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        _write(d, 9, per_shard=3, stop_after=4)
    with pytest.raises(arrayrecord_io.DatasetError, match="different settings"):
        arrayrecord_io.ShardedWriter(str(d), 4, config={"n": 9})
    with pytest.raises(arrayrecord_io.DatasetError, match="different settings"):
        arrayrecord_io.ShardedWriter(str(d), 3, config={"n": 10})
    _write(d, 9, per_shard=3)
    w = arrayrecord_io.ShardedWriter(str(d), 3, config={"n": 9})
    assert w.complete and w.records_done == 9
    with pytest.raises(arrayrecord_io.DatasetError, match="already complete"):
        w.write(_encoded(0))


def test_source_feeds_grain(tmp_path):
    grain = pytest.importorskip("grain")
    _write(tmp_path / "ds", 12, per_shard=5)
    src = arrayrecord_io.ArrayRecordSource(str(tmp_path / "ds"))
    ds = grain.MapDataset.source(src).shuffle(seed=0).map(lambda b: records.decode_header(b)["key"])
    keys = [ds[i] for i in range(len(ds))]
    assert sorted(keys) == [f"r{i:04d}" for i in range(12)] and keys != sorted(keys)
    loader = grain.DataLoader(data_source=src, sampler=grain.samplers.IndexSampler(
        num_records=len(src), shuffle=False, num_epochs=1, shard_options=grain.sharding.NoSharding()),
        operations=[], worker_count=0)
    assert [records.decode_header(b)["key"] for b in loader] == [f"r{i:04d}" for i in range(12)]


def test_tfds_data_source_round_trip(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from seedream_jax.data import tfds_builder
    _write(tmp_path / "ds", 7, per_shard=3)
    tfds_builder.build(str(tmp_path / "ds"), str(tmp_path / "tfds"))
    src = tfds_builder.data_source(str(tmp_path / "tfds"))
    assert len(src) == 7
    got = sorted(src[i] for i in range(len(src)))
    assert got == sorted(_encoded(i) for i in range(7))  # the same records, byte for byte
    import tensorflow_datasets as tfds
    raw = tfds.data_source("seedream_records", data_dir=str(tmp_path / "tfds"))["train"]
    ex = raw[0]
    assert records.decode_record(ex["record"]).key == ex["key"].decode()  # TFDS returns Text as bytes
    dec = tfds_builder.data_source(str(tmp_path / "tfds"), decode=True)
    assert sorted(r.key for r in dec.__getitems__(list(range(7)))) == [f"r{i:04d}" for i in range(7)]
