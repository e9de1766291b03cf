"""Text scoring: Seedream 2.0's Ra / Rh / exact definitions, and the PP-OCRv4 reader on the
synthetic world's words (ground truth scores 1.0; wrong, truncated and missing words fail)."""
import dataclasses

import numpy as np
import pytest

from seedream_jax.data import ocr
from seedream_jax.data import synthetic as S
from seedream_jax.eval import report, scoring
from seedream_jax.eval import suite as SU
from seedream_jax.eval import text_metrics as TM
from seedream_jax.eval.benchmark import generate_suite, ground_truth_generator, score_suite

SIZE = 64


def test_edit_distance_and_common_characters():
    assert TM.edit_distance("kitten", "sitting") == 3
    assert TM.edit_distance("", "你好") == 2 and TM.edit_distance("你好", "你好") == 0
    assert TM.common_characters("ABCBDAB", "BDCABA") == 4
    assert TM.common_characters("好你", "你好") == 1


def test_seedream_text_metrics():
    assert TM.text_scores("HELO", "HELLO") == pytest.approx({"ra": 0.8, "rh": 0.8, "exact": 0.0})
    assert TM.text_scores("你好世界啊", "你好世界") == pytest.approx({"ra": 0.75, "rh": 1.0, "exact": 0.0})
    assert TM.text_scores("", "你好") == {"ra": 0.0, "rh": 0.0, "exact": 0.0}
    assert TM.text_scores("ABCDEFG", "X")["ra"] == 0.0  # Ra is clipped at 0
    # Normalisation: case, full-width forms, spaces and shape glyphs do not count.
    assert TM.text_scores("ｈｅｌ lo★", "HELLO")["exact"] == 1.0
    with pytest.raises(ValueError, match="empty target"):
        TM.text_scores("A", " ")


def test_best_reading_picks_the_closest_run_of_lines():
    assert TM.best_reading(["★", "你好", "世界", "O"], "你好世界") == "你好世界"
    assert TM.best_reading(["■", "口"], "HI") == ""
    assert TM.best_reading(["HELL0", "MOON"], "HELLO") == "HELL0"
    assert TM.best_reading([], "大") == ""


@pytest.fixture(scope="module")
def read_text():
    """The OCR reader (engine loaded once), memoised per image."""
    ocr.load_engine()
    cache = {}

    def read(image):
        key = np.asarray(image).tobytes()
        if key not in cache:
            cache[key] = [b.text for b in ocr.detect_text(image)]
        return cache[key]
    return read


@pytest.fixture(scope="module")
def text_items():
    return [it for it in SU.build_suite() if it.kind == "text"]


def test_detect_text_api(read_text):
    scene = S.Scene("light gray", [S.ShapeObject("circle", "red", "small", "bottom-left")],
                    S.TextItem("HELLO", "en", "black", "large", "horizontal", "top", "dejavu-sans-bold"))
    image = S.render_scene(scene, (64, 96))
    boxes = ocr.detect_text(image)
    assert [b.text for b in boxes] == ["HELLO"] and 0.5 < boxes[0].score <= 1.0
    box = boxes[0].box
    assert box.shape == (4, 2) and box.dtype == np.float32
    # In input pixels: the word sits in the top band, across the middle of the width.
    assert 0 <= box[:, 1].min() and box[:, 1].max() <= 64 / 3 + 2 and box[:, 0].min() < 48 < box[:, 0].max() <= 96
    assert ocr.detect_text(np.full((64, 64, 3), 200, np.uint8)) == []
    with pytest.raises(ValueError, match="uint8"):
        ocr.detect_text(image.astype(np.float32))


def test_ground_truth_text_scores_one(read_text, text_items):
    images = generate_suite(ground_truth_generator(text_items, SIZE, SIZE), text_items)
    image_results, pairs = score_suite(text_items, images, read_text)
    metrics = report.aggregate(image_results)
    for cat in SU.TEXT_CATEGORIES:
        for metric in report.TEXT_METRICS:
            for lang in SU.LANGUAGES:
                assert metrics[cat][metric]["seen"][lang] >= 0.98, (cat, metric, lang)
    assert all(p["consistency"] == 1.0 for p in pairs)
    print("\nground truth:", {cat: {m: metrics[cat][m]["all"]["all"] for m in report.TEXT_METRICS}
                              for cat in SU.TEXT_CATEGORIES})


def _scored(items, scenes, read_text):
    out = []
    for item, scene in zip(items, scenes):
        out.append(scoring.score_image(item, S.render_scene(scene, SIZE), read_text)["scores"])
    return {m: float(np.mean([s[m] for s in out])) for m in report.TEXT_METRICS}, out


def test_wrong_truncated_and_missing_text_fail(read_text, text_items):
    picks = [it for cat in SU.TEXT_CATEGORIES for it in [i for i in text_items if i.categories == (cat,)][:4]]

    def other_word(it):  # the next word of the same language, sharing no character with the target
        words = S.WORDS[it.scene.text.language]
        target = it.scene.text.text
        k = words.index(target)
        word = next(w for w in words[k + 1:] + words[:k] if not set(w) & set(target))
        return dataclasses.replace(it.scene, text=dataclasses.replace(it.scene.text, text=word))

    wrong, per_item = _scored(picks, [other_word(it) for it in picks], read_text)
    assert all(s["exact"] == 0.0 and s["ra"] < 0.5 for s in per_item), per_item
    missing, _ = _scored(picks[::2], [dataclasses.replace(it.scene, text=None) for it in picks[::2]], read_text)
    assert missing == {"ra": 0.0, "rh": 0.0, "exact": 0.0}
    # The first character dropped from a 4-5 character word: Ra = Rh = 1 - 1/N, no exact match.
    long_words = [it for it in text_items if len(it.scene.text.text) >= 4]
    long_words = [it for it in long_words if it.scene.text.language == "zh"] + [
        it for it in long_words if it.scene.text.language == "en"][:3]
    dropped = [dataclasses.replace(it.scene, text=dataclasses.replace(it.scene.text, text=it.scene.text.text[1:]))
               for it in long_words]
    truncated, per_item = _scored(long_words, dropped, read_text)
    for it, s in zip(long_words, per_item):
        n = len(it.scene.text.text)
        assert s == pytest.approx({"ra": 1 - 1 / n, "rh": 1 - 1 / n, "exact": 0.0}), (it.scene.text.text, s)
    print("\nwrong word:", wrong, "\nmissing text:", missing, "\nfirst character dropped:", truncated)
