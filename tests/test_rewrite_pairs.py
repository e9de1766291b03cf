"""Prompt-rewrite pairs (data/rewrite_pairs.py): the world's in both directions, and a user's JSONL file."""
import collections
import json

import pytest

from seedream_jax import config_lib
from seedream_jax.data import heldout, rewrite_pairs, sources, synthetic, synthetic_records
from seedream_jax.eval import prompt_content

N = 120


@pytest.fixture(scope="module")
def train_pairs():
    return rewrite_pairs.make_pairs(0, "train", N)


@pytest.fixture(scope="module")
def heldout_pairs():
    return rewrite_pairs.make_pairs(0, "heldout", N)


def test_pair_i_is_a_pure_function_of_seed_split_and_index(train_pairs):
    assert rewrite_pairs.make_pair(0, "train", 37) == train_pairs[37]
    assert rewrite_pairs.make_pair(1, "train", 37) != train_pairs[37]
    assert rewrite_pairs.make_pair(0, "heldout", 37) != train_pairs[37]
    assert len({(p.prompt, p.rewrite) for p in train_pairs}) > 0.9 * N  # scenes differ from pair to pair
    with pytest.raises(ValueError, match="unknown split 'test'"):
        rewrite_pairs.make_pair(0, "test", 0)
    with pytest.raises(ValueError, match=r"languages must be a non-empty subset of \('en', 'zh'\), got \('fr',\)"):
        rewrite_pairs.make_pair(0, "train", 0, languages=("fr",))


def test_pairs_are_the_scenes_captions_in_both_directions_and_languages(train_pairs):
    world = synthetic_records.RecordWorldConfig(synthetic.SyntheticWorldConfig(seed=0), style_probability=0.5)
    for p in train_pairs:
        scene = synthetic.Scene.from_dict(p.spec)
        captions = synthetic.all_captions(scene)[p.language]
        assert p.direction == rewrite_pairs.DIRECTIONS[p.index % 2]
        assert p.language == ("en", "zh")[(p.index // 2) % 2]
        assert p.target == ("style" if scene.style is not None else "long")
        assert (p.prompt, p.rewrite) == (captions["short"], captions[p.target])
        if p.direction == "caption":  # the short prompt of a training record's long caption
            assert scene == synthetic_records.extended_scene(world, p.index // 2)[0]
    kinds = collections.Counter((p.direction, p.target, p.language) for p in train_pairs)
    assert len(kinds) == 8 and min(kinds.values()) >= 5, kinds


def test_train_never_shows_a_heldout_pair_and_heldout_always_does(train_pairs, heldout_pairs):
    assert heldout.count_heldout({"spec": p.spec} for p in train_pairs) == 0
    assert heldout.count_heldout({"spec": p.spec} for p in heldout_pairs) == N


def test_every_rewrite_keeps_its_prompts_content(train_pairs, heldout_pairs):
    for language in ("en", "zh"):
        pairs = [p for p in train_pairs + heldout_pairs if p.language == language]
        assert prompt_content.preservation_rate([p.prompt for p in pairs], [p.rewrite for p in pairs], language) == 1.0


def test_world_pairs_from_a_data_section():
    d = config_lib.data_section(format="text", path="world", num_images=10, seed=3, caption_languages=("zh",))
    d.world.max_objects = 1
    src = sources.open_source(d, "/nonexistent", 4, yields="text")
    world = synthetic.SyntheticWorldConfig(seed=3, **d.world.to_dict())
    splits = ["heldout" if (i // 2) % rewrite_pairs.HELDOUT_EVERY == rewrite_pairs.HELDOUT_EVERY - 1 else "train"
              for i in range(10)]  # one language: blocks of two rows (one per direction)
    pairs = [rewrite_pairs.make_pair(3, split, i, world=world, languages=("zh",)) for i, split in enumerate(splits)]
    assert src.rows == [p.row() for p in pairs] and splits.count("heldout") == 2
    # the rewriter sees the held-out (colour, shape) pairs too, in every fourth block of rows only
    assert [heldout.count_heldout([{"spec": p.spec}]) for p in pairs] == [int(s == "heldout") for s in splits]
    assert all(r["language"] == "zh" for r in src.rows)
    assert all(len(prompt_content.parse(r["prompt"], "zh").objects) == 1 for r in src.rows)  # the scene mix is used
    batch = next(src)
    assert set(batch) == set(rewrite_pairs.FIELDS) and all(len(v) == 4 for v in batch.values())
    fresh = sources.open_source(d, "/nonexistent", 4)
    fresh.set_state(src.get_state())
    assert next(fresh) == next(src)


def test_heldout_rows_come_in_every_direction_and_language():
    d = config_lib.data_section(format="text", path="world", num_images=64)
    rows = rewrite_pairs.world_rows(d)
    pairs = [rewrite_pairs.make_pair(0, "heldout" if rewrite_pairs.heldout_row(i, 2) else "train", i)
             for i in range(64)]
    assert [p.row() for p in pairs] == rows
    split_kinds = collections.Counter((p.split, p.direction, p.language) for p in pairs)
    assert split_kinds == {(split, direction, language): {"train": 12, "heldout": 4}[split]
                           for split in rewrite_pairs.SPLITS for direction in rewrite_pairs.DIRECTIONS
                           for language in ("en", "zh")}


def test_rewrite_style_probability_sets_the_share_of_style_rewrites():
    """0 gives layout rewrites only (a base trained without style captions), 1 style rewrites only."""
    def targets(probability):
        d = config_lib.data_section(format="text", path="world", num_images=24, rewrite_style_probability=probability)
        rows = rewrite_pairs.world_rows(d)
        return [prompt_content.parse(r["rewrite"], r["language"]).style is not None for r in rows], rows

    default, default_rows = targets(0.5)
    assert 0 < sum(default) < len(default)
    assert default_rows == rewrite_pairs.world_rows(config_lib.data_section(format="text", path="world", num_images=24))
    layout, layout_rows = targets(0.0)
    assert not any(layout) and all(r["rewrite"] != r["prompt"] for r in layout_rows)
    assert all(targets(1.0)[0])


def test_a_users_jsonl_bad_rows_skipped_and_counted(tmp_path):
    good = [{"prompt": "一只猫", "rewrite": "一只橘色的猫坐在窗台上"},
            {"prompt": "a cat", "rewrite": "a ginger cat on a windowsill", "language": "en"},
            {"prompt": "猫 cat", "rewrite": "a cat, 一只猫", "language": "en"}]
    bad = [{"prompt": "dog", "rewrite": ""}, {"prompt": "dog"}, {"rewrite": "a dog"},
           {"prompt": "chien", "rewrite": "un chien", "language": "fr"}, {"prompt": "a", "rewrite": "b", "language": 1}]
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in good + bad]
    lines += [b"not json", b"[1, 2]", b"", b'{"prompt": "\xff\xfe", "rewrite": "x"}']
    (tmp_path / "pairs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rows, skipped = rewrite_pairs.read_pairs(str(tmp_path / "pairs.jsonl"))
    assert rows == [dict(good[0], language="zh", direction="user"), dict(good[1], direction="user"),
                    dict(good[2], direction="user")]
    assert skipped == {"missing or empty 'rewrite'": 2, "missing or empty 'prompt'": 1,
                       rewrite_pairs.BAD_LANGUAGE: 2, "invalid JSON": 1, "not a JSON object": 1, sources.BAD_UTF8: 1}
    src = sources.open_source(config_lib.data_section(format="text", path="pairs.jsonl"), str(tmp_path), 3)
    assert src.rows == rows and src.skipped == skipped


def test_eval_prompts_are_the_same_scenes_in_each_language(heldout_pairs):
    en, zh = (rewrite_pairs.eval_prompts(0, "heldout", lang, 8) for lang in ("en", "zh"))
    for i, (e, z) in enumerate(zip(en, zh)):
        scene = synthetic.Scene.from_dict(heldout_pairs[i].spec)  # the scene of pair i, whatever its language
        assert (e, z) == (synthetic.captions(scene)["en"]["short"], synthetic.captions(scene)["zh"]["short"])
