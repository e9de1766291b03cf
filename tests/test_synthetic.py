"""The synthetic world: determinism, captions matching specs, pixels matching specs, storage."""
import json
import os

import numpy as np
import pytest

from seedream_jax.data import synthetic as S
from seedream_jax.data.tokenizer import TextTokenizer, train_sentencepiece

CFG = S.SyntheticWorldConfig(num_images=40, image_size=64, seed=3)


@pytest.fixture(scope="module")
def records():
    return list(S.generate(CFG))


def test_deterministic_for_a_seed(records):
    again = list(S.generate(CFG))
    for a, b in zip(records, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["captions"] == b["captions"] and a["spec"] == b["spec"]
    other = list(S.generate(S.SyntheticWorldConfig(num_images=40, image_size=64, seed=4)))
    assert any(a["spec"] != b["spec"] for a, b in zip(records, other))


def test_captions_describe_the_spec_in_both_languages(records):
    for rec in records:
        scene, caps = S.Scene.from_dict(rec["spec"]), rec["captions"]
        for o in scene.objects:
            assert o.colour in caps["en"]["long"] and o.shape in caps["en"]["long"]
            assert S.COLOURS[o.colour][1] in caps["zh"]["long"] and S.SHAPES[o.shape] in caps["zh"]["long"]
        if scene.text is not None:
            assert f'"{scene.text.text}"' in caps["en"]["short"] and f"“{scene.text.text}”" in caps["zh"]["short"]
        else:
            assert '"' not in caps["en"]["short"] and "“" not in caps["zh"]["short"]


def test_pixels_match_the_spec(records):
    for rec in records:
        scene, img = S.Scene.from_dict(rec["spec"]), rec["image"].astype(int)
        cell = 64 / 3
        for o in scene.objects:
            r, c = o.cell
            y, x = int((r + 0.5) * cell), int((c + 0.5) * cell)
            assert np.abs(img[y, x] - np.array(S.COLOURS[o.colour][0])).sum() < 40, (o, img[y, x])
        if scene.text is not None:
            band = img[int(scene.text.row * cell):int((scene.text.row + 1) * cell)]
            text_rgb = np.array(S.COLOURS[scene.text.colour][0])
            assert (np.abs(band - text_rgb).sum(-1) < 60).sum() >= 8  # glyph pixels are there


def test_renders_any_aspect():
    scene = S.sample_scene(np.random.default_rng(0), CFG)
    assert S.render_scene(scene, (64, 96)).shape == (64, 96, 3)


def test_write_load_and_skip(tmp_path):
    cfg = S.SyntheticWorldConfig(num_images=12, image_size=32, seed=0)
    out = str(tmp_path / "world")
    assert S.write_dataset(cfg, out) is True
    assert S.write_dataset(cfg, out) is False  # identical dataset present: skipped
    images, recs = S.load_dataset(out)
    assert images.shape == (12, 32, 32, 3) and len(recs) == 12
    np.testing.assert_array_equal(images[5], next(r for i, r in enumerate(S.generate(cfg)) if i == 5)["image"])
    with pytest.raises(FileExistsError, match="different config"):
        S.write_dataset(S.SyntheticWorldConfig(num_images=13, image_size=32), out)
    os.remove(os.path.join(out, "records.jsonl"))
    with pytest.raises(FileNotFoundError, match="records.jsonl"):
        S.load_dataset(out)


def test_sentencepiece_tokenizer_covers_the_world(records, tmp_path):
    texts = [c for r in records for by_type in r["captions"].values() for c in by_type.values()]
    path = train_sentencepiece(texts, str(tmp_path / "spm"), 400)
    tok = TextTokenizer.from_sentencepiece(path)
    ids, mask = tok(texts[:8] + ["一个红色圆形"], 48)
    assert ids.shape == (9, 48) and mask.shape == (9, 48)
    assert not np.any(ids[mask] == 1), "unk in world captions"
    for i in range(9):
        expected = (texts[:8] + ["一个红色圆形"])[i]
        if mask[i].sum() < 48:  # not truncated
            assert tok.decode(ids[i][mask[i]]) == expected
    short, short_mask = tok(["一个红色圆形 and 龍"], 4)  # truncation; unseen char via byte fallback
    assert short_mask.all() and short.shape == (1, 4)


def test_hf_tokenizer_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"[PAD]": 0, "[UNK]": 1, "red": 2, "circle": 3, "a": 4}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(tmp_path)
    tok = TextTokenizer.from_hf(str(tmp_path))
    ids, mask = tok(["a red circle", "red"], 5)
    np.testing.assert_array_equal(ids, [[4, 2, 3, 0, 0], [2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask.sum(1), [3, 1])
