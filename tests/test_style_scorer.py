"""The style scorer (eval/style.py) reads the world's own renders exactly, and only them."""
import dataclasses

import numpy as np
import pytest

from seedream_jax.data import synthetic, synthetic_records
from seedream_jax.eval import style as style_lib


def _world(n: int, size: int, seed: int = 3):
    cfg = synthetic_records.RecordWorldConfig(
        synthetic.SyntheticWorldConfig(num_images=n, image_size=size, seed=seed), style_probability=1.0)
    scenes = [synthetic_records.extended_scene(cfg, i)[0] for i in range(n)]
    return scenes, np.stack([synthetic.render_scene(s, size) for s in scenes])


@pytest.fixture(scope="module")
def world64():
    return _world(160, 64)


def test_ground_truth_accuracy_64px(world64):
    scenes, images = world64
    predicted = style_lib.score_style(images, scenes)
    accuracy = style_lib.style_accuracy(predicted, [s.style for s in scenes])
    assert set(accuracy) == set(synthetic.STYLES)
    assert all(v >= 0.95 for v in accuracy.values()), accuracy
    # every value of every attribute occurs and is read
    for attribute, table in synthetic.STYLES.items():
        assert {getattr(s.style, attribute) for s in scenes} == set(table)


def test_ground_truth_accuracy_128px_and_specs():
    scenes, images = _world(40, 128, seed=5)
    predicted = style_lib.score_style(images, [s.to_dict() for s in scenes])  # spec dicts work too
    accuracy = style_lib.style_accuracy(predicted, [dataclasses.asdict(s.style) for s in scenes])
    assert all(v >= 0.95 for v in accuracy.values()), accuracy


def test_unstyled_scene_reads_plain():
    scenes, _ = _world(12, 64, seed=7)
    images = np.stack([synthetic.render_scene(dataclasses.replace(s, style=None), 64) for s in scenes])
    predicted = style_lib.score_style(images, scenes)
    assert style_lib.style_accuracy(predicted, [None] * len(scenes)) == {a: 1.0 for a in synthetic.STYLES}


def test_scorer_does_not_read_the_scene_style():
    """The scene passed in carries a wrong style: the verdict follows the pixels."""
    scenes, images = _world(24, 64, seed=9)
    liars = [dataclasses.replace(s, style=synthetic.Style()) for s in scenes]
    assert style_lib.score_style(images, liars) == style_lib.score_style(images, scenes)


def test_wrong_labels_are_counted_wrong(world64):
    scenes, images = world64
    predicted = style_lib.score_style(images, scenes)
    # plain renders scored against a pastel label: all wrong
    plain = [i for i, s in enumerate(scenes) if s.style.palette == "plain"]
    assert plain
    pastel = [synthetic.Style(palette="pastel")] * len(plain)
    assert style_lib.style_accuracy({"palette": [predicted["palette"][i] for i in plain]}, pastel) == {"palette": 0.0}
    # labels of another scene (a derangement): accuracy falls to about chance (1/3 or 1/4)
    shuffled = [scenes[(i + 1) % len(scenes)].style for i in range(len(scenes))]
    accuracy = style_lib.style_accuracy(predicted, shuffled)
    assert all(v < 0.6 for v in accuracy.values()), accuracy


def test_each_value_changes_the_verdict():
    """One scene, every value of one attribute at a time (the rest plain): each is read as drawn."""
    scene = synthetic.Scene("beige", [synthetic.ShapeObject("circle", "red", "large", "center"),
                                      synthetic.ShapeObject("square", "blue", "small", "top-left")])
    for attribute, table in synthetic.STYLES.items():
        for value in table:
            styled = dataclasses.replace(scene, style=synthetic.Style(**{attribute: value}))
            for size in (64, 128):
                reading = style_lib.read_style(synthetic.render_scene(styled, size), scene)
                assert reading.style == {**dataclasses.asdict(synthetic.Style()), attribute: value}, \
                    (attribute, value, size, reading.stats)


def test_scene_free_fallback(world64):
    scenes, images = world64
    predicted = style_lib.score_style(images)
    assert predicted["palette"] == [None] * len(scenes)
    texture = np.mean([p == s.style.texture for p, s in zip(predicted["texture"], scenes)])
    vignette = np.mean([(p == "vignette") == (s.style.lighting == "vignette")
                        for p, s in zip(predicted["lighting"], scenes)])
    framed = np.mean([(p == "framed") == (s.style.composition == "framed")
                      for p, s in zip(predicted["composition"], scenes)])
    assert min(texture, vignette, framed) >= 0.95, (texture, vignette, framed)


def test_bad_input():
    with pytest.raises(ValueError, match="uint8 images"):
        style_lib.score_style(np.zeros((2, 64, 64, 3), np.float32))
    scenes, images = _world(2, 64)
    with pytest.raises(ValueError, match="2 images but 1 scenes"):
        style_lib.score_style(images, scenes[:1])
    with pytest.raises(ValueError, match="3 predictions"):
        style_lib.style_accuracy({"palette": ["plain"] * 3}, [None] * 2)
