"""Alignment reward: world preference pairs, the two-tower model's fit, the reward API, the reward stage."""
import collections
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seedream_jax import rewards
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.data import heldout, synthetic as S, world_pairs as W
from seedream_jax.data.tokenizer import TextTokenizer, train_sentencepiece
from seedream_jax.models.rewards import AlignmentReward, AlignmentRewardConfig
from seedream_jax.models.text_encoder import Qwen2Config
from seedream_jax.rewards.alignment import AlignmentScorer
from seedream_jax.stages.reward import batch_loss, pair_batch

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
