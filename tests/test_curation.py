"""Curation filters: each drops what it should (counted by reason) and keeps the rest."""
import collections
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from seedream_jax.data import arrayrecord_io, curation, records

TextBox = collections.namedtuple("TextBox", "text score box")


def _field(seed, size=128) -> np.ndarray:
    """A smooth random RGB image uint8 [size, size, 3] (8x8 random colours, bicubic upsampled)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    return np.asarray(small.resize((size, size), Image.BICUBIC))


def _record(key, arr, fmt="PNG", captions=None, **kw) -> records.Record:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=70)
    return records.Record(key=key, image=buf.getvalue(), image_format=fmt.lower(), width=arr.shape[1],
                          height=arr.shape[0], captions=captions or {"en": {"short": f"image {key}"}}, **kw)


def _fake_record(key, w, h) -> records.Record:
    return records.Record(key=key, image=b"\xff\xd8\xff", image_format="jpeg", width=w, height=h,
                          captions={"en": {"short": key}})


def _near_duplicate_corpus():
    """12 distinct images, then 7 near/exact duplicates of some of them (each after its original)."""
    originals = [_record(f"o{i:02d}", _field(i)) for i in range(12)]
    dups = []
    for j, i in enumerate([0, 3, 5, 7, 9, 11]):
        arr = _field(i)
        if j % 3 == 0:
            arr = np.asarray(Image.fromarray(arr).resize((96, 96), Image.BILINEAR))  # rescaled
        elif j % 3 == 1:
            arr = np.clip(arr.astype(int) + 12, 0, 255).astype(np.uint8)  # brighter
        else:
            arr = arr[3:-3, 3:-3]  # slightly cropped
        dups.append(_record(f"d{i:02d}", arr, fmt="JPEG"))  # and re-encoded as JPEG
    exact = records.Record(**{**originals[4].__dict__, "key": "exact04"})
    return originals + dups + [exact]


def test_resolution_and_aspect_filters():
    recs = [_fake_record("ok", 512, 384), _fake_record("small", 100, 512), _fake_record("few", 200, 200),
            _fake_record("huge", 9000, 4000), _fake_record("wide", 2000, 400), _fake_record("tall", 300, 1000),
            _fake_record("square", 256, 256)]
    res = curation.ResolutionFilter(min_side=128, min_pixels=50_000, max_side=8192)
    asp = curation.AspectFilter(max_aspect=3.0)
    kept = list(asp(res(recs)))
    assert [r.key for r in kept] == ["ok", "square"]
    assert res.stats.dropped == {"too_small": 2, "too_large": 1} and res.stats.kept == 4
    assert asp.stats.dropped == {"bad_aspect": 2} and asp.stats.seen == 4
    assert [e[0] for e in asp.stats.examples["bad_aspect"]] == ["wide", "tall"]
    only_landscape = curation.AspectFilter(min_ratio=1.0, max_ratio=2.0)
    assert [r.key for r in only_landscape(recs[:1] + recs[6:])] == ["ok", "square"]


def test_hashes_are_stable_under_small_edits_and_distinct_otherwise():
    a, b = _field(1), _field(2)
    edited = np.asarray(Image.fromarray(a).resize((100, 100), Image.BILINEAR))
    for fn in (curation.phash, curation.dhash):
        assert fn(a) == fn(a.copy()) and 0 <= fn(a) < 2 ** 64
        assert curation.hamming(fn(a), fn(edited)) <= 6
        assert curation.hamming(fn(a), fn(b)) > 12
    # A DCT of a constant image has only its DC coefficient: the pHash is then all-zero bits but the DC one.
    assert curation.phash(np.full((40, 40, 3), 128, np.uint8)).bit_count() <= 1


def test_hamming_index_matches_brute_force():
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(0, 2 ** 63, 300, dtype=np.int64)]
    for t in (0, 3, 8):
        index = curation.HammingIndex(t)
        for i, h in enumerate(hashes[:200]):
            index.add(h, str(i))
        for q in hashes[200:] + [hashes[5] ^ 0b101, hashes[7] ^ (1 << 63)]:
            brute = [i for i, h in enumerate(hashes[:200]) if curation.hamming(q, h) <= t]
            hit = index.find(q)
            assert (hit is None) == (not brute)
            if brute:
                assert hit[0] == str(min(brute))


@pytest.mark.parametrize("kind", ["phash", "dhash"])
def test_perceptual_dedup_drops_the_near_duplicates_only(kind):
    corpus = _near_duplicate_corpus()
    f = curation.PerceptualDedup(kind, threshold=8)
    kept = list(f(corpus))
    assert [r.key for r in kept] == [f"o{i:02d}" for i in range(12)]
    assert f.stats.dropped == {f"near_duplicate_{kind}": 7} and f.stats.kept == 12
    assert any("'o00'" in d for _, d in f.stats.examples[f"near_duplicate_{kind}"])


def test_embedding_dedup_with_any_callable():
    calls = []

    def embed(batch):  # centred 8x8 colour thumbnails: cosine ~1 for near duplicates, ~0 otherwise
        calls.append(batch.shape)
        assert batch.dtype == np.uint8 and batch.shape[1:] == (32, 32, 3)
        thumbs = np.stack([np.asarray(Image.fromarray(x).resize((8, 8), Image.BILINEAR), np.float32)
                           for x in batch]).reshape(len(batch), -1)
        return thumbs - thumbs.mean(1, keepdims=True)

    corpus = _near_duplicate_corpus()
    f = curation.EmbeddingDedup(embed, threshold=0.9, image_size=32, batch_size=8)
    kept = list(f(corpus))
    assert [r.key for r in kept] == [f"o{i:02d}" for i in range(12)]
    assert f.stats.dropped == {"near_duplicate_embedding": 7}
    assert calls == [(8, 32, 32, 3), (8, 32, 32, 3), (3, 32, 32, 3)]
    with pytest.raises(ValueError, match=r"\[B=2, D\]"):
        list(curation.EmbeddingDedup(lambda b: np.zeros((1, 4)), batch_size=2, image_size=8)(corpus[:2]))


def _solid(colour, size=(160, 120)):
    return np.tile(np.array(colour, np.uint8), (size[1], size[0], 1))


def test_ocr_captioner_with_an_injected_detector():
    box = np.array([[10, 10], [60, 10], [60, 30], [10, 30]], np.float32)
    full = np.array([[0, 0], [159, 0], [159, 119], [0, 119]], np.float32)
    found = {
        (255, 0, 0): [TextBox("OPEN", 0.93, box)],
        (0, 255, 0): [TextBox("营业中", 0.95, box), TextBox("欢迎", 0.8, box + 30), TextBox("x", 0.2, box),
                      TextBox("营业中", 0.9, box + 50)],
        (0, 0, 255): [],
        (9, 9, 9): [TextBox("TERMS AND CONDITIONS", 0.9, full)],
    }

    def detect(image):
        assert image.dtype == np.uint8 and image.shape == (120, 160, 3)
        return found[tuple(int(v) for v in image[0, 0])]

    recs = [_record("shop", _solid((255, 0, 0)), captions={"en": {"short": "a shop front."}}),
            _record("zh", _solid((0, 255, 0)), captions={"zh": {"short": "一家商店"}, "en": {"long": "a store"}}),
            _record("plain", _solid((0, 0, 255))),
            _record("doc", _solid((9, 9, 9)))]
    f = curation.OcrCaptioner(detect_fn=detect, min_score=0.5)
    kept = {r.key: r for r in f([records.decode_record(records.encode_record(r)) for r in recs])}
    assert kept["shop"].captions["en"]["text"] == 'a shop front, with the text "OPEN"'
    assert kept["zh"].captions["zh"]["text"] == "一家商店，上面写着“营业中”和“欢迎”"
    assert kept["zh"].captions["en"]["text"] == 'a store, with the text "营业中" and "欢迎"'
    assert [b.text for b in kept["zh"].ocr] == ["营业中", "欢迎", "营业中"]  # the 0.2-score box is dropped
    assert kept["zh"].ocr[1].box[0] == (40.0, 40.0)
    assert "text" not in kept["plain"].captions and kept["plain"].ocr == []
    assert f.stats.annotated == 3 and f.stats.kept == 4 and f.stats.dropped == {}
    back = records.decode_record(records.encode_record(kept["zh"]))  # annotated records stay valid
    assert back.ocr == kept["zh"].ocr

    strict = curation.OcrCaptioner(detect_fn=detect, require_text=True, max_text_area=0.5)
    assert [r.key for r in strict(recs)] == ["shop", "zh"]
    assert strict.stats.dropped == {"no_text": 1, "text_area": 1}
    keep_given = curation.OcrCaptioner(detect_fn=detect)
    given = _record("given", _solid((255, 0, 0)), captions={"en": {"short": "s", "text": 'the word "OPEN"'}})
    assert next(keep_given([given])).captions["en"]["text"] == 'the word "OPEN"'


def test_ocr_captioner_with_the_real_detector():
    pytest.importorskip("seedream_jax.data.ocr")
    pytest.importorskip("rapidocr_onnxruntime")
    from seedream_jax.data import fonts
    img = Image.new("RGB", (360, 140), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((20, 30), "HELLO", fill=(0, 0, 0), font=fonts.load_font(fonts.fonts_for("en")[0], 72))
    rec = _record("hello", np.asarray(img), captions={"en": {"short": "a white card"}})
    f = curation.OcrCaptioner()
    out = next(f([rec]))
    assert [b.text for b in out.ocr] == ["HELLO"], out.ocr
    assert out.captions["en"]["text"] == 'a white card, with the text "HELLO"'
    x0, y0 = np.min(out.ocr[0].box, axis=0)
    x1, y1 = np.max(out.ocr[0].box, axis=0)
    assert 0 <= x0 < 40 and 10 < y0 < 60 and 200 < x1 < 360 and 80 < y1 < 140


def test_allocate_is_proportional_with_a_cap():
    assert curation.allocate([60, 30, 10], 50).tolist() == [30, 15, 5]
    assert curation.allocate([60, 30, 10], 40, cap=20).tolist() == [20, 15, 5]
    assert curation.allocate([60, 30, 10], 50, cap=20).tolist() == [20, 20, 10]
    assert curation.allocate([60, 30, 10], 500, cap=20).tolist() == [20, 20, 10]
    q = curation.allocate([7, 5, 3], 7)
    assert q.tolist() == [3, 2, 2]  # shares 3.27, 2.33, 1.40: floors 3, 2, 1 and the largest remainder +1


def test_cluster_downsample_on_given_features():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    sizes = [60, 30, 10]
    feats = np.concatenate([c + rng.normal(0, 0.5, (n, 2)) for c, n in zip(centres, sizes)])
    keys = [f"c{c}-{i}" for c, n in enumerate(sizes) for i in range(n)]
    f = curation.ClusterDownsample(target=40, k=3, cap=20, seed=0).fit(feats, keys)
    kept = [r.key for r in f(_fake_record(k, 64, 64) for k in keys)]
    per_cluster = collections.Counter(k.split("-")[0] for k in kept)
    assert per_cluster == {"c0": 20, "c1": 15, "c2": 5}
    assert kept == [k for k in keys if k in set(kept)]  # input order
    assert f.stats.dropped == {"downsampled": 60}
    assert sorted(c["size"] for c in f.stats.extra["clusters"]) == [10, 30, 60]
    again = curation.ClusterDownsample(target=40, k=3, cap=20, seed=0).fit(feats, keys)
    assert again.keep_keys == f.keep_keys  # deterministic


def test_cluster_downsample_on_images_preserves_the_mix():
    rng = np.random.default_rng(1)
    families = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}
    recs = []
    for name, n in (("red", 12), ("blue", 6), ("green", 3)):
        for i in range(n):
            colour = np.clip(np.array(families[name]) + rng.integers(-20, 20, 3), 0, 255)
            recs.append(_record(f"{name}{i}", _solid(colour, (48, 48))))
    f = curation.ClusterDownsample(fraction=0.5, k=3, seed=0)
    kept = list(f(recs))
    assert collections.Counter(r.key.rstrip("0123456789") for r in kept) == {"red": 6, "blue": 3, "green": 1}
    assert f.stats.kept == 10 and f.stats.dropped == {"downsampled": 11}


def test_pipeline_chains_filters_reports_and_curates_a_dataset_with_resume(tmp_path):
    corpus = _near_duplicate_corpus() + [_record("tiny", _field(50, 32)),
                                         _record("strip", np.asarray(Image.fromarray(_field(51)).resize((400, 64))))]
    w = arrayrecord_io.ShardedWriter(str(tmp_path / "raw"), 5)
    for r in corpus:
        w.write(records.encode_record(r))
    w.close()

    def make():
        return curation.Pipeline([curation.ResolutionFilter(min_side=48), curation.AspectFilter(max_aspect=3.0),
                                  curation.PerceptualDedup("phash", 8),
                                  curation.ClusterDownsample(target=9, k=3, seed=0)])

    pipe = make()
    clean = curation.curate_dataset(str(tmp_path / "raw"), str(tmp_path / "clean"), pipe, records_per_shard=4,
                                    progress=False)
    text = pipe.format_report()
    print(text)
    assert clean["seen"] == 21 and clean["kept"] == 9
    by_name = {f["name"]: f for f in clean["filters"]}
    assert by_name["resolution"]["dropped"] == {"too_small": 1}
    assert by_name["aspect"]["dropped"] == {"bad_aspect": 1}
    assert by_name["dedup_phash"]["dropped"] == {"near_duplicate_phash": 7}
    assert by_name["cluster_downsample"]["dropped"] == {"downsampled": 3}
    assert "near_duplicate_phash 7" in text and "pipeline" in text
    out = arrayrecord_io.ArrayRecordSource(str(tmp_path / "clean"), decode=True)
    assert len(out) == 9 and all(r.key.startswith("o") for r in out)

    class Interrupt(curation.Filter):
        name = "interrupt"

        def __init__(self, at):
            super().__init__()
            self.at = at

        def check(self, record):
            if self.stats.seen == self.at:
                raise KeyboardInterrupt("simulated preemption")
            return record

    interrupted = make()
    interrupted.filters.append(Interrupt(at=6))
    config = ["same pipeline"]
    with pytest.raises(KeyboardInterrupt):
        curation.curate_dataset(str(tmp_path / "raw"), str(tmp_path / "resumed"), interrupted, records_per_shard=4,
                                config=config, progress=False)
    assert not os.path.exists(tmp_path / "resumed" / "manifest.json")
    resumed_pipe = make()
    resumed_pipe.filters.append(Interrupt(at=10 ** 9))
    resumed = curation.curate_dataset(str(tmp_path / "raw"), str(tmp_path / "resumed"), resumed_pipe,
                                      records_per_shard=4, config=config, progress=False)
    assert resumed["kept"] == 9
    for name in sorted(os.listdir(tmp_path / "clean")):
        if name.endswith(".array_record"):
            assert (tmp_path / "clean" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()


def test_curate_cli(tmp_path):
    import json
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    w = arrayrecord_io.ShardedWriter(str(tmp_path / "raw"), 10)
    for r in _near_duplicate_corpus():
        w.write(records.encode_record(r))
    w.close()
    out = subprocess.run([sys.executable, os.path.join(repo, "tools", "curate.py"), "--input", str(tmp_path / "raw"),
                          "--out", str(tmp_path / "cur"), "--min_side", "64", "--phash", "8", "--no_progress"],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=repo))
    assert out.returncode == 0, out.stderr
    assert "dedup_phash" in out.stdout and "near_duplicate_phash 7" in out.stdout
    report = json.load(open(tmp_path / "cur" / "curation_report.json"))
    assert report["kept"] == 12 and len(arrayrecord_io.ArrayRecordSource(str(tmp_path / "cur"))) == 12
