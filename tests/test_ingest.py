"""Ingestion: the bad-input corpus in the folder, JSONL, Parquet and WebDataset forms, resume, pool, CLI
(the other forms: ``test_ingest_forms.py``)."""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from seedream_jax.data import arrayrecord_io, ingest, ingest_sources, pool, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ingest.IngestConfig(min_side=64, max_aspect=4.0, records_per_shard=4, workers=1)


def _image(w, h, fmt, seed, mode="RGB", exif_orientation=None) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                    np.full_like(xx, int(rng.integers(0, 255)))], -1).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.ADAPTIVE)
    buf = io.BytesIO()
    kw = {}
    if exif_orientation:
        exif = img.getexif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# Good items: name -> (bytes, sidecars {ext: bytes}, expected (width, height), expected captions).
def good_items():
    items = {
        "g01.jpg": (_image(96, 80, "JPEG", 1), {".txt": b"a red square"}, (96, 80), {"en": {"short": "a red square"}}),
        "g02.jpg": (_image(256, 64, "JPEG", 2), {".txt": "一只红色的猫".encode()}, (256, 64),
                    {"zh": {"short": "一只红色的猫"}}),
        "g03.png": (_image(64, 64, "PNG", 3), {".txt": b"\xef\xbb\xbfbom caption \n"}, (64, 64),
                    {"en": {"short": "bom caption"}}),
        "g04.png": (_image(80, 120, "PNG", 4, "RGBA"), {".txt": b"transparent"}, (80, 120),
                    {"en": {"short": "transparent"}}),
        "g05.png": (_image(100, 70, "PNG", 5, "P"), {".txt": b"palette"}, (100, 70), {"en": {"short": "palette"}}),
        "g06.webp": (_image(128, 96, "WEBP", 6), {".txt": b"webp image"}, (128, 96), {"en": {"short": "webp image"}}),
        "g07.webp": (_image(90, 200, "WEBP", 7), {".json": json.dumps(
            {"captions": {"en": {"long": "a long caption"}, "zh": {"short": "短标题", "style": "水彩"}},
             "scores": {"aesthetic": 6.5}, "url": "http://example.com/7"}).encode()}, (90, 200),
            {"en": {"long": "a long caption"}, "zh": {"short": "短标题", "style": "水彩"}}),
        "sub/g08.jpg": (_image(120, 90, "JPEG", 8, exif_orientation=6), {".txt": b"rotated"}, (90, 120),
                        {"en": {"short": "rotated"}}),
        "sub/g09.jpg": (_image(70, 70, "JPEG", 9), {".txt": b"short one", ".json": b'{"long_en": "the long one"}'},
                        (70, 70), {"en": {"short": "short one", "long": "the long one"}}),
        "sub/g10.png": (_image(200, 100, "PNG", 10), {".json": b'{"caption": "\xe4\xb8\xad\xe6\x96\x87 mixed"}'},
                        (200, 100), {"zh": {"short": "中文 mixed"}}),
    }
    return items


def bad_items():
    """name -> (bytes or None for no image file, sidecars, expected reason)."""
    jpg = _image(96, 96, "JPEG", 20)
    png = bytearray(_image(96, 96, "PNG", 21))
    idat = png.index(b"IDAT")
    png[idat + 20] ^= 0xFF
    return {
        "b01.jpg": (jpg[:len(jpg) // 2], {".txt": b"truncated half"}, "undecodable"),
        "b02.jpg": (jpg[:len(jpg) - 40], {".txt": b"truncated end"}, "undecodable"),
        "b03.jpg": (jpg[:200], {".txt": b"header only"}, "undecodable"),
        "b04.png": (bytes(png), {".txt": b"corrupt png"}, "undecodable"),
        "b05.jpg": (b"", {".txt": b"zero bytes"}, "empty_file"),
        "b06.webp": (b"", {".txt": b"zero bytes"}, "empty_file"),
        "b07.jpg": (_image(80, 80, "JPEG", 22), {".txt": b"caf\xe9 latin-1"}, "bad_utf8"),
        "b08.png": (_image(80, 80, "PNG", 23), {".json": b'{"caption": "\xff\xfe"}'}, "bad_utf8"),
        "b09": (None, {".txt": b"caption of a missing image"}, "missing_file"),
        "b10.jpg": (_image(1000, 64, "JPEG", 24), {".txt": b"too wide"}, "bad_aspect"),
        "b11.png": (_image(64, 600, "PNG", 25), {".txt": b"too tall"}, "bad_aspect"),
        "b12.jpg": (_image(40, 40, "JPEG", 26), {".txt": b"tiny"}, "too_small"),
        "b13.jpg": (_image(80, 80, "JPEG", 27), {}, "missing_caption"),
        "b14.jpg": (_image(80, 80, "JPEG", 28), {".txt": b"  \n"}, "empty_caption"),
        "b15.jpg": (b"this is not an image at all", {".txt": b"text file"}, "unsupported_format"),
        "b16.gif": (b"GIF89a" + bytes(40), {".txt": b"gif"}, "unsupported_format"),
        "b17.jpg": (_image(80, 80, "JPEG", 29), {".json": b'{"caption": '}, "bad_sidecar"),
    }


def make_folder(root):
    for name, (data, sidecars, *_) in {**good_items(), **bad_items()}.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        for ext, content in sidecars.items():
            with open(os.path.splitext(path)[0] + ext, "wb") as f:
                f.write(content)


def expected_counts():
    counts = {}
    for _, _, reason in bad_items().values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def check_output(out_dir, report, expected_skips, key_of=lambda name: name):
    src = arrayrecord_io.ArrayRecordSource(str(out_dir), decode=True)
    got = {r.key: r for r in src}
    good = good_items()
    assert report["skipped"] == expected_skips, report["skipped"]
    assert report["written"] == len(good) == len(src)
    for name, (data, _, size, captions) in good.items():
        rec = got[key_of(name)]
        assert rec.image == data, name  # byte-identical
        assert (rec.width, rec.height) == size, name
        assert rec.captions == captions, name
        assert records.decode_image(rec.image).shape == (size[1], size[0], 3)
    assert got[key_of("g07.webp")].scores == {"aesthetic": 6.5}
    assert got[key_of("g07.webp")].meta == {"url": "http://example.com/7"}
    return got


def test_bad_input_folder_every_bad_item_skipped_every_good_one_kept(tmp_path):
    make_folder(tmp_path / "in")
    report = ingest.ingest("folder", str(tmp_path / "in"), str(tmp_path / "out"), CFG, progress=False)
    expected = expected_counts()
    assert expected == {"undecodable": 4, "empty_file": 2, "bad_utf8": 2, "missing_file": 1, "bad_aspect": 2,
                        "too_small": 1, "missing_caption": 1, "empty_caption": 1, "unsupported_format": 2,
                        "bad_sidecar": 1}
    check_output(tmp_path / "out", report, expected)
    assert report["items"] == len(good_items()) + len(bad_items())
    saved = json.load(open(tmp_path / "out" / ingest.REPORT))
    assert saved["skipped"] == expected and saved["examples"]["undecodable"][0][0].startswith("b0")
    assert arrayrecord_io.read_manifest(str(tmp_path / "out"))["summary"]["skipped"] == expected
    # Rerunning on a complete output changes nothing and returns the same report.
    again = ingest.ingest("folder", str(tmp_path / "in"), str(tmp_path / "out"), CFG, progress=False)
    assert again["skipped"] == expected and again["written"] == report["written"]


def manifest_lines():
    """JSONL lines (bytes) listing the corpus: a JSON row per item, raw broken lines for bad sidecars."""
    lines = []
    for name, (_, sidecars, *_) in sorted({**good_items(), **bad_items()}.items()):
        if name == "b09":
            continue
        row = {"path": name}
        for ext, content in sorted(sidecars.items(), reverse=True):  # .txt caption, then .json fields
            try:
                text = content.decode("utf-8-sig")
            except UnicodeDecodeError:  # the line itself is then not UTF-8
                row = b'{"path": "%s", "caption": "%s"}' % (name.encode(), content)
                break
            if ext == ".txt":
                row["caption"] = text
            else:
                try:
                    row.update(json.loads(text))
                except json.JSONDecodeError:
                    row = b'{"path": "%s", "caption": ' % name.encode()  # a cut-off line
                    break
        lines.append(row if isinstance(row, bytes) else json.dumps(row, ensure_ascii=False).encode())
    lines.append(json.dumps({"path": "does/not/exist.jpg", "caption": "missing"}).encode())
    lines.append(json.dumps({"path": "gone.png", "caption": "missing too"}).encode())
    return lines


def test_bad_input_jsonl_manifest(tmp_path):
    make_folder(tmp_path / "in")
    lines = manifest_lines()
    lines.insert(3, b"")  # blank lines are ignored
    lines.append(b"[1, 2]")
    (tmp_path / "in" / "m.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = ingest.ingest("jsonl", str(tmp_path / "in" / "m.jsonl"), str(tmp_path / "out"), CFG, progress=False)
    expected = {"undecodable": 4, "empty_file": 2, "bad_utf8": 2, "missing_file": 2, "bad_aspect": 2,
                "too_small": 1, "missing_caption": 1, "empty_caption": 1, "unsupported_format": 2,
                "bad_manifest_row": 2}
    check_output(tmp_path / "out", report, expected)


def test_parquet_manifest_with_paths_and_embedded_bytes(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    make_folder(tmp_path / "in")
    rows = [json.loads(line) for line in manifest_lines() if line.startswith(b'{"path"') and line.endswith(b"}")
            and b"caf" not in line and b"\xff" not in line]
    good = good_items()
    for r in rows:  # odd good rows carry their image bytes (Hugging Face style) instead of a path
        if r["path"] in good and int(r["path"].split("/")[-1][1:3]) % 2:
            r["image"] = {"bytes": good[r["path"]][0], "path": r["path"]}
            r["key"] = r.pop("path")
    columns = sorted(set().union(*rows))  # from_pylist takes its columns from the first row only
    table = pa.Table.from_pylist([{k: (json.dumps(r[k]) if isinstance(r.get(k), dict) and k != "image"
                                       else r.get(k)) for k in columns} for r in rows])
    pq.write_table(table, tmp_path / "m.parquet")
    report = ingest.ingest("parquet", str(tmp_path / "m.parquet"), str(tmp_path / "out"), CFG,
                           image_root=str(tmp_path / "in"), progress=False)
    expected = {"undecodable": 4, "empty_file": 2, "missing_file": 2, "bad_aspect": 2, "too_small": 1,
                "missing_caption": 1, "empty_caption": 1, "unsupported_format": 2}  # b07/b08/b17 not listed
    check_output(tmp_path / "out", report, expected)


def _tar(path, members, truncate_at=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data[:truncate_at] if truncate_at else data)


def test_bad_input_webdataset_shards(tmp_path):
    good, bad = good_items(), bad_items()

    def members(items):
        out = []
        for name, (data, sidecars, *_) in sorted(items.items()):
            key, ext = os.path.splitext(name.replace("/", "_"))
            if data is not None:
                out.append((f"{key}{ext or '.jpg'}", data))
            out += [(f"{key}{sext}", content) for sext, content in sorted(sidecars.items())]
        return out

    names = sorted({**good, **bad})
    first = {n: v for n, v in {**good, **bad}.items() if n in names[::2]}
    second = {n: v for n, v in {**good, **bad}.items() if n not in first}
    _tar(tmp_path / "shard-000.tar", members(first))
    _tar(tmp_path / "shard-001.tar", members(second))
    # A third shard cut in the middle of its second sample's image.
    extra = [("x1.jpg", _image(80, 80, "JPEG", 40)), ("x1.txt", b"kept before the cut"),
             ("x2.jpg", _image(200, 200, "JPEG", 41)), ("x2.txt", b"lost")]
    blocks = sum(512 + -(-len(d) // 512) * 512 for _, d in extra[:2])
    _tar(tmp_path / "shard-002.tar", extra, truncate_at=blocks + 512 + 700)  # inside x2.jpg's data
    paths = [str(tmp_path / f"shard-00{i}.tar") for i in range(3)]
    report = ingest.ingest("webdataset", paths, str(tmp_path / "out"), CFG, progress=False)
    expected = dict(expected_counts(), corrupt_tar=1)
    assert report["skipped"] == expected
    src = arrayrecord_io.ArrayRecordSource(str(tmp_path / "out"), decode=True)
    by_key = {r.key: r for r in src}
    assert len(by_key) == len(good) + 1 and by_key["shard-002.tar/x1"].image == extra[0][1]
    for name, (data, _, size, captions) in good.items():
        shard = "shard-000.tar" if name in first else "shard-001.tar"
        rec = by_key[f"{shard}/{os.path.splitext(name.replace('/', '_'))[0]}"]
        assert rec.image == data and (rec.width, rec.height) == size and rec.captions == captions


def test_interrupted_ingest_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    make_folder(tmp_path / "in")
    clean = ingest.ingest("folder", str(tmp_path / "in"), str(tmp_path / "clean"), CFG, progress=False)
    real = ingest_sources.iter_source

    def interrupted(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 24:  # after the 17 bad items and 7 good ones: one shard of 4 finished
                raise KeyboardInterrupt("simulated preemption")
            yield item

    monkeypatch.setattr(ingest_sources, "iter_source", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest.ingest("folder", str(tmp_path / "in"), str(tmp_path / "resumed"), CFG, progress=False)
    assert not os.path.exists(tmp_path / "resumed" / "manifest.json")
    monkeypatch.setattr(ingest_sources, "iter_source", real)
    logs = []
    resumed = ingest.ingest("folder", str(tmp_path / "in"), str(tmp_path / "resumed"), CFG, progress=False,
                            log=logs.append)
    assert "resuming" in logs[0] and "21 input items done" in logs[0], logs[0]
    for k in ("items", "written", "skipped", "examples"):
        assert resumed[k] == clean[k], k
    for name in sorted(os.listdir(tmp_path / "clean")):
        if name.endswith(".array_record"):
            assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    with pytest.raises(arrayrecord_io.DatasetError, match="different settings"):
        ingest.ingest("folder", str(tmp_path / "in"), str(tmp_path / "resumed"),
                      ingest.IngestConfig(min_side=32, records_per_shard=4, workers=1), progress=False)


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_worker_pools_give_the_inline_result(tmp_path, pool):
    make_folder(tmp_path / "in")
    inline = ingest.ingest("folder", str(tmp_path / "in"), str(tmp_path / "inline"), CFG, progress=False)
    cfg = ingest.IngestConfig(min_side=64, max_aspect=4.0, records_per_shard=4, workers=2, pool=pool)
    par = ingest.ingest("folder", str(tmp_path / "in"), str(tmp_path / "par"), cfg, progress=False)
    assert par["skipped"] == inline["skipped"] and par["written"] == inline["written"]
    a = arrayrecord_io.ArrayRecordSource(str(tmp_path / "inline"))
    b = arrayrecord_io.ArrayRecordSource(str(tmp_path / "par"))
    assert list(a) == list(b)


def test_cli_prints_the_skip_table(tmp_path):
    make_folder(tmp_path / "in")
    env = dict(os.environ, PYTHONPATH=REPO)  # this checkout, whatever seedream_jax is installed
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "ingest.py"), "--input", str(tmp_path / "in"),
                          "--out", str(tmp_path / "out"), "--workers", "1", "--no_progress"],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    # 17 of the 27 items are bad: above the default --max_skip_fraction 0.5, so exit 1 after the report.
    assert out.returncode == 1, out.stderr
    assert "undecodable" in out.stdout and "written" in out.stdout
    assert "17 of 27 input items were skipped" in out.stderr and "top reasons: undecodable 4" in out.stderr
    assert json.load(open(tmp_path / "out" / "ingest_report.json"))["skipped"] == expected_counts()
    again = subprocess.run([sys.executable, os.path.join(REPO, "tools", "ingest.py"), "--input",
                            str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--max_skip_fraction", "0.7"],
                           capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr
    bad = subprocess.run([sys.executable, os.path.join(REPO, "tools", "ingest.py"), "--input",
                          str(tmp_path / "nothing*"), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert bad.returncode != 0 and "matches nothing" in bad.stderr


def _dies_on_3(x):
    if x == 3:
        os._exit(1)  # what a segfaulting decoder does to its worker
    return x * 10


def test_pool_survives_a_dying_worker():
    out = list(pool.ordered_map(_dies_on_3, range(9), workers=2, kind="process", chunk_size=2,
                                on_crash=lambda x: "crashed"))
    assert out == [(i, "crashed" if i == 3 else i * 10) for i in range(9)]
