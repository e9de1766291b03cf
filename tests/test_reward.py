"""Alignment reward: world preference pairs, the two-tower model's fit, the reward API, the reward stage."""
import collections
import copy
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seedream_jax import config_lib, rewards
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.data import heldout, synthetic as S, world_pairs as W
from seedream_jax.data.tokenizer import TextTokenizer, train_sentencepiece
from seedream_jax.models.rewards import AlignmentReward, AlignmentRewardConfig
from seedream_jax.models.text_encoder import Qwen2Config
from seedream_jax.rewards import objective
from seedream_jax.rewards.alignment import AlignmentScorer
from seedream_jax.stages import ranked_samples
from seedream_jax.stages.reward import batch_loss, calibration_batch, pair_batch, ranked_batch
from seedream_jax.training.reward_losses import ranking_over_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = AlignmentRewardConfig(
    llm=Qwen2Config(vocab_size=640, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, rope_theta=1e4),
    image_size=32, patch_size=4, image_channels=(8,), groups=4, embed_dim=32, max_length=32)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    world = S.SyntheticWorldConfig(num_images=200, seed=3, text_probability=0.5)
    texts = S.caption_texts({"captions": S.captions(S.scene_at(world, i))} for i in range(world.num_images))
    path = train_sentencepiece(texts, str(tmp_path_factory.mktemp("spm") / "spm"), 640,
                               user_defined_symbols=S.zh_caption_words())
    return TextTokenizer.from_sentencepiece(path)


def _groups(scene):
    return collections.Counter((o.shape, o.colour, o.size) for o in scene.objects)


def _cells(scene):
    return {o.position: (o.shape, o.colour, o.size) for o in scene.objects}


@pytest.mark.parametrize("kind", W.KINDS)
def test_each_perturbation_changes_exactly_the_attribute_it_names(kind):
    for split in W.SPLITS:
        for k in range(12):
            p = W.make_pair(5, split, W.KINDS.index(kind) + 6 * k)
            a, b = p.scene, p.negative
            assert p.kind == kind and (a.background, a.style) == (b.background, b.style)
            assert W.make_pair(5, split, p.index).negative == b  # deterministic
            assert heldout.spec_is_heldout(a.to_dict()) == (split == "heldout")
            if split == "train":
                assert not heldout.spec_is_heldout(b.to_dict())  # train negatives never show a held-out pair
            if kind != "text":
                assert a.text == b.text
            ga, gb = _groups(a), _groups(b)
            if kind in ("colour", "shape"):
                other = "shape" if kind == "colour" else "colour"
                assert [o.position for o in a.objects] == [o.position for o in b.objects]
                changed = [(x, y) for x, y in zip(a.objects, b.objects) if x != y]
                assert changed and all(getattr(x, kind) != getattr(y, kind) and getattr(x, other) == getattr(y, other)
                                       and x.size == y.size for x, y in changed)
                assert sorted(ga.values()) == sorted(gb.values())  # one whole group changed, none merged
                assert len(ga - gb) == 1
            elif kind == "count":
                assert set(ga) == set(gb) and sum(abs(ga[g] - gb[g]) for g in ga) == 1
                small, big = sorted((_cells(a), _cells(b)), key=len)
                assert all(big[c] == v for c, v in small.items())  # the others stay where they were
            elif kind == "position":
                ca, cb = _cells(a), _cells(b)
                gone, new = set(ca) - set(cb), set(cb) - set(ca)
                assert ga == gb and len(gone) == len(new) == 1 and ca[gone.pop()] == cb[new.pop()]
                assert all(ca[c] == cb[c] for c in set(ca) & set(cb))  # one object moved, the rest stayed
                assert S._relation(a.objects) == S._relation(b.objects)
            elif kind == "relation":
                (c1, k1), (c2, k2) = _cells(a).items()
                assert _cells(b) == {c1: k2, c2: k1} and ga == gb  # the two objects swapped cells
                assert S._relation(a.objects) != S._relation(b.objects)
            else:
                assert a.objects == b.objects and a.text.text != b.text.text
                assert (a.text.language, a.text.orientation, a.text.position) == \
                       (b.text.language, b.text.orientation, b.text.position)
            for lang in W.LANGUAGES:
                chosen, rejected = p.captions(lang)
                assert chosen != rejected
                if kind == "colour":
                    new = next(y.colour for x, y in zip(a.objects, b.objects) if x != y)
                    assert (new if lang == "en" else S.COLOURS[new][1]) in rejected
                if kind == "text":
                    assert f"{b.text.text}" in rejected and a.text.text not in rejected
            order = list(S.POSITIONS)
            assert [order.index(o.position) for o in b.objects] == sorted(order.index(o.position) for o in b.objects)
            pos, neg = p.images(32)
            assert not np.array_equal(pos, neg)


def test_splits_never_share_a_scene():
    train = {json.dumps(W.make_pair(0, "train", i).scene.to_dict()) for i in range(120)}
    held = {json.dumps(p.scene.to_dict()) for p in W.heldout_pairs(0, 20)}
    assert len(held) > 100 and not train & held


def test_a_short_fit_ranks_a_clearly_right_pair_above_a_clearly_wrong_one(tokenizer):
    colours = S.visible_colours("light gray")
    shapes = list(S.SHAPES)
    pairs = []
    for i, colour in enumerate(colours):  # one large object; its negative has the next colour
        obj = S.ShapeObject(shapes[i % 4], colour, "large", "center")
        wrong = S.ShapeObject(obj.shape, colours[(i + 1) % len(colours)], "large", "center")
        pairs.append(W.PreferencePair("colour", "train", i, S.Scene("light gray", [obj]),
                                      S.Scene("light gray", [wrong]), "short"))
    pairs = pairs * 2
    n = len(pairs)
    languages = ["en"] * (n // 2) + ["zh"] * (n // 2)
    batch = pair_batch(pairs, languages, tokenizer, TINY)
    model = AlignmentReward(TINY)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), batch["ids_pos"][:1],
                                 batch["mask_pos"][:1])["params"]
    tx = optax.adam(3e-3)

    def loss(p):
        return batch_loss(model, p, batch, contrastive_weight=1.0, ranking_weight=1.0)

    @jax.jit
    def step(p, opt):
        (value, metrics), g = jax.value_and_grad(loss, has_aux=True)(p)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, value, metrics

    opt = tx.init(params)
    params, opt, first, metrics = step(params, opt)
    for _ in range(50):
        params, opt, value, metrics = step(params, opt)
    assert float(value) < 0.5 * float(first)
    scorer = AlignmentScorer(model, params, tokenizer)
    for p, lang in zip(pairs, languages):
        right, wrong = p.captions(lang)
        image, other = p.images(32)
        good, bad_caption, bad_image = np.asarray(scorer(np.stack([image, image, other]), [right, wrong, right]))
        assert good > bad_caption and good > bad_image, (lang, right, wrong)


def test_the_alignment_reward_is_differentiable_in_the_pixels(tokenizer):
    model = AlignmentReward(TINY)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32),
                                 jnp.ones((1, 8), bool))["params"]
    rewards.register("test_alignment", AlignmentScorer(model, params, tokenizer), differentiable=True, replace=True)
    prompts = ["a large red circle", "两个小的蓝色正方形"]
    images = jnp.asarray(np.stack([S.render_scene(S.Scene("beige", [S.ShapeObject("circle", "red", "large", "center")]),
                                                  128)] * 2), jnp.float32) / 127.5 - 1.0  # 128 px: resized inside
    values = rewards.score("test_alignment", images, prompts)
    assert values.shape == (2,) and np.all(np.abs(np.asarray(values)) <= 1.0 + 1e-5)
    grad = jax.grad(lambda x: jnp.sum(rewards.score("test_alignment", x, prompts)))(images)
    assert grad.shape == images.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0
    assert rewards.get("test_alignment").differentiable and not rewards.get("objective").differentiable


def test_the_objective_reward_is_one_for_the_truth_and_zero_for_a_wrong_image():
    pairs = [W.make_pair(2, "train", i) for i in range(60) if i % 6 != 5]  # no text kind: OCR is slow
    for p in [p for p in pairs if p.scene.text is None][:10]:
        truth, wrong = p.images(64)
        for lang in ("en", "zh"):
            prompt = S.captions(p.scene)[lang]["long"]
            got = rewards.score("objective", np.stack([truth, wrong]), [prompt, prompt])
            assert got.tolist() == [1.0, 0.0], (p.kind, prompt)
            short = S.captions(p.scene)[lang]["short"]
            assert rewards.score("objective", truth[None].astype(np.float32) / 127.5 - 1, [short]).tolist() == [1.0]
    with pytest.raises(ValueError, match="not a caption of the synthetic world"):
        rewards.score("objective", truth[None], ["a photo of a cat"])
    with pytest.raises(KeyError, match="unknown reward"):
        rewards.score("aesthetic", truth[None], ["x"])


STAGE_CONFIG = '''
from seedream_jax import config_lib

def get_config():
    c = config_lib.base_config("tiny")
    c.stages = ("data", "tokenizer", "reward")
    c.data.num_images = 64
    r = c.reward
    r.train.update(steps=4, batch_size=8, checkpoint_every=2, log_every=2)
    r.model.update(image_channels=(8,), groups=4, embed_dim=32)
    r.model.llm.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1)
    r.pairs.update(heldout_per_kind=4)
    r.speed_batch = 4
    return c
'''


def test_the_reward_stage_runs_through_main_and_its_model_loads_into_the_api(tmp_path):
    cfg = tmp_path / "reward.py"
    cfg.write_text(STAGE_CONFIG)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "seedream_jax.main", "--config", str(cfg), "--workdir",
                          str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    stage = open_stage(str(tmp_path / "run" / "reward"))
    assert (stage.kind, stage.step, list(stage.meta["components"])) == ("reward", 4, ["alignment"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["reward"]
    for what in ("caption", "image"):
        assert set(summary["heldout_accuracy"][what]) == set(W.KINDS)
        assert all(set(row) == {"en", "zh"} for row in summary["heldout_accuracy"][what].values())
    assert summary["scorer_images_per_second"] > 0
    assert "| colour |" in (tmp_path / "run" / "reward" / "heldout_accuracy.md").read_text()
    scorer = rewards.load_alignment(stage.directory, name="test_stage_alignment")
    image = S.render_scene(S.Scene("beige", [S.ShapeObject("circle", "red", "large", "center")]), 64)[None]
    assert rewards.score("test_stage_alignment", image, ["a large red circle"]).shape == (1,)
    assert scorer.config.image_channels == (8,)


# The graded objective reward (rewards/objective.py, ``objective_graded``): partial credit per claimed
# object attribute and per claim. Every test below asserts a value strictly between 0 and 1 or a strict
# order between failing images, so the binary ``objective`` score (0.0 for all of them) fails each one.
_O = S.ShapeObject
_THREE = S.Scene("beige", [_O("circle", "red", "large", "top-left"), _O("square", "blue", "small", "bottom-right"),
                           _O("star", "yellow", "large", "center")])
_TWO = S.Scene("dark gray", [_O("triangle", "green", "large", "left"), _O("circle", "white", "small", "right")])


def _variant(scene, colour=None, shape=None, move=None, drop=False, extra=None):
    """A copy of ``scene`` with object 0 recoloured / moved, object 1 reshaped, object 0 dropped, or
    ``extra`` added."""
    objects = [dataclasses.replace(o) for o in scene.objects]
    if colour:
        objects[0].colour = colour
    if shape:
        objects[1].shape = shape
    if move:
        objects[0].position = move
    if drop:
        objects = objects[1:]
    return dataclasses.replace(scene, objects=objects + ([extra] if extra else []))


def _graded_table(scene):
    """{name: uint8 image}: the truth, one attribute wrong (colour, moved, missing, extra), two wrong
    (colour and shape), and a blank canvas of the scene's background."""
    images = {"truth": scene,
              "colour": _variant(scene, colour="purple"),
              "moved": _variant(scene, move="bottom-left"),
              "missing": _variant(scene, drop=True),
              "extra": _variant(scene, extra=_O("square", "cyan", "small", "top-right")),
              "two": _variant(scene, colour="purple", shape="triangle")}
    images = {k: S.render_scene(v, 64) for k, v in images.items()}
    images["blank"] = np.full((64, 64, 3), S.BACKGROUNDS[scene.background][0], np.uint8)
    return images


def _graded(images: dict, prompt: str) -> dict:
    got = rewards.score("objective_graded", np.stack(list(images.values())), [prompt] * len(images))
    assert got.dtype == np.float32 and got.shape == (len(images),)
    return dict(zip(images, got.tolist()))


def test_the_graded_objective_reward_is_one_for_the_truth_and_the_formula_for_one_wrong_attribute():
    images = _graded_table(_THREE)
    # (N * O + claims holding) / (N + claims); N = 3 objects; O = assignment hits / (A * max(N, D))
    want = {"short": dict(truth=1.0, colour=8 / 9, moved=1.0, missing=6 / 9, extra=9 / 12, two=7 / 9, blank=0.0),
            "long": dict(truth=1.0, colour=(3 * 11 / 12 + 1) / 4, moved=(3 * 11 / 12 + 1) / 4,  # + background
                         missing=(3 * 8 / 12 + 1) / 4, extra=(3 * 12 / 16 + 1) / 4, two=(3 * 10 / 12 + 1) / 4,
                         blank=1 / 4)}
    for lang in ("en", "zh"):
        for kind in ("short", "long"):
            prompt = S.captions(_THREE)[lang][kind]
            got = _graded(images, prompt)
            assert got["truth"] == 1.0, (lang, kind)
            np.testing.assert_allclose([got[k] for k in want[kind]], list(want[kind].values()), rtol=1e-6,
                                       err_msg=f"{lang} {kind}: {got}")
            wrong = ("colour", "missing", "extra") + (("moved",) if kind == "long" else ())
            assert all(0.0 < got[k] < got["truth"] for k in wrong), (lang, kind, got)
    assert rewards.score("objective", np.stack([images["truth"], images["colour"]]),
                         [S.captions(_THREE)["en"]["long"]] * 2).tolist() == [1.0, 0.0]


def test_the_graded_objective_reward_ranks_blank_below_one_wrong_and_two_wrong_below_one():
    for scene in (_THREE, _TWO):
        images = _graded_table(scene)
        for lang in ("en", "zh"):
            for kind in ("short", "long"):
                got = _graded(images, S.captions(scene)[lang][kind])
                one_wrong = [got[k] for k in ("colour", "missing", "extra") + (("moved",) if kind == "long" else ())]
                assert got["blank"] < min(one_wrong), (scene.background, lang, kind, got)
                assert got["two"] < got["colour"], (scene.background, lang, kind, got)
                assert got["truth"] == 1.0 > max(one_wrong), (scene.background, lang, kind, got)
    # the two-object long caption states a relation; recolouring the first object also breaks it
    got = _graded(_graded_table(_TWO), S.captions(_TWO)["en"]["long"])
    assert got["colour"] == pytest.approx((2 * 7 / 8 + 1 + 0) / 4) and got["blank"] == pytest.approx(1 / 4)


def test_the_graded_objective_reward_is_one_exactly_where_the_binary_one_is():
    pairs = [W.make_pair(2, "train", i) for i in range(60) if i % 6 != 5]  # no text kind: OCR is slow
    pairs = [p for p in pairs if p.scene.text is None][:12]
    assert {p.kind for p in pairs} == {"colour", "shape", "count", "position", "relation"}
    for p in pairs:
        truth, wrong = p.images(64)
        for lang in ("en", "zh"):
            prompt = S.captions(p.scene)[lang][p.caption_type]
            graded = rewards.score("objective_graded", np.stack([truth, wrong]), [prompt, prompt])
            binary = rewards.score("objective", np.stack([truth, wrong]), [prompt, prompt])
            assert binary.tolist() == [1.0, 0.0] and graded[0] == 1.0 and 0.0 < graded[1] < 1.0, (p.kind, prompt, graded)


def test_the_graded_objective_reward_weighs_the_word_scores_0_off_the_world_and_runs_on_the_host():
    from seedream_jax.data.ocr import TextBox
    from seedream_jax.rewards import in_graph, objective

    scene = dataclasses.replace(_TWO, objects=[_O("triangle", "green", "large", "top-left"),
                                               _O("circle", "white", "small", "top-right")],
                                text=S.TextItem("MOON", "en", "yellow", "large", "horizontal", "bottom", "dejavu-sans-bold"))
    scene.validate()
    image = S.render_scene(scene, 64)
    y0, x0, y1, x1 = S.text_box(scene, 64)
    quad = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)

    def reads(word):  # a stand-in OCR (the real one is slow): one line reading ``word`` over the glyphs
        return lambda img: [TextBox(word, 1.0, quad)]
    short, long = S.captions(scene)["en"]["short"], S.captions(scene)["en"]["long"]
    assert objective.parse_caption(long).relation is not None
    for prompt, others in ((short, 1), (long, 3)):  # text; background, relation, text
        right, wrong = (objective.objective_graded_score(image[None], [prompt], reads(w))[0] for w in ("MOON", "NOON"))
        assert right == 1.0 and wrong == pytest.approx((2 + others - 1) / (2 + others)), prompt
        assert objective.objective_score(image[None], [prompt], reads("NOON")).tolist() == [0.0]
    # a prompt that is not a world caption scores 0; float pixels in [-1, 1] score as their uint8 originals
    rendered = _graded_table(_THREE)
    truth, colour = rendered["truth"], rendered["colour"]
    pixels = np.stack([truth, colour, truth]).astype(np.float32) / 127.5 - 1
    prompt = S.captions(_THREE)["en"]["short"]
    got = rewards.score("objective_graded", pixels, [prompt, prompt, "a photo of a cat"])
    np.testing.assert_allclose(got, [1.0, 8 / 9, 0.0], rtol=1e-6)
    with pytest.raises(TypeError, match="not differentiable"):
        jax.grad(lambda x: rewards.score("objective_graded", x, [prompt]).sum())(jnp.asarray(pixels[:1]))
    # the rlhf stage takes it by name (rlhf.rewards = {'objective_graded': w}): a host callback in the step
    assert not rewards.get("objective_graded").differentiable
    reward = in_graph.graph_reward("objective_graded")
    batch = reward.prepare([prompt, prompt])
    np.testing.assert_allclose(jax.jit(reward.score)(jnp.asarray(pixels[:2]), batch), [1.0, 8 / 9], rtol=1e-6)


# Pairs of a generator's own images ranked by the graded objective check (stages/ranked_samples.py).

def test_ranked_pairs_prefer_the_higher_score_of_one_captions_images_and_skip_ties():
    scores = np.array([[0.5, 1.0, 0.5], [0.2, 0.2, 0.2], [0.0, 0.3, 0.6]], np.float32)
    better, worse, caption = ranked_samples.ranked_pairs(scores)
    assert list(zip(better, worse, caption)) == [(1, 0, 0), (1, 2, 0), (7, 6, 2), (8, 6, 2), (8, 7, 2)]
    better, worse, caption = ranked_samples.ranked_pairs(scores, min_gap=0.35)
    assert list(zip(better, worse)) == [(1, 0), (1, 2), (8, 6)]


def test_world_prompts_alternate_languages_and_keep_the_splits_apart():
    mix = S.SyntheticWorldConfig(max_objects=2, object_count_weights=(2.0, 1.0), text_probability=0.0)
    train = ranked_samples.world_prompts(mix, 0, "train", 40)
    held = ranked_samples.world_prompts(mix, 0, "heldout", 40)
    assert train == ranked_samples.world_prompts(mix, 0, "train", 40)  # a pure function of the seed

    def heldout_pairs(prompt):
        claimed = {o[:2] for o in objective.parse_caption(prompt).objects}
        return claimed & {(c, s) for c, s in heldout.HELDOUT_COLOUR_SHAPES}
    assert all(heldout_pairs(p) for p in held) and not any(heldout_pairs(p) for p in train)
    assert all(p.isascii() for p in train[::2]) and not any(p.isascii() for p in train[1::2])


def test_draw_samples_each_caption_several_times_and_ranks_them_by_the_objective_check(tmp_path, monkeypatch):
    circle = S.render_scene(S.Scene("beige", [S.ShapeObject("circle", "red", "large", "center")]), 32)
    blank = S.render_scene(S.Scene("beige", []), 32)

    def fake_pipe(params, prompts, *, height, width, seed, **sampler):
        assert (height, width) == (32, 32) and sampler == {"num_steps": 3, "guidance_scale": 2.0}
        return np.stack([circle if k % 2 == 0 else blank for k in range(len(prompts))])
    monkeypatch.setattr("seedream_jax.stages.sample.load_pipeline", lambda *a, **k: (fake_pipe, None))
    monkeypatch.setattr(ranked_samples, "open_stage", lambda path: type("S", (), dict(directory=path, step=7))())
    g = config_lib.reward_section().ranked.generated
    g.update(source="pretrain", per_caption=4, num_steps=3, guidance_scale=2.0, batch_size=4)
    mix = S.SyntheticWorldConfig(max_objects=1, object_count_weights=(1.0,), text_probability=0.0)
    samples = ranked_samples.draw(config_lib.base_config("tiny"), g, str(tmp_path), mix, "train", 6, 32)
    assert samples.images.shape == (24, 32, 32, 3) and len(samples.prompts) == 6 and samples.per_caption == 4
    assert np.array_equal(samples.scores, rewards.score("objective_graded", samples.images,
                                                        [p for p in samples.prompts for _ in range(4)]))
    assert len(samples.better) > 0 and np.all(samples.scores[samples.better] > samples.scores[samples.worse])
    assert np.all(samples.better // 4 == samples.caption) and np.all(samples.worse // 4 == samples.caption)


def _generated_pairs(tokenizer, n=8):
    """``RankedSamples`` of n captions, each with two images: its true rendering preferred over a
    colour-perturbed scene's; and the captions' tokens."""
    pairs = [W.make_pair(4, "train", i, kind="colour") for i in range(n)]
    images = np.stack([im for p in pairs for im in p.images(32)])
    samples = ranked_samples.RankedSamples(images, [p.captions("en")[0] for p in pairs],
                                           np.tile(np.array([1.0, 0.5], np.float32), n),
                                           np.arange(0, 2 * n, 2, dtype=np.int32),
                                           np.arange(1, 2 * n, 2, dtype=np.int32),
                                           np.arange(n, dtype=np.int32))
    return samples, tokenizer(samples.prompts, TINY.max_length)


def _fit(model, params, batch, steps=30, **weights):
    """(params, last loss, last metrics) after ``steps`` Adam steps on ``batch`` with only the loss
    terms of ``weights`` (``ranked_weight``, ``calibration_weight``)."""
    tx = optax.adam(3e-3)

    @jax.jit
    def step(p, opt):
        (value, m), grad = jax.value_and_grad(lambda q: batch_loss(
            model, q, batch, contrastive_weight=0.0, ranking_weight=0.0, **weights), has_aux=True)(p)
        updates, opt = tx.update(grad, opt, p)
        return optax.apply_updates(p, updates), opt, value, m

    opt = tx.init(params)
    for _ in range(steps):
        params, opt, value, m = step(params, opt)
    return params, value, m


def test_the_generated_pairs_loss_is_bradley_terry_of_the_preferred_image_and_a_fit_learns_it(tokenizer):
    samples, tokens = _generated_pairs(tokenizer)
    world = [W.make_pair(5, "train", i) for i in range(4)]
    batch = pair_batch(world, ["en", "zh"] * 2, tokenizer, TINY)
    batch.update(ranked_batch(samples.images[samples.better], samples.images[samples.worse], *tokens))
    model = AlignmentReward(TINY)
    params = jax.jit(model.init)(jax.random.PRNGKey(2), jnp.zeros((1, 32, 32, 3)), batch["ids_pos"][:1],
                                 batch["mask_pos"][:1])["params"]
    _, metrics = batch_loss(model, params, batch, contrastive_weight=1.0, ranking_weight=1.0, ranked_weight=1.0)
    scorer = AlignmentScorer(model, params, tokenizer)
    cos_b = np.asarray(scorer(batch["ranked_better"], samples.prompts))
    cos_w = np.asarray(scorer(batch["ranked_worse"], samples.prompts))
    scale = float(model.apply({"params": params}, method=AlignmentReward.scale))
    np.testing.assert_allclose(float(metrics["bt_ranked"]), np.mean(np.logaddexp(0, scale * (cos_w - cos_b))),
                               rtol=1e-5)
    params, value, m = _fit(model, params, batch, ranked_weight=1.0)
    assert float(value) < 0.1 * float(metrics["bt_ranked"]) and float(m["ranked_pair_accuracy"]) == 1.0
    without = {k: v for k, v in batch.items() if not k.startswith("ranked_")}
    assert "bt_ranked" not in batch_loss(model, params, without, contrastive_weight=1.0, ranking_weight=1.0)[1]


def test_ranking_over_a_batch_is_bradley_terry_over_every_pair_ordered_by_more_than_the_gap():
    scores = jnp.array([2.0, 0.5, -1.0, 3.0])
    targets = jnp.array([1.0, 0.5, 0.45, 0.0])
    loss, accuracy = ranking_over_batch(scores, targets, min_gap=0.1)
    ordered = [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]  # (1, 2) differ by 0.05 <= the gap: no pair
    expected = np.mean([np.logaddexp(0, float(scores[b] - scores[a])) for a, b in ordered])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(accuracy) == pytest.approx(2 / 5)  # right: (0, 1), (0, 2); wrong: the three over row 3
    assert [float(v) for v in ranking_over_batch(scores, jnp.full(4, 0.7))] == [0.0, 0.0]


def test_the_calibration_loss_ranks_images_of_different_captions_by_their_scores_and_a_fit_learns_it(tokenizer):
    samples, tokens = _generated_pairs(tokenizer)
    rows = np.arange(len(samples.scores))
    caption = rows // samples.per_caption
    world = [W.make_pair(5, "train", i) for i in range(4)]
    batch = pair_batch(world, ["en", "zh"] * 2, tokenizer, TINY)
    batch.update(calibration_batch(samples.images, tokens[0][caption], tokens[1][caption], samples.scores))
    model = AlignmentReward(TINY)
    params = jax.jit(model.init)(jax.random.PRNGKey(2), jnp.zeros((1, 32, 32, 3)), batch["ids_pos"][:1],
                                 batch["mask_pos"][:1])["params"]
    scale = float(model.apply({"params": params}, method=AlignmentReward.scale))
    own = scale * np.asarray(AlignmentScorer(model, params, tokenizer)(samples.images,
                                                                      [samples.prompts[c] for c in caption]))
    expected, _ = ranking_over_batch(jnp.asarray(own), jnp.asarray(samples.scores))
    _, metrics = batch_loss(model, params, batch, contrastive_weight=1.0, ranking_weight=1.0, calibration_weight=1.0)
    np.testing.assert_allclose(float(metrics["bt_calibration"]), float(expected), rtol=1e-5)
    params, value, m = _fit(model, params, batch, calibration_weight=1.0)
    # Every true rendering (score 1.0) now outscores every perturbed one (0.5), across all 8 captions.
    assert float(m["calibration_pair_accuracy"]) == 1.0 and float(value) < 0.2 * float(expected)
    without = {k: v for k, v in batch.items() if not k.startswith("calibration_")}
    assert "bt_calibration" not in batch_loss(model, params, without, contrastive_weight=1.0, ranking_weight=1.0)[1]


def _small_reward_config(steps=2):
    """data, tokenizer and a tiny reward stage of ``steps`` steps at batch 8, with 8 ranked pairs per
    batch (they split over the tests' 8 devices)."""
    cfg = config_lib.base_config("tiny")
    cfg.stages = ("data", "tokenizer", "reward")
    cfg.data.num_images = 64
    r = cfg.reward
    r.train.update(steps=steps, batch_size=8, checkpoint_every=2, log_every=1)
    r.model.update(image_size=32, image_channels=(8,), groups=4, embed_dim=32)
    r.model.llm.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1)
    r.pairs.update(heldout_per_kind=2)
    r.ranked.fraction = 1.0
    r.speed_batch = 4
    return cfg


def test_the_reward_stage_trains_on_generated_pairs_and_reports_their_held_out_agreement(tmp_path, monkeypatch,
                                                                                       tokenizer):
    from seedream_jax.main import run_stages
    from seedream_jax.stages import reward as stage

    drawn = []

    def fake_draw(cfg, generated, workdir, mix, split, count, image_size):
        drawn.append((split, count, image_size))
        return _generated_pairs(tokenizer, count)[0]
    monkeypatch.setattr(stage.ranked_samples, "draw", fake_draw)
    cfg = _small_reward_config()
    cfg.reward.ranked.generated.update(source="pretrain", captions=6, heldout_captions=5, calibration_rows=8)
    summary = run_stages(cfg, str(tmp_path))["reward"]
    assert drawn == [("train", 6, 32), ("heldout", 5, 32)]
    assert summary["final_metrics"]["bt_ranked"] > 0 and "ranked_pair_accuracy" in summary["final_metrics"]
    assert summary["final_metrics"]["bt_calibration"] > 0 and "calibration_pair_accuracy" in summary["final_metrics"]
    g = summary["generated"]
    assert (g["images"], g["pairs"], g["mean_objective"]) == (10, 5, 0.75) and 0 <= g["pair_accuracy"] <= 1
    assert "Spearman with the graded objective" in (tmp_path / "reward" / "heldout_accuracy.md").read_text()
    cfg.reward.ranked.generated.calibration_rows = 16
    with pytest.raises(ValueError, match="exceeds the batch size"):
        stage.build_task(cfg, cfg.reward, str(tmp_path))
    cfg.reward.ranked.generated.update(calibration_rows=8, source="")
    with pytest.raises(ValueError, match="needs a generator"):
        stage.build_task(cfg, cfg.reward, str(tmp_path))


@pytest.fixture(scope="module")
def user_pairs(tmp_path_factory):
    """A user's pair dataset: 12 world pairs written as a preference file and ingested (tools/ingest.py)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import ingest as ingest_tool
    import make_synthetic
    root = tmp_path_factory.mktemp("user_pairs")
    make_synthetic.main(["--format", "pairs", "--out", str(root / "pairs"), "--num_pairs", "12", "--image_size", "64"])
    assert ingest_tool.main(["--input", str(root / "pairs"), "--out", str(root / "ds"), "--workers", "1",
                             "--no_progress"]) == 0
    return str(root / "ds")


def test_ranked_pairs_from_a_users_dataset_join_the_world_pairs_and_resume_exactly(tmp_path, user_pairs, tokenizer):
    from seedream_jax.data.batches import IndexedBatches, JoinedBatches
    from seedream_jax.main import run_stages
    from seedream_jax.stages import reward as stage

    cfg = _small_reward_config()
    cfg.reward.ranked.path = user_pairs
    both = copy.deepcopy(cfg.reward)
    both.ranked.generated.source = "pretrain"
    with pytest.raises(ValueError, match="not both"):
        stage.build_task(cfg, both, str(tmp_path))
    summary = run_stages(cfg, str(tmp_path))["reward"]
    assert summary["final_metrics"]["bt_ranked"] > 0 and "generated" not in summary

    def joined():
        world = IndexedBatches(100, 8, 0, lambda idx, rng: {"world": np.asarray(idx)})
        return JoinedBatches(world, stage.ranked_source(cfg.reward, str(tmp_path), tokenizer, TINY))
    source = joined()
    next(source)
    state = json.loads(json.dumps(source.get_state()))
    expected = [next(source) for _ in range(3)]  # 12 pairs, 8 per batch: crosses an epoch
    fresh = joined()
    fresh.set_state(state)
    for want, got in zip(expected, [next(fresh) for _ in range(3)]):
        assert set(want) == {"world", "ranked_better", "ranked_worse", "ranked_ids", "ranked_mask"}
        assert want["ranked_better"].shape == (8, 32, 32, 3)
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    with pytest.raises(ValueError, match="share the keys"):
        next(JoinedBatches(joined(), stage.ranked_source(cfg.reward, str(tmp_path), tokenizer, TINY)))


def test_the_tiny_long_reward_config_trains_the_alignment_model_then_calibrates_it_on_the_bases_images():
    configs = os.path.join(REPO, "configs")
    base = config_lib.load_run_config(os.path.join(configs, "tiny_long.py"))
    c = config_lib.load_run_config(os.path.join(configs, "tiny_long_reward.py"))
    from seedream_jax.checkpoint.init_from import parse_sources
    from seedream_jax.stages import stage_kind
    assert c.stages == base.stages + ("reward", "reward_calibrated")
    assert stage_kind(c, "reward_calibrated") == "reward" and c.reward.model.llm == base.model.llm
    assert dict(c.reward.init_from) == {"alignment/text/llm": "pretrain:conditioner/text_encoder/llm"}
    assert dict(c.reward_calibrated.init_from) == {"alignment": "reward:alignment"}
    assert len(parse_sources(c.reward_calibrated.init_from, "/w")) == 1
    g = c.reward_calibrated.ranked.generated
    assert (g.source, g.calibration_rows, c.reward.ranked.generated.source) == ("pretrain", 16, "")
    assert c.reward_calibrated.train.steps == 1500 and c.reward.train.steps == 9000
