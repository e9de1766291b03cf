"""The evaluation suite and the held-out split: matched prompts from specs, held-out pairs never
in the synthetic training world."""
import collections

import numpy as np

from seedream_jax.data import heldout
from seedream_jax.data import synthetic as S
from seedream_jax.eval import suite as SU
from seedream_jax.stages.eval import select_items


def test_suite_covers_every_category_and_split():
    items = SU.build_suite()
    assert len(items) == 153 and len({it.id for it in items}) == 153
    assert SU.suite_summary(items) == {
        "colour": {"seen": 16, "heldout": 8}, "shape": {"seen": 16, "heldout": 8},
        "count": {"seen": 12, "heldout": 8}, "position": {"seen": 9, "heldout": 8},
        "relation": {"seen": 8, "heldout": 8}, "binding": {"seen": 8, "heldout": 8},
        "groups": {"seen": 8, "heldout": 8},
        "text_zh_char": {"seen": 8}, "text_zh_word": {"seen": 16}, "text_en_word": {"seen": 20}}
    single = [it.scene.objects[0] for it in items if it.kind == "single" and it.split == "seen"]
    assert {o.colour for o in single} == set(S.COLOURS) and {o.shape for o in single} == set(S.SHAPES)
    seen = {kind: [it for it in items if it.kind == kind and it.split == "seen"] for kind in ("count", "position")}
    assert sorted(len(it.scene.objects) for it in seen["count"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert {it.scene.objects[0].position for it in seen["position"]} == set(S.POSITIONS)
    words = {it.scene.text.text for it in items if it.kind == "text"}
    assert words == set(S.WORDS["zh"]) | set(S.WORDS["en"])
    # Relations: half "left of" (different columns), half "above" (one column).
    relations = collections.Counter(it.prompt("en").rsplit(" is ", 1)[1].split()[0]
                                    for it in items if it.kind == "relation")
    assert relations == {"to": 8, "above": 8}
    # Binding and groups: two kinds of object that differ in colour and in shape.
    for it in items:
        if it.kind in ("binding", "groups"):
            kinds = {(o.colour, o.shape) for o in it.scene.objects}
            assert len(kinds) == 2 and len({c for c, _ in kinds}) == 2 and len({s for _, s in kinds}) == 2, it.id
    groups = collections.Counter(tuple(sorted(collections.Counter((o.colour, o.shape) for o in it.scene.objects).values()))
                                 for it in items if it.kind == "groups")
    assert set(groups) == {(1, 2), (2, 2), (1, 3)} and sum(groups.values()) == 16


def test_prompts_are_the_specs_matched_captions():
    for it in SU.build_suite():
        it.scene.validate()
        caps = S.captions(it.scene)
        assert it.prompt("en") == caps["en"][it.caption] and it.prompt("zh") == caps["zh"][it.caption]
        if it.kind == "text":  # the word, quoted, in both languages
            assert f'"{it.scene.text.text}"' in it.prompt("en") and f"“{it.scene.text.text}”" in it.prompt("zh")
        if it.kind in ("position", "relation"):
            assert S.POSITIONS[it.scene.objects[0].position][1] in it.prompt("zh")
        d = it.to_dict()
        assert S.Scene.from_dict(d["spec"]).to_dict() == it.scene.to_dict()


def test_suite_is_deterministic_per_seed():
    a, b, c = SU.build_suite(0), SU.build_suite(0), SU.build_suite(1)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert sum(x.to_dict() != y.to_dict() for x, y in zip(a, c)) > 60


def test_heldout_split_uses_only_heldout_pairs():
    for it in SU.build_suite():
        pairs = [heldout.is_heldout(o.colour, o.shape) for o in it.scene.objects]
        if it.split == "heldout":
            if it.kind == "groups":  # objects in cell order: one of the two groups is held out
                assert any(pairs) and not all(pairs), it.id
            else:
                assert pairs[0], it.id  # the first (or only) object is a held-out pair
                assert all(pairs) or it.kind in ("relation", "binding")
        else:
            assert not any(pairs), it.id
    # Every held-out pair is valid: known names, visible on every background.
    for colour, shape in heldout.HELDOUT_COLOUR_SHAPES:
        assert shape in S.SHAPES and all(colour in S.visible_colours(b) for b in S.BACKGROUNDS)


def test_training_world_never_draws_a_heldout_pair():
    cfg = S.SyntheticWorldConfig(num_images=600, text_probability=0.4, seed=5)
    specs = [S.scene_at(cfg, i).to_dict() for i in range(cfg.num_images)]
    assert heldout.count_heldout({"spec": s} for s in specs) == 0
    objects = [o for s in specs for o in s["objects"]]
    # ... while every colour and every shape still appears, and every other pair (white only on dark gray).
    pairs = {(o["colour"], o["shape"]) for o in objects}
    assert {c for c, _ in pairs} == set(S.COLOURS) and {s for _, s in pairs} == set(S.SHAPES)
    assert len(pairs) == len(S.COLOURS) * len(S.SHAPES) - len(heldout.HELDOUT_COLOUR_SHAPES)
    # A spec that does show one is counted.
    assert heldout.spec_is_heldout({"objects": [{"colour": "red", "shape": "star"}]})
    assert not heldout.spec_is_heldout({"objects": [{"colour": "red", "shape": "circle"}]})


def test_select_items_keeps_the_first_per_group():
    items = SU.build_suite()
    few = select_items(items, 2)
    groups = collections.Counter((it.categories, it.split) for it in few)
    assert set(groups.values()) == {2} and len(groups) == 15
    assert select_items(items, 0) == items
    assert np.all([it in items for it in few])
