"""The synthetic world as ArrayRecord records: styles, fonts, caption types, spec round trip."""
import dataclasses

import numpy as np
import pytest

from seedream_jax.data import arrayrecord_io, fonts, records
from seedream_jax.data import synthetic as S
from seedream_jax.data import synthetic_records as SR

WORLD = S.SyntheticWorldConfig(num_images=40, image_size=32, text_probability=0.8, vertical_text_probability=0.5,
                               seed=5)
CFG = SR.RecordWorldConfig(WORLD, style_probability=0.5, sizes=((32, 32), (24, 40)))


def _scene(style=None):
    return S.Scene("beige", [S.ShapeObject("circle", "red", "large", "left"),
                             S.ShapeObject("square", "blue", "small", "top")],
                   S.TextItem("你好", "zh", "black", "large", "vertical", "right", fonts.CJK), style)


def test_plain_style_draws_the_default_pixels_and_every_style_value_changes_them():
    plain = S.render_scene(_scene(), 48)
    np.testing.assert_array_equal(S.render_scene(_scene(S.Style()), 48), plain)
    for name, table in S.STYLES.items():
        for value in list(table)[1:]:
            style = dataclasses.replace(S.Style(), **{name: value})
            a, b = S.render_scene(_scene(style), 48), S.render_scene(_scene(style), 48)
            np.testing.assert_array_equal(a, b)  # deterministic
            assert np.abs(a.astype(int) - plain).mean() > 0.5, (name, value)


def test_style_and_text_captions_in_both_languages():
    style = S.Style("pastel", "warm", "grain", "framed")
    caps = S.all_captions(_scene(style))
    assert caps["en"]["text"] == ('the text "你好" in large black characters, written vertically on the right '
                                  'in a sans-serif font')
    assert caps["zh"]["text"] == "右侧用黑体竖排书写的大号黑色文字“你好”"
    assert caps["en"]["style"].startswith(caps["en"]["short"] + ", in pastel colours, warm lighting")
    assert "暖色光照" in caps["zh"]["style"] and "画面带边框" in caps["zh"]["style"]
    assert set(S.all_captions(S.Scene("beige", [S.ShapeObject("circle", "red", "large", "left")]))["en"]) == \
        {"short", "long"}
    assert S.Scene.from_dict(_scene(style).to_dict()).style == style
    assert "style" not in _scene().to_dict()  # the default world's specs are unchanged
    with pytest.raises(ValueError, match="unknown style lighting 'neon'"):
        S.Scene.from_dict({**_scene().to_dict(), "style": {"lighting": "neon"}})


def test_record_world_round_trips_specs_images_and_captions(tmp_path):
    manifest = SR.write_record_world(CFG, str(tmp_path / "world"), records_per_shard=16)
    assert manifest["num_records"] == 40 and len(manifest["shards"]) == 3
    source = arrayrecord_io.ArrayRecordSource(str(tmp_path / "world"), decode=True)
    fonts_seen, sizes_seen, kinds = set(), set(), set()
    for i, rec in enumerate(source):
        scene, size = SR.extended_scene(CFG, i)
        assert rec.spec == scene.to_dict() and S.Scene.from_dict(rec.spec).to_dict() == rec.spec
        assert (rec.height, rec.width) == size and rec.image_format == "png"
        np.testing.assert_array_equal(records.decode_image(rec.image), S.render_scene(scene, size))
        assert rec.captions == S.all_captions(scene)
        assert ("text" in rec.captions["zh"]) == (scene.text is not None)
        assert ("style" in rec.captions["en"]) == (scene.style is not None)
        base = S.scene_at(WORLD, i)  # the extension keeps the base scene
        assert [o.__dict__ for o in base.objects] == [o.__dict__ for o in scene.objects]
        if scene.text:
            fonts_seen.add(scene.text.font)
        sizes_seen.add(size)
        kinds |= {f"{lang}/{k}" for lang, by in rec.captions.items() for k in by}
    assert sizes_seen == {(32, 32), (24, 40)}
    assert "wqy-microhei-mono" in fonts_seen and len(fonts_seen) >= 3
    assert kinds == {f"{lang}/{k}" for lang in ("en", "zh") for k in ("short", "long", "text", "style")}
    summary = manifest["summary"]["counts"]
    assert summary["records"] == 40 and 0 < summary["styled"] < 40
    assert summary["text"]["vertical"] > 0 and summary["text"]["zh"] > 0 and summary["text"]["en"] > 0
    again = SR.write_record_world(CFG, str(tmp_path / "world"), records_per_shard=16)  # complete: kept
    assert again == manifest
