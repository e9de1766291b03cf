"""The synthetic world: determinism, captions matching specs, pixels matching specs, fonts, storage."""
import dataclasses
import json
import os
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from seedream_jax.data import fonts
from seedream_jax.data import synthetic as S

CFG = S.SyntheticWorldConfig(num_images=48, image_size=64, text_probability=0.7, vertical_text_probability=0.5,
                             seed=3)


@pytest.fixture(scope="module")
def records():
    return list(S.generate(CFG))


def _scene(objects, text=None, background="light gray"):
    return S.Scene(background, [S.ShapeObject(*o) for o in objects], text)


def test_deterministic_for_a_seed(records):
    again = list(S.generate(CFG))
    for a, b in zip(records, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["captions"] == b["captions"] and a["spec"] == b["spec"]
    other = list(S.generate(dataclasses.replace(CFG, seed=4)))
    assert sum(a["spec"] != b["spec"] for a, b in zip(records, other)) > len(records) // 2
    assert sum(not np.array_equal(a["image"], b["image"]) for a, b in zip(records, other)) > len(records) // 2
    assert records[7]["spec"] == S.scene_at(CFG, 7).to_dict()  # random access: scene i is a function of (seed, i)


def test_world_covers_its_vocabulary(records):
    specs = [S.Scene.from_dict(r["spec"]) for r in records]
    assert {len(s.objects) for s in specs} == {1, 2, 3, 4}
    texts = [s.text for s in specs if s.text is not None]
    assert {t.language for t in texts} == {"zh", "en"} and {t.orientation for t in texts} == {"horizontal", "vertical"}
    assert all(t.language == "zh" for t in texts if t.orientation == "vertical")


def test_spec_json_round_trip_and_validation(records):
    for rec in records:
        spec = json.loads(json.dumps(rec["spec"]))
        assert S.Scene.from_dict(spec).to_dict() == rec["spec"]
    bad = json.loads(json.dumps(records[0]["spec"]))
    bad["objects"][0]["colour"] = "mauve"
    with pytest.raises(ValueError, match="unknown colour 'mauve'"):
        S.Scene.from_dict(bad)
    with pytest.raises(ValueError, match="malformed scene spec"):
        S.Scene.from_dict({"background": "beige"})
    with pytest.raises(ValueError, match="max_objects"):
        S.SyntheticWorldConfig(max_objects=5)


def test_captions_golden():
    caps = S.captions(_scene([("circle", "red", "large", "left")],
                             S.TextItem("HELLO", "en", "blue", "small", "horizontal", "top", "dejavu-sans-bold")))
    assert caps["en"]["short"] == 'a large red circle and the text "HELLO"'
    assert caps["zh"]["short"] == "一个大的红色圆形和文字“HELLO”"
    assert caps["en"]["long"] == ('On a light gray background: a large red circle on the left. '
                                  'The text "HELLO" is written in small blue letters at the top.')
    assert caps["zh"]["long"] == "浅灰色背景上，左侧有一个大的红色圆形。顶部有小号蓝色的文字“HELLO”。"
    caps = S.captions(_scene([("star", "yellow", "small", "top-right"), ("square", "blue", "large", "bottom-left")]))
    assert caps["en"]["short"] == "a small yellow star and a large blue square"
    assert caps["en"]["long"].endswith(" The blue square is to the left of the yellow star.")
    assert caps["zh"]["long"].endswith("。蓝色正方形在黄色五角星的左边。")
    caps = S.captions(_scene([("circle", "red", "small", "top"), ("circle", "red", "large", "bottom")],
                             S.TextItem("你好", "zh", "black", "large", "vertical", "right", fonts.CJK)))
    assert caps["en"]["long"].endswith('The text "你好" is written vertically in large black characters on the right. '
                                       "The small red circle is above the large red circle.")
    assert caps["zh"]["long"].endswith("右侧有大号黑色的竖排文字“你好”。小的红色圆形在大的红色圆形的上面。")
    caps = S.captions(_scene([("triangle", "green", "small", p) for p in ("top-left", "center", "right")]))
    assert caps["en"]["short"] == "three small green triangles" and caps["zh"]["short"] == "三个小的绿色三角形"


def test_captions_describe_the_spec_in_both_languages(records):
    for rec in records:
        scene, caps = S.Scene.from_dict(rec["spec"]), rec["captions"]
        en_long, zh_long = caps["en"]["long"], caps["zh"]["long"]
        assert S.BACKGROUNDS[scene.background][1] in zh_long and f"On a {scene.background} background" in en_long
        for o in scene.objects:
            assert f"a {o.size} {o.colour} {o.shape} {S.POSITIONS[o.position][0]}" in en_long
            zh_name = f"{S.SIZES[o.size]}{S.COLOURS[o.colour][1]}{S.SHAPES[o.shape]}"
            assert f"{S.POSITIONS[o.position][1]}有一个{zh_name}" in zh_long
        # short captions count identical objects: the counts add up to the number of objects
        en_counts = re.findall(r"\b(a|two|three|four) (?:small|large) \w+ \w+", caps["en"]["short"])
        zh_counts = re.findall(r"(一个|两个|三个|四个)(?:小的|大的)", caps["zh"]["short"])
        en_n = {"a": 1, "two": 2, "three": 3, "four": 4}
        zh_n = {v: k for k, v in S.COUNTS_ZH.items()}
        assert sum(en_n[c] for c in en_counts) == sum(zh_n[c] for c in zh_counts) == len(scene.objects)
        expected = [scene.text.text] if scene.text else []
        for lang, pattern in (("en", r'"([^"]*)"'), ("zh", r"“([^”]*)”")):
            for kind in ("short", "long"):
                assert re.findall(pattern, caps[lang][kind]) == expected, (lang, kind, caps[lang][kind])
        if scene.text is None:
            assert "“" not in caps["zh"]["short"] + zh_long and '"' not in caps["en"]["short"] + en_long


def _band(img: np.ndarray, text: S.TextItem) -> np.ndarray:
    h, w = img.shape[:2]
    if text.orientation == "horizontal":
        return img[text.band * h // 3:(text.band + 1) * h // 3]
    return img[:, text.band * w // 3:(text.band + 1) * w // 3]


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (96, 64)])
def test_pixels_match_the_spec(size):
    h, w = size
    for i in range(CFG.num_images):
        scene = S.scene_at(CFG, i)
        img = S.render_scene(scene, size).astype(int)
        assert img.shape == (h, w, 3)
        for o in scene.objects:  # the object's colour at its cell centre
            r, c = o.cell
            centre = img[int((r + 0.5) * h / 3), int((c + 0.5) * w / 3)]
            assert np.abs(centre - S.COLOURS[o.colour][0]).sum() < 30, (o, centre)
        if scene.text is not None:  # glyph pixels in the word's band, none there without the word
            rgb = np.array(S.COLOURS[scene.text.colour][0])
            ink = lambda im: int((np.abs(_band(im, scene.text) - rgb).sum(-1) < 90).sum())
            assert ink(img) >= 5, scene.text
            assert ink(S.render_scene(dataclasses.replace(scene, text=None), size).astype(int)) == 0


def test_cjk_font_has_real_glyphs():
    """Every Chinese character of the world renders as its own glyph, not a shared tofu box."""
    font = fonts.load_font(fonts.CJK, 24)
    bitmaps = set()
    chars = sorted(set("".join(S.WORDS["zh"])))
    for ch in chars:
        im = Image.new("L", (28, 28))
        ImageDraw.Draw(im).text((14, 14), ch, fill=255, font=font, anchor="mm")
        assert np.asarray(im).sum() > 0, ch
        bitmaps.add(im.tobytes())
    assert len(bitmaps) == len(chars)
    assert set(fonts.fonts_for("zh")) == {fonts.CJK} and len(fonts.fonts_for("en")) >= 2


def test_missing_cjk_font_names_the_package(monkeypatch):
    fonts.cjk_font_path.cache_clear()
    try:
        monkeypatch.setitem(fonts.FONTS, fonts.CJK, fonts.FontFace(("/nonexistent/font.ttc",), ("zh", "en")))
        with pytest.raises(FileNotFoundError, match="apt-get install fonts-wqy-microhei"):
            fonts.cjk_font_path()
        monkeypatch.setenv("SEEDREAM_CJK_FONT", "/nonexistent/override.ttc")
        with pytest.raises(FileNotFoundError, match="SEEDREAM_CJK_FONT"):
            fonts.cjk_font_path()
    finally:
        fonts.cjk_font_path.cache_clear()


def test_write_load_and_skip(tmp_path, records):
    cfg = dataclasses.replace(CFG, num_images=12, image_size=32)
    out = str(tmp_path / "world")
    os.makedirs(out + ".partial")  # debris of an interrupted run is replaced
    assert S.write_dataset(cfg, out) is True
    assert not os.path.exists(out + ".partial")
    assert S.write_dataset(cfg, out) is False  # identical dataset present: skipped
    images, recs = S.load_dataset(out)
    assert isinstance(images, np.memmap) and images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    for img, rec, gen in zip(images, recs, S.generate(cfg)):
        np.testing.assert_array_equal(img, gen["image"])
        assert rec == {"captions": gen["captions"], "spec": gen["spec"]}
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    assert meta["config"] == json.loads(json.dumps(dataclasses.asdict(cfg))) and meta["counts"]["images"] == 12
    with pytest.raises(FileExistsError, match="different|config"):
        S.write_dataset(dataclasses.replace(cfg, seed=99), out)
    os.remove(os.path.join(out, "records.jsonl"))
    with pytest.raises(FileNotFoundError, match="records.jsonl"):
        S.load_dataset(out)
    os.remove(os.path.join(out, "meta.json"))  # a folder without meta.json is never taken as complete
    with pytest.raises(FileExistsError, match="no meta.json"):
        S.write_dataset(cfg, out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert S.write_dataset(cfg, str(empty)) is True and len(S.load_dataset(str(empty))[1]) == 12


def test_scene_mix_levers():
    """object_count_weights set how many objects a scene has, group_probability makes scenes of
    two groups of identical objects, shuffle_objects names objects out of grid order; bad
    settings fail naming the field."""
    import collections
    base = dict(num_images=400, text_probability=0.0, seed=4)
    ones = [S.scene_at(S.SyntheticWorldConfig(**base, object_count_weights=(1, 0, 0, 0)), i) for i in range(50)]
    assert {len(s.objects) for s in ones} == {1}
    mix = S.SyntheticWorldConfig(**base, object_count_weights=(0, 1, 1, 1), same_probability=0.0,
                                 group_probability=1.0, shuffle_objects=True)
    scenes = [S.scene_at(mix, i) for i in range(200)]
    cells = list(S.POSITIONS)
    out_of_order = 0
    for s in scenes:
        kinds = collections.Counter((o.colour, o.shape, o.size) for o in s.objects)
        assert len(kinds) == 2 and len({c for c, _, _ in kinds}) == 2, s.to_dict()  # two groups, two colours
        out_of_order += [cells.index(o.position) for o in s.objects] != sorted(cells.index(o.position) for o in s.objects)
        caption = S.captions(s)["en"]["short"]
        assert caption.count(" and ") == 1 and "," not in caption  # "two red circles and a blue square"
    assert out_of_order > 100
    with pytest.raises(ValueError, match="object_count_weights"):
        S.SyntheticWorldConfig(object_count_weights=(1, 1))
    with pytest.raises(ValueError, match="group_probability"):
        S.SyntheticWorldConfig(same_probability=0.6, group_probability=0.6)
