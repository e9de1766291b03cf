"""Object scoring: colour segmentation and shape templates recover the world's specs exactly, the
suite's object categories score 1.0 on ground-truth renderings and 0.0 on deliberately wrong ones."""
import dataclasses

import numpy as np
import pytest

from seedream_jax.data import synthetic as S
from seedream_jax.eval import objects as O
from seedream_jax.eval import report, scoring
from seedream_jax.eval import suite as SU
from seedream_jax.eval.benchmark import ground_truth_generator, generate_suite, score_suite

SIZE = 64


def _spec_tuples(objs):
    return sorted((o.colour, o.shape, o.size, o.position) for o in objs)


@pytest.mark.parametrize("size", [64, (64, 96), 128])
def test_detection_recovers_random_world_scenes(size):
    cfg = S.SyntheticWorldConfig(text_probability=0.0, seed=11)
    for i in range(120):
        scene = S.scene_at(cfg, i)
        found = O.detect_objects(S.render_scene(scene, size))
        assert _spec_tuples(found) == _spec_tuples(scene.objects), (i, scene)


def test_every_colour_shape_size_background_and_cell():
    n = 0
    for bg in S.BACKGROUNDS:
        for colour in S.visible_colours(bg):
            for shape in S.SHAPES:
                for size in S.SIZES:
                    for k, position in enumerate(S.POSITIONS):
                        if (k + n) % 3:  # a third of the cells, rotating, keeps this fast
                            continue
                        scene = S.Scene(bg, [S.ShapeObject(shape, colour, size, position)])
                        found = O.detect_objects(S.render_scene(scene, SIZE))
                        assert _spec_tuples(found) == _spec_tuples(scene.objects), scene
                        assert found[0].shape_iou > 0.75
                    n += 1
    assert n == 22 * 4 * 2


def test_blank_and_noise_images_have_no_objects():
    blank = np.full((SIZE, SIZE, 3), S.BACKGROUNDS["beige"][0], np.uint8)
    assert O.detect_objects(blank) == []
    grey_noise = np.clip(np.random.default_rng(0).normal(200, 8, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    assert O.detect_objects(grey_noise) == []


def _object_items():
    return [it for it in SU.build_suite() if it.kind != "text"]


def _scores(items, scenes):
    """Per-category mean over items of the object scores of renderings of ``scenes``."""
    out = {}
    for item, scene in zip(items, scenes):
        found = O.detect_objects(S.render_scene(scene, SIZE))
        for cat, v in scoring.object_scores(item, found).items():
            out.setdefault(cat, []).append(v)
    return {cat: float(np.mean(v)) for cat, v in out.items()}


def test_ground_truth_scores_one_in_every_object_category():
    items = _object_items()
    images = generate_suite(ground_truth_generator(items, SIZE, SIZE), items)
    image_results, pair_results = score_suite(items, images, read_text=None)
    metrics = report.aggregate(image_results)
    for cat in SU.OBJECT_CATEGORIES:
        for split in SU.SPLITS:
            for lang in SU.LANGUAGES:
                assert metrics[cat]["accuracy"][split][lang] >= 0.98, (cat, split, lang)
    assert all(p["consistency"] == 1.0 for p in pair_results)
    print("\nground truth:", {cat: metrics[cat]["accuracy"]["all"]["all"] for cat in SU.OBJECT_CATEGORIES})


def _other(options, value):
    return [o for o in options if o != value][0]


def _free_cell(scene):
    return next(p for p in S.POSITIONS if p not in {o.position for o in scene.objects})


def test_wrong_images_fail():
    items = _object_items()
    by_kind = {k: [it for it in items if it.kind == k]
               for k in ("single", "count", "position", "relation", "binding", "groups")}
    results = {}

    def wrong(kind, edit):
        its = by_kind[kind]
        results[edit.__name__] = _scores(its, [edit(it.scene) for it in its])

    def wrong_colour(s):
        o = s.objects[0]
        colour = _other(S.visible_colours(s.background), o.colour)
        return dataclasses.replace(s, objects=[dataclasses.replace(o, colour=colour)])

    def wrong_shape(s):
        o = s.objects[0]
        return dataclasses.replace(s, objects=[dataclasses.replace(o, shape=_other(S.SHAPES, o.shape))])

    def wrong_count(s):  # one object more, or one fewer where there are 4
        objs = list(s.objects)
        objs = objs[:-1] if len(objs) == 4 else objs + [dataclasses.replace(objs[0], position=_free_cell(s))]
        return dataclasses.replace(s, objects=objs)

    def wrong_position(s):
        o = s.objects[0]
        return dataclasses.replace(s, objects=[dataclasses.replace(o, position=_other(S.POSITIONS, o.position))])

    def swapped_relation(s):
        a, b = s.objects
        return dataclasses.replace(s, objects=[dataclasses.replace(a, position=b.position),
                                               dataclasses.replace(b, position=a.position)])

    def missing_object(s):
        return dataclasses.replace(s, objects=[dataclasses.replace(s.objects[0], colour=_other(
            S.visible_colours(s.background), s.objects[0].colour))] + list(s.objects[1:]))

    def swapped_shapes(s):  # both colours and both shapes drawn, bound the wrong way round
        a, b = s.objects
        return dataclasses.replace(s, objects=[dataclasses.replace(a, shape=b.shape), dataclasses.replace(b, shape=a.shape)])

    def moved_to_other_group(s):  # one object of the first group redrawn as the other group's kind
        first = s.objects[0]
        other = next(o for o in s.objects if (o.colour, o.shape) != (first.colour, first.shape))
        return dataclasses.replace(s, objects=[dataclasses.replace(first, colour=other.colour, shape=other.shape)]
                                   + list(s.objects[1:]))

    wrong("binding", swapped_shapes)
    wrong("groups", moved_to_other_group)
    wrong("single", wrong_colour)
    wrong("single", wrong_shape)
    wrong("count", wrong_count)
    wrong("position", wrong_position)
    wrong("relation", swapped_relation)
    wrong("relation", missing_object)
    print("\nwrong images:", results)
    assert results["wrong_colour"]["colour"] == 0.0 and results["wrong_colour"]["shape"] == 1.0
    assert results["wrong_shape"]["shape"] == 0.0 and results["wrong_shape"]["colour"] == 1.0
    assert results["wrong_count"]["count"] == 0.0
    assert results["wrong_position"]["position"] == 0.0
    assert results["swapped_relation"]["relation"] == 0.0
    assert results["missing_object"]["relation"] == 0.0
    assert results["swapped_shapes"]["binding"] == 0.0
    assert results["moved_to_other_group"]["groups"] == 0.0


def test_consistency_compares_the_two_languages():
    item = next(it for it in _object_items() if it.kind == "count" and len(it.scene.objects) == 3)
    img = S.render_scene(item.scene, SIZE)
    a = scoring.score_image(item, img)["attributes"]
    assert len(a) == 3 and scoring.consistency(a, a) == 1.0
    fewer = S.render_scene(dataclasses.replace(item.scene, objects=item.scene.objects[:2]), SIZE)
    b = scoring.score_image(item, fewer)["attributes"]
    assert scoring.consistency(a, b) == pytest.approx(2 / 3)
    assert scoring.consistency([], []) is None and scoring.consistency(a, []) == 0.0
