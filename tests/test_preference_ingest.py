"""Preference data for users (``data/preference.py``): JSONL and Parquet preference files ingested by
tools/ingest.py into pair records (bad rows skipped and counted by reason, no good row lost), the
world's pairs written in the same format (tools/make_synthetic.py --format pairs), and the
``image_pairs`` data source (chosen image first, exact resume)."""
import json
import os
import sys

import numpy as np
import pytest

from seedream_jax.config_lib import data_section
from seedream_jax.data import arrayrecord_io, ingest_sources, preference, records, sources, synthetic, world_pairs
from test_ingest import _image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import ingest as ingest_tool  # noqa: E402
import make_synthetic  # noqa: E402

WORLD_SEED = 3


def _write(path, data: bytes):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _pairs(out_dir):
    """The pair records of a dataset, in order."""
    return [preference.decode_pair(d) for d in arrayrecord_io.ArrayRecordSource(str(out_dir))]


def _check_pair(pair, prompt, chosen: bytes, rejected: bytes, preferred: str, reason="", source=None):
    assert pair.prompt == prompt and pair.reason == reason and pair.meta["preferred"] == preferred
    assert pair.chosen.image == chosen and pair.rejected.image == rejected  # byte for byte, chosen first
    assert pair.chosen.meta["column"] == f"image_{preferred}"
    if source is not None:
        assert pair.source == source == pair.chosen.source


# -- JSONL: every bad case next to good rows --------------------------------------------------------
def make_jsonl(root):
    """pairs.jsonl with 4 good rows (labels a, B, A, b; one in Chinese; one after all the bad rows) and
    one row of each bad case: missing image file, a line that is not JSON, two unknown labels, a line
    that is not UTF-8, two missing fields, an undecodable image, the same image twice, a URL."""
    imgs = [_image(64 + 8 * (i % 4), 72 + 4 * (i % 3), "JPEG", 100 + i) for i in range(9)]
    for i, data in enumerate(imgs):
        _write(root / "img" / f"{i}.jpg", data)
    _write(root / "img" / "sub" / "8.jpg", imgs[8])
    _write(root / "img" / "broken.jpg", imgs[0][:len(imgs[0]) // 2])

    def row(**kw):
        return json.dumps(kw, ensure_ascii=False).encode()

    lines = [row(prompt="a red circle", image_a="img/0.jpg", image_b="img/1.jpg", preferred="a", reason="sharper"),
             row(prompt="一只猫在桌子上", image_a="img/2.jpg", image_b="img/3.jpg", preferred="B", annotator="u7"),
             row(prompt="two squares", image_a="img/sub/8.jpg", image_b="img/4.jpg", preferred="A", reason=None),
             row(prompt="missing", image_a="img/5.jpg", image_b="img/gone.jpg", preferred="a"),
             b'{"prompt": "not json", "image_a": ',
             row(prompt="tie", image_a="img/5.jpg", image_b="img/6.jpg", preferred="tie"),
             row(prompt="number label", image_a="img/5.jpg", image_b="img/6.jpg", preferred=1),
             b'{"prompt": "caf\xe9", "image_a": "img/5.jpg", "image_b": "img/6.jpg", "preferred": "a"}',
             row(prompt="no label", image_a="img/5.jpg", image_b="img/6.jpg"),
             row(prompt="  ", image_a="img/5.jpg", image_b="img/6.jpg", preferred="b"),
             row(prompt="broken", image_a="img/broken.jpg", image_b="img/6.jpg", preferred="b"),
             row(prompt="same", image_a="img/5.jpg", image_b="img/sub/../5.jpg", preferred="a"),
             row(prompt="remote", image_a="https://example.com/x.jpg", image_b="img/6.jpg", preferred="a"),
             b"",
             row(prompt="last good", image_a="img/6.jpg", image_b="img/7.jpg", preferred="b", key="k-9",
                 source="my_corpus")]
    _write(root / "pairs.jsonl", b"\n".join(lines) + b"\n")
    good = [("pairs.jsonl:0", "a red circle", imgs[0], imgs[1], "a", "sharper", "pairs.jsonl"),
            ("pairs.jsonl:1", "一只猫在桌子上", imgs[3], imgs[2], "b", "", "pairs.jsonl"),
            ("pairs.jsonl:2", "two squares", imgs[8], imgs[4], "a", "", "pairs.jsonl"),
            ("k-9", "last good", imgs[7], imgs[6], "b", "", "my_corpus")]
    skipped = {"missing_file": 1, "bad_manifest_row": 1, "unknown_label": 2, "bad_utf8": 1, "missing_field": 2,
               "undecodable": 1, "same_image": 1, "remote_url": 1}
    return good, skipped


def test_jsonl_bad_rows_are_skipped_and_counted_and_no_good_row_is_lost(tmp_path, capsys):
    good, skipped = make_jsonl(tmp_path / "in")
    args = ["--input", str(tmp_path / "in" / "pairs.jsonl"), "--workers", "1", "--no_progress",
            "--records_per_shard", "3"]
    assert ingest_tool.main(args + ["--out", str(tmp_path / "out"), "--max_skip_fraction", "0.8"]) == 0
    assert "input form: preference" in capsys.readouterr().out
    report = json.load(open(tmp_path / "out" / "ingest_report.json"))
    assert report["skipped"] == skipped, report["examples"]
    assert report["written"] == len(good) and report["items"] == len(good) + sum(skipped.values())
    assert "no 'preferred'" in report["examples"]["missing_field"][0][1]
    assert "'tie'" in report["examples"]["unknown_label"][0][1]
    pairs = _pairs(tmp_path / "out")
    assert [p.key for p in pairs] == [g[0] for g in good]  # input order
    for pair, (_, prompt, chosen, rejected, label, reason, source) in zip(pairs, good):
        _check_pair(pair, prompt, chosen, rejected, label, reason, source)
    assert pairs[1].chosen.captions == {"zh": {"short": "一只猫在桌子上"}} and pairs[1].meta["annotator"] == "u7"
    assert pairs[0].chosen.key == "img/0.jpg" and pairs[0].chosen.width == 64 and pairs[0].chosen.height == 72
    # The same input under the default --max_skip_fraction 0.5: the report, then exit 1 naming the reasons.
    assert ingest_tool.main(args + ["--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert "10 of 14 input items were skipped" in err
    assert "top reasons: missing_field 2, unknown_label 2, bad_manifest_row 1" in err


# -- Parquet: image bytes, Hugging Face Image structs, paths ----------------------------------------
def test_parquet_with_image_bytes_and_structs(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    imgs = [_image(80, 64, "PNG", 200 + i) for i in range(6)]
    data = tmp_path / "in" / "data"
    os.makedirs(data)
    pq.write_table(pa.table({"prompt": ["bytes one", "bytes two"], "image_a": [imgs[0], imgs[2]],
                             "image_b": [imgs[1], imgs[3]], "preferred": ["b", "a"],
                             "reason": ["left is blurry", None], "rating": [0.9, 0.4]}),
                   data / "train-00000-of-00002.parquet")
    _write(tmp_path / "in" / "data" / "loose" / "by_path.png", imgs[5])
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({
        "prompt": ["struct bytes", "struct path", "unknown label", "missing file"],
        "image_a": pa.array([{"bytes": imgs[4], "path": "x.png"}, {"bytes": None, "path": "loose/by_path.png"},
                             {"bytes": imgs[4], "path": None}, {"bytes": imgs[4], "path": None}], struct),
        "image_b": pa.array([{"bytes": imgs[0], "path": None}, {"bytes": imgs[1], "path": None},
                             {"bytes": imgs[0], "path": None}, {"bytes": None, "path": "loose/gone.png"}], struct),
        "preferred": ["A", "b", "both", "a"]}), data / "train-00001-of-00002.parquet")
    kind, files = ingest_sources.resolve_inputs([str(tmp_path / "in")])
    assert kind == "preference" and [os.path.basename(f) for f in files] == ["train-00000-of-00002.parquet",
                                                                             "train-00001-of-00002.parquet"]
    assert ingest_tool.main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--workers", "2",
                             "--no_progress", "--pool", "thread"]) == 0
    report = json.load(open(tmp_path / "out" / "ingest_report.json"))
    assert report["skipped"] == {"unknown_label": 1, "missing_file": 1} and report["written"] == 4
    pairs = _pairs(tmp_path / "out")
    assert [p.key for p in pairs] == ["train-00000-of-00002.parquet:0", "train-00000-of-00002.parquet:1",
                                      "train-00001-of-00002.parquet:0", "train-00001-of-00002.parquet:1"]
    _check_pair(pairs[0], "bytes one", imgs[1], imgs[0], "b", "left is blurry", "train-00000-of-00002.parquet")
    _check_pair(pairs[1], "bytes two", imgs[2], imgs[3], "a")
    _check_pair(pairs[2], "struct bytes", imgs[4], imgs[0], "a")
    _check_pair(pairs[3], "struct path", imgs[1], imgs[5], "b")
    assert pairs[0].meta["rating"] == 0.9 and pairs[0].chosen.key == "train-00000-of-00002.parquet:0:image_b"
    assert pairs[3].rejected.key == "loose/by_path.png" and pairs[3].chosen.image_format == "png"


# -- the world writes the same format; the image_pairs source -------------------------------------
@pytest.fixture(scope="module")
def world_dataset(tmp_path_factory):
    """12 world pairs (all kinds, en and zh) written by make_synthetic, ingested by tools/ingest.py."""
    root = tmp_path_factory.mktemp("world")
    make_synthetic.main(["--format", "pairs", "--out", str(root / "pairs"), "--num_pairs", "12",
                         "--image_size", "64", "--seed", str(WORLD_SEED)])
    assert ingest_tool.main(["--input", str(root / "pairs"), "--out", str(root / "ds"), "--workers", "1",
                             "--no_progress", "--records_per_shard", "5"]) == 0
    return root


def _source(path, batch, **kw):
    cfg = data_section(format="image_pairs", path=str(path), seed=1, **kw)
    return sources.open_source(cfg, "/unused", batch, yields="image_pairs")


def test_world_pairs_round_trip_chosen_first(world_dataset):
    rows = [json.loads(line) for line in open(world_dataset / "pairs" / "pairs.jsonl", encoding="utf-8")]
    assert {r["language"] for r in rows} == {"en", "zh"} and {r["preferred"] for r in rows} == {"a", "b"}
    assert {r["kind"] for r in rows} == set(world_pairs.KINDS)
    src = _source(world_dataset / "ds", 12, image_size=64, random_crop=False)
    batch = next(src)
    assert batch["chosen"].shape == batch["rejected"].shape == (12, 64, 64, 3) and batch["chosen"].dtype == np.uint8
    assert sorted(batch["index"].tolist()) == list(range(12))
    for r, i in enumerate(batch["index"]):
        pair = world_pairs.make_pair(WORLD_SEED, "train", int(i))
        lang = world_pairs.LANGUAGES[(int(i) // 6) % 2]
        assert batch["prompt"][r] == pair.captions(lang)[0]
        np.testing.assert_array_equal(batch["chosen"][r], synthetic.render_scene(pair.scene, 64))
        np.testing.assert_array_equal(batch["rejected"][r], synthetic.render_scene(pair.negative, 64))
    meta = _pairs(world_dataset / "ds")[0]
    assert meta.source == "world_pairs/train" and meta.key == "world-train-000000" and meta.meta["kind"] == "colour"


def test_image_pairs_resume_is_exact_and_corrupt_records_are_replaced(world_dataset, tmp_path):
    def take(src, n):
        return [next(src) for _ in range(n)]

    kw = dict(image_size=48, random_crop=True, flip_prob=0.5)
    src = _source(world_dataset / "ds", 4, **kw)
    take(src, 2)
    state = json.loads(json.dumps(src.get_state()))
    expected = take(src, 4)  # crosses an epoch (12 pairs, 3 batches each)
    fresh = _source(world_dataset / "ds", 4, **kw)
    fresh.set_state(state)
    for want, got in zip(expected, take(fresh, 4)):
        assert want["prompt"] == got["prompt"] and want["index"].tolist() == got["index"].tolist()
        np.testing.assert_array_equal(want["chosen"], got["chosen"])
        np.testing.assert_array_equal(want["rejected"], got["rejected"])
        assert want["chosen"].shape == (4, 48, 48, 3)
    with pytest.raises(ValueError, match="num_records=11"):
        fresh.set_state(dict(state, num_records=11))
    # A pair whose image bytes were damaged after ingestion: logged, counted and replaced by the next one.
    encoded = list(arrayrecord_io.ArrayRecordSource(str(world_dataset / "ds")))[:4]
    encoded[1] = encoded[1][:-10] + bytes(10)
    writer = arrayrecord_io.ShardedWriter(str(tmp_path / "damaged"), 10)
    for data in encoded:
        writer.write(data)
    writer.close()
    damaged = _source(tmp_path / "damaged", 4, image_size=32)
    batch = next(damaged)
    assert sorted(batch["index"].tolist()) == [0, 2, 2, 3] and batch["chosen"].shape == (4, 32, 32, 3)
    assert damaged.skipped == 1
    # An image dataset is refused by name.
    image = _image(64, 64, "PNG", 1)
    writer = arrayrecord_io.ShardedWriter(str(tmp_path / "images"), 10)
    writer.write(records.encode_record(records.Record(key="x", image=image, image_format="png", width=64,
                                                      height=64, captions={"en": {"short": "x"}})))
    writer.close()
    with pytest.raises(ValueError, match="does not hold preference pairs"):
        _source(tmp_path / "images", 1)
