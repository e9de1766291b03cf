"""Ingestion of the layouts people have: Hugging Face imagefolder (metadata.jsonl / metadata.csv),
Hugging Face datasets Parquet shards, COCO captions, img2dataset output (WebDataset and Parquet),
CSV manifests; form detection; the exit codes of tools/ingest.py and tools/curate.py.

Every fixture mixes good rows with bad ones (missing file, bad UTF-8, empty caption, unknown column
layout, and what the form adds); each test checks that every good row is kept exactly once, byte
for byte, and that every bad one is counted under its reason.
"""
import csv
import dataclasses
import io
import json
import os
import sys
import tarfile

import pytest

from seedream_jax.data import arrayrecord_io, curation, ingest, ingest_sources, records
from test_ingest import _image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import curate as curate_tool  # noqa: E402
import ingest as ingest_tool  # noqa: E402

CFG = ingest.IngestConfig(min_side=64, max_aspect=4.0, records_per_shard=3, workers=1)


def _images(n, seed=0, fmt="JPEG"):
    """n distinct small images (64..96 px), as encoded bytes."""
    return [_image(64 + 8 * (i % 4), 72 + 4 * (i % 3), fmt, seed + i) for i in range(n)]


def _write(path, data: bytes):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def check(out_dir, report, good: dict, skipped: dict):
    """``good``: {key: (image bytes, captions, meta subset or None)}; every one written exactly once,
    byte-exact, nothing else written; ``report["skipped"] == skipped``. Returns the records by key."""
    got = list(arrayrecord_io.ArrayRecordSource(str(out_dir), decode=True))
    assert sorted(r.key for r in got) == sorted(good), [r.key for r in got]
    assert report["skipped"] == skipped, report["examples"]
    assert report["written"] == len(good) and report["items"] == len(good) + sum(skipped.values())
    by_key = {r.key: r for r in got}
    for key, (data, captions, meta) in good.items():
        rec = by_key[key]
        assert rec.image == data, key
        assert rec.captions == captions, (key, rec.captions)
        if meta is not None:
            assert {k: rec.meta.get(k) for k in meta} == meta, (key, rec.meta)
    return by_key


def run_ingest(tmp_path, inputs, form="auto", out="out", **cfg_kw):
    kind, files = ingest_sources.resolve_inputs([str(p) for p in inputs], form)
    report = ingest.ingest(kind, files, str(tmp_path / out), dataclasses.replace(CFG, **cfg_kw), progress=False,
                           log=lambda *_: None)
    return kind, report


# -- Hugging Face imagefolder ---------------------------------------------------------------------
def make_imagefolder_jsonl(root):
    """metadata.jsonl with file_name + text: 3 good rows (one in a sub-folder), then a missing file,
    a line that is not UTF-8, an empty caption, an unknown column layout, and one image no row names."""
    imgs = _images(5, seed=10)
    _write(root / "a.jpg", imgs[0])
    _write(root / "b.jpg", imgs[1])
    _write(root / "sub" / "c.jpg", imgs[2])
    _write(root / "e.jpg", imgs[3])
    _write(root / "unlisted.jpg", imgs[4])
    lines = [json.dumps({"file_name": "a.jpg", "text": "a red circle", "aesthetic_note": "nice"}).encode(),
             json.dumps({"file_name": "b.jpg", "text": "一只猫", "score_clip": 0.3}).encode(),
             json.dumps({"file_name": "sub/c.jpg", "text": "in a sub-folder", "caption": "not the caption"}).encode(),
             json.dumps({"file_name": "gone.jpg", "text": "missing file"}).encode(),
             b'{"file_name": "e.jpg", "text": "caf\xe9 latin-1"}',
             json.dumps({"file_name": "e.jpg", "text": "   "}).encode(),
             json.dumps({"img": "a.jpg", "desc": "unknown layout"}).encode()]
    _write(root / "metadata.jsonl", b"\n".join(lines) + b"\n")
    good = {"a.jpg": (imgs[0], {"en": {"short": "a red circle"}}, {"aesthetic_note": "nice"}),
            "b.jpg": (imgs[1], {"zh": {"short": "一只猫"}}, None),
            "sub/c.jpg": (imgs[2], {"en": {"short": "in a sub-folder"}}, {"caption": "not the caption"})}
    skipped = {"missing_file": 1, "bad_utf8": 1, "empty_caption": 1, "bad_manifest_row": 1, "missing_caption": 1}
    return good, skipped


def test_imagefolder_metadata_jsonl(tmp_path):
    good, skipped = make_imagefolder_jsonl(tmp_path / "in")
    kind, report = run_ingest(tmp_path, [tmp_path / "in"])
    assert kind == "imagefolder"
    recs = check(tmp_path / "out", report, good, skipped)
    assert recs["b.jpg"].scores == {"clip": 0.3}
    assert "it has ['desc', 'img']" in report["examples"]["bad_manifest_row"][0][1]
    assert report["examples"]["missing_caption"][0][0] == "unlisted.jpg"


def test_imagefolder_metadata_csv_in_splits_with_caption_column(tmp_path):
    """train/ and test/ each with a metadata.csv: a 'prompt' caption column (--caption_column), an
    empty caption cell, a cell that is not UTF-8, a missing file, and a split with an unknown layout."""
    root = tmp_path / "in"
    imgs = _images(4, seed=30, fmt="PNG")
    for name, data in zip(("train/x.png", "train/y.png", "test/z.png", "train/u.png"), imgs):
        _write(root / name, data)
    _write(root / "train" / "metadata.csv", (
        "file_name,prompt,text,score_aesthetic\n"
        "x.png,\"a quoted, comma caption\",ignored text,5.5\n"
        "y.png,second image,,\n"
        "missing.png,no such file,,\n"
        "u.png,,,\n"  # empty caption cell
    ).encode() + b"u.png,caf\xe9,,\n")  # the same image again with a caption that is not UTF-8
    _write(root / "test" / "metadata.csv", "file_name,prompt\nz.png,third image\n".encode())
    _write(root / "odd" / "metadata.csv", "picture,description\np1.png,unknown layout\np2.png,again\n".encode())
    good = {"train/x.png": (imgs[0], {"en": {"short": "a quoted, comma caption"}}, {"text": "ignored text"}),
            "train/y.png": (imgs[1], {"en": {"short": "second image"}}, None),
            "test/z.png": (imgs[2], {"en": {"short": "third image"}}, None)}
    skipped = {"missing_file": 1, "empty_caption": 1, "bad_utf8": 1, "bad_manifest_row": 2}
    kind, report = run_ingest(tmp_path, [root], caption_column="prompt")
    assert kind == "imagefolder"
    recs = check(tmp_path / "out", report, good, skipped)
    assert recs["train/x.png"].scores == {"aesthetic": 5.5}
    assert "text" not in recs["train/y.png"].meta  # an empty cell is an absent value


# -- Hugging Face datasets Parquet shards ---------------------------------------------------------
def test_hf_datasets_parquet_shards(tmp_path):
    """A folder of shards with an Image struct {bytes, path} and a 'prompt' caption column: one written
    by ``datasets.Dataset.to_parquet`` when installed (else by pyarrow, same schema), one by pyarrow
    holding a caption that is not UTF-8, and one shard of an unknown column layout."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    imgs = _images(5, seed=50, fmt="PNG")
    _write(tmp_path / "loose" / "by_path.png", imgs[2])
    _write(tmp_path / "loose" / "gone.png", imgs[4])
    rows = [{"image": {"bytes": imgs[0], "path": "one.png"}, "prompt": "first"},
            {"image": {"bytes": imgs[1], "path": None}, "prompt": "第二张"},
            {"image": {"bytes": None, "path": str(tmp_path / "loose" / "by_path.png")}, "prompt": "by path"},
            {"image": {"bytes": None, "path": str(tmp_path / "loose" / "gone.png")}, "prompt": "missing file"},
            {"image": {"bytes": imgs[3], "path": None}, "prompt": ""}]
    data = tmp_path / "in" / "data"
    os.makedirs(data)
    try:
        import datasets
        ds = datasets.Dataset.from_list(rows, features=datasets.Features(
            {"image": datasets.Image(), "prompt": datasets.Value("string")}))
        ds.to_parquet(str(data / "train-00000-of-00003.parquet"))
        writer = "datasets"
    except ImportError:
        pq.write_table(pa.Table.from_pylist(rows), data / "train-00000-of-00003.parquet")
        writer = "pyarrow"
    os.remove(tmp_path / "loose" / "gone.png")  # deleted after the shard was written
    schema = pq.read_schema(data / "train-00000-of-00003.parquet")
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    # Shard 2: the same schema; its second caption is not UTF-8 (string buffers written raw).
    text = b"fine" + b"caf\xe9"
    prompts = pa.Array.from_buffers(pa.string(), 2, [None, pa.array([0, 4, 8], pa.int32()).buffers()[1],
                                                     pa.py_buffer(text)])
    image = pa.array([{"bytes": imgs[1][:-1] + imgs[1][-1:], "path": "p.png"}, {"bytes": imgs[0], "path": None}],
                     schema.field("image").type)
    pq.write_table(pa.table({"image": image, "prompt": prompts}), data / "train-00001-of-00003.parquet")
    # Shard 3: an unknown column layout.
    pq.write_table(pa.table({"picture": [imgs[0], imgs[1]], "description": ["x", "y"]}),
                   data / "train-00002-of-00003.parquet")
    kind, report = run_ingest(tmp_path, [tmp_path / "in"], caption_column="prompt")
    assert kind == "parquet", writer
    good = {"train-00000-of-00003.parquet:0": (imgs[0], {"en": {"short": "first"}}, None),
            "train-00000-of-00003.parquet:1": (imgs[1], {"zh": {"short": "第二张"}}, None),
            str(tmp_path / "loose" / "by_path.png"): (imgs[2], {"en": {"short": "by path"}}, None),
            "train-00001-of-00003.parquet:0": (imgs[1], {"en": {"short": "fine"}}, None)}
    skipped = {"missing_file": 1, "empty_caption": 1, "bad_utf8": 1, "bad_manifest_row": 2}
    check(tmp_path / "out", report, good, skipped)
    print(f"HF Parquet shards written by {writer}: {report['written']} kept, skipped {report['skipped']}")


# -- COCO captions --------------------------------------------------------------------------------
def test_coco_captions(tmp_path):
    """annotations/captions_val2017.json + val2017/ (found without --image_root): several captions of one
    image stay in one record (annotation-id order), bad rows counted."""
    root = tmp_path / "coco"
    imgs = _images(6, seed=70)
    names = [f"{i:012d}.jpg" for i in range(1, 7)]
    for name, data in zip(names, imgs):
        if name != names[3]:  # image 4's file is missing
            _write(root / "val2017" / name, data)
    images = [{"id": i + 1, "file_name": n, "width": 1, "height": 1, "coco_url": f"http://x/{n}", "license": 3}
              for i, n in enumerate(names)]
    images.append({"id": 99, "name": "no_file_name.jpg"})  # an unknown layout
    anns = [(11, 1, "a man riding a horse"), (5, 1, "A horse and its rider."), (12, 1, "  "),
            (20, 2, "two cats"), (30, 3, "three dogs"), (31, 3, "dogs, three"), (40, 4, "the missing one"),
            (50, 5, "__BAD__"), (60, 6, " "), (70, 42, "orphan caption")]  # image 7 (id 99) has none
    ann_json = [{"id": a, "image_id": i, "caption": c} for a, i, c in reversed(anns)]
    blob = json.dumps({"info": {}, "licenses": [], "images": images, "annotations": ann_json}).encode()
    _write(root / "annotations" / "captions_val2017.json", blob.replace(b"__BAD__", b"caf\xe9"))
    kind, report = run_ingest(tmp_path, [root])
    assert kind == "coco"
    good = {names[0]: (imgs[0], {"en": {"short": "A horse and its rider."}},
                       {"alt_captions": ["a man riding a horse"], "coco_image_id": 1,
                        "coco_url": f"http://x/{names[0]}"}),
            names[1]: (imgs[1], {"en": {"short": "two cats"}}, {"alt_captions": None}),
            names[2]: (imgs[2], {"en": {"short": "three dogs"}}, {"alt_captions": ["dogs, three"]})}
    skipped = {"missing_file": 1, "bad_utf8": 1, "empty_caption": 1, "bad_manifest_row": 2}
    check(tmp_path / "out", report, good, skipped)
    with pytest.raises(ValueError, match="caption_column does not apply"):
        run_ingest(tmp_path, [root / "annotations" / "captions_val2017.json"], out="o2", caption_column="text")
    # An instances file is refused naming what it holds.
    _write(tmp_path / "instances_val2017.json", json.dumps({"images": [], "annotations": [{"bbox": [1]}]}).encode())
    with pytest.raises(ValueError, match="annotations have no 'caption'"):
        run_ingest(tmp_path, [tmp_path / "instances_val2017.json"], form="coco", out="o3")


# -- img2dataset ----------------------------------------------------------------------------------
def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _i2d_json(key, caption, url, **kw):
    return json.dumps({"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
                       "width": 64, "height": 64, "original_width": 640, "original_height": 640, **kw}).encode()


def test_img2dataset_webdataset_output(tmp_path):
    """img2dataset's webdataset output folder: tars, a URL-listing .parquet and stats .json beside them
    (the folder is read as its tars). Bad samples: url only, no image and no url, caption not UTF-8,
    empty caption, members of an unknown layout."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    out = tmp_path / "i2d"
    imgs = _images(4, seed=90)
    members = []
    for i, (cap, data) in enumerate(zip(["a dog", "a cat", "a bird"], imgs)):
        k = f"00000000{i}"
        members += [(f"{k}.jpg", data), (f"{k}.txt", cap.encode()), (f"{k}.json", _i2d_json(k, cap, f"http://e/{i}"))]
    members += [("000000003.txt", b"url only"), ("000000003.json", _i2d_json("000000003", "url only", "http://e/3")),
                ("000000004.txt", b"no image, no url"), ("000000004.json", b'{"caption": "no image, no url"}'),
                ("000000005.jpg", imgs[3]), ("000000005.txt", b"caf\xe9"),
                ("000000006.jpg", imgs[3]), ("000000006.txt", b" \n"),
                ("000000007.cls", b"3"), ("000000007.bin", b"\x00\x01")]
    os.makedirs(out)
    _tar(out / "00000.tar", members)
    pq.write_table(pa.table({"url": ["http://e/0", "http://e/9"], "caption": ["a dog", "failed"],
                             "status": ["success", "failed_to_download"]}), out / "00000.parquet")
    _write(out / "00000_stats.json", b'{"count": 9}')
    kind, report = run_ingest(tmp_path, [out])
    assert kind == "webdataset"
    good = {"000000000": (imgs[0], {"en": {"short": "a dog"}}, {"url": "http://e/0", "original_width": 640}),
            "000000001": (imgs[1], {"en": {"short": "a cat"}}, {"url": "http://e/1", "status": "success"}),
            "000000002": (imgs[2], {"en": {"short": "a bird"}}, None)}
    skipped = {"remote_url": 1, "missing_file": 2, "bad_utf8": 1, "empty_caption": 1}
    check(tmp_path / "out", report, good, skipped)


def test_img2dataset_parquet_output(tmp_path):
    """img2dataset's parquet output: jpg bytes beside caption/url/key/width/height/status; a failed download
    (url only) is remote_url; plus a file of an unknown column layout."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    imgs = _images(3, seed=110)
    n = 7
    table = pa.table({
        "key": [f"00000000{i}" for i in range(n)],
        "url": [f"http://e/{i}" for i in range(n - 1)] + [None],
        "caption": ["first", "second", "third", "failed one", "__BAD__", "", "no image no url"],
        "status": ["success"] * 3 + ["failed_to_download"] + ["success"] * 3,
        "error_message": [None] * 3 + ["HTTP 404"] + [None] * 3,
        "width": [64] * n, "height": [64] * n, "original_width": [640] * n, "original_height": [480] * n,
        "exif": ["{}"] * n, "sha256": ["ab"] * n,
        "jpg": [imgs[0], imgs[1], imgs[2], None, imgs[0], imgs[1], None]})
    os.makedirs(tmp_path / "in")
    pq.write_table(table, tmp_path / "in" / "00000.parquet", compression="none")
    raw = (tmp_path / "in" / "00000.parquet").read_bytes()
    assert raw.count(b"__BAD__") == 1  # plain-encoded: patch the caption into bytes that are not UTF-8
    (tmp_path / "in" / "00000.parquet").write_bytes(raw.replace(b"__BAD__", b"caf\xe9\xff\xfe\xfd"))
    pq.write_table(pa.table({"URL": ["http://e/x"], "TEXT": ["unknown layout"]}), tmp_path / "in" / "00001.parquet")
    kind, report = run_ingest(tmp_path, [tmp_path / "in"])
    assert kind == "parquet"
    good = {"000000000": (imgs[0], {"en": {"short": "first"}}, {"url": "http://e/0", "original_height": 480}),
            "000000001": (imgs[1], {"en": {"short": "second"}}, None),
            "000000002": (imgs[2], {"en": {"short": "third"}}, {"sha256": "ab"})}
    skipped = {"remote_url": 1, "bad_utf8": 1, "empty_caption": 1, "missing_file": 1, "bad_manifest_row": 1}
    check(tmp_path / "out", report, good, skipped)
    assert "HTTP 404" in report["examples"]["remote_url"][0][1]


# -- CSV manifests --------------------------------------------------------------------------------
def test_csv_manifest_has_the_jsonl_columns(tmp_path):
    root = tmp_path / "in"
    imgs = _images(4, seed=130, fmt="PNG")
    for i, data in enumerate(imgs):
        _write(root / "img" / f"{i}.png", data)
    with open(root / "m.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption", "caption_zh", "long_en", "score_aesthetic", "source", "captions", "url"])
        w.writerow(["img/0.png", "a square", "一个方块", "", "6.5", "mine", "", "http://x/0"])
        w.writerow(["img/1.png", "", "只有中文", "", "", "", "", ""])  # empty cells are absent values
        w.writerow(["img/2.png", "", "", "", "", "", json.dumps({"en": {"style": "watercolour"}}), ""])
        w.writerow(["img/9.png", "missing file", "", "", "", "", "", ""])
        w.writerow(["img/3.png", "  ", "", "", "", "", "", ""])
        w.writerow(["img/3.png", "", "", "", "7", "", "", ""])  # no caption cell filled: an empty caption
        w.writerow(["img/3.png", "one", "two", "", "", "", "", "", "an extra cell"])
    with open(root / "m.csv", "ab") as f:
        f.write(b"img/3.png,caf\xe9,,,,,,\n")
    _write(root / "other.csv", b"image_url,alt\nhttp://x/1,unknown layout\n")
    kind, report = run_ingest(tmp_path, [root / "m.csv", root / "other.csv"])
    assert kind == "csv"
    good = {"img/0.png": (imgs[0], {"en": {"short": "a square"}, "zh": {"short": "一个方块"}},
                          {"url": "http://x/0"}),
            "img/1.png": (imgs[1], {"zh": {"short": "只有中文"}}, {"url": None, "source": None}),
            "img/2.png": (imgs[2], {"en": {"style": "watercolour"}}, None)}
    skipped = {"empty_caption": 2, "missing_file": 1, "bad_manifest_row": 2, "bad_utf8": 1}
    recs = check(tmp_path / "out", report, good, skipped)
    assert recs["img/0.png"].scores == {"aesthetic": 6.5} and recs["img/0.png"].source == "mine"


# -- detection and the command line ----------------------------------------------------------------
def test_form_detection_and_refusals(tmp_path):
    _write(tmp_path / "imgs" / "a" / "b" / "x.jpg", _images(1)[0])
    _write(tmp_path / "hf" / "train" / "metadata.csv", b"file_name,text\n")
    _write(tmp_path / "shards" / "d" / "0.parquet", b"")
    _write(tmp_path / "notes" / "a.txt", b"x")
    _write(tmp_path / "notes" / "b.txt", b"x")
    _write(tmp_path / "notes" / "c.md", b"x")
    _write(tmp_path / "m.CSV", b"")
    _write(tmp_path / "s.tar.gz", b"")
    _write(tmp_path / "weird.xyz", b"")
    detect = ingest_sources.detect_form
    assert detect(str(tmp_path / "imgs")) == "folder"
    assert detect(str(tmp_path / "hf")) == "imagefolder"
    assert detect(str(tmp_path / "shards")) == "parquet"
    assert detect(str(tmp_path / "m.CSV")) == "csv" and detect(str(tmp_path / "s.tar.gz")) == "webdataset"
    with pytest.raises(ValueError, match=r"it holds 2 \.txt, 1 \.md"):
        detect(str(tmp_path / "notes"))
    with pytest.raises(ValueError, match=r"a \.xyz file"):
        detect(str(tmp_path / "weird.xyz"))
    with pytest.raises(ValueError, match="several forms"):
        ingest_sources.resolve_inputs([str(tmp_path / "imgs"), str(tmp_path / "m.CSV")])
    assert ingest_sources.resolve_inputs([str(tmp_path / "shards")]) == ("parquet",
                                                                         [str(tmp_path / "shards/d/0.parquet")])
    with pytest.raises(ValueError, match="holds no files of the webdataset form"):
        ingest_sources.resolve_inputs([str(tmp_path / "imgs")], "webdataset")
    with pytest.raises(ValueError, match="image_root does not apply to the folder form"):
        ingest.ingest("folder", str(tmp_path / "imgs"), str(tmp_path / "o"), CFG, image_root=str(tmp_path))
    assert not os.path.exists(tmp_path / "o")


def test_ingest_exit_codes(tmp_path, capsys):
    good, skipped = make_imagefolder_jsonl(tmp_path / "in")  # 3 good of 8 items: 62% skipped
    args = ["--input", str(tmp_path / "in"), "--workers", "1", "--no_progress"]
    assert ingest_tool.main(args + ["--out", str(tmp_path / "o1")]) == 1
    cap = capsys.readouterr()
    assert "5 of 8 input items were skipped (" in cap.err and "more than --max_skip_fraction 0.5" in cap.err
    assert "top reasons: bad_manifest_row 1, bad_utf8 1, empty_caption 1" in cap.err
    assert "input form: imagefolder" in cap.out and "missing_caption" in cap.out  # the table was printed
    assert json.load(open(tmp_path / "o1" / ingest.REPORT))["skipped"] == skipped  # and saved
    assert len(arrayrecord_io.ArrayRecordSource(str(tmp_path / "o1"))) == 3
    assert ingest_tool.main(args + ["--out", str(tmp_path / "o2"), "--max_skip_fraction", "0.7"]) == 0
    assert ingest_tool.main(args + ["--out", str(tmp_path / "o2"), "--max_skip_fraction", "0.7"]) == 0  # complete
    capsys.readouterr()
    # Nothing written: a manifest of bad rows only.
    _write(tmp_path / "bad.jsonl", b'{"path": "nope.jpg", "caption": "x"}\n{"url": "http://x", "caption": "y"}\n')
    assert ingest_tool.main(["--input", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o3"),
                             "--no_progress", "--max_skip_fraction", "1"]) == 1
    assert "nothing was written (2 input items, 2 skipped; top reasons: missing_file 1, remote_url 1)" in \
        capsys.readouterr().err
    # A form that cannot be told: exit 2, naming what was found.
    _write(tmp_path / "notes" / "a.txt", b"x")
    assert ingest_tool.main(["--input", str(tmp_path / "notes"), "--out", str(tmp_path / "o4")]) == 2
    assert "cannot tell the input form" in capsys.readouterr().err and not os.path.exists(tmp_path / "o4")
    with pytest.raises(SystemExit) as e:
        ingest_tool.main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    for needle in ("imagefolder", "--caption_column", "COCO", "img2dataset", "remote_url", "--max_skip_fraction",
                   "--format"):
        assert needle in help_text, needle


def _record(key, w, h, seed):
    data = _image(w, h, "PNG", seed)
    return records.Record(key=key, image=data, image_format="png", width=w, height=h,
                          captions={"en": {"short": f"image {key}"}})


def test_curate_exit_codes(tmp_path, capsys):
    w = arrayrecord_io.ShardedWriter(str(tmp_path / "raw"), 4)
    for i in range(8):  # 3 of 8 at least 80 px on the shorter side
        w.write(records.encode_record(_record(f"r{i}", 80 if i < 3 else 64, 80, i)))
    w.close()
    base = ["--input", str(tmp_path / "raw"), "--no_progress"]
    assert curate_tool.main(base + ["--out", str(tmp_path / "c1"), "--min_side", "80"]) == 1
    err = capsys.readouterr().err
    assert "5 of 8 input records were skipped (" in err and "top reasons: resolution/too_small 5" in err
    assert json.load(open(tmp_path / "c1" / curation.pipeline.REPORT))["kept"] == 3
    assert curate_tool.main(base + ["--out", str(tmp_path / "c2"), "--min_side", "80",
                                    "--max_skip_fraction", "0.7"]) == 0
    # Down-sampling to a quarter drops 75% by request: not skips.
    assert curate_tool.main(base + ["--out", str(tmp_path / "c3"), "--downsample_fraction", "0.25",
                                    "--clusters", "2"]) == 0
    assert curate_tool.main(base + ["--out", str(tmp_path / "c4"), "--min_side", "100",
                                    "--max_skip_fraction", "1"]) == 1
    assert "nothing was written (8 input records, 8 skipped; top reasons: resolution/too_small 8)" in \
        capsys.readouterr().err
