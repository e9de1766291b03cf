"""Glyph alignment: the hard negatives, ROI pooling, a short fit, the text-rendering reward, the stage."""
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
from seedream_jax.checkpoint.init_from import apply_init_from
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.data import glyph_pairs as G, synthetic as S
from seedream_jax.models.byt5 import ByT5Config
from seedream_jax.models.glyph import GlyphAligner, GlyphAlignConfig, roi_align
from seedream_jax.rewards.glyph import TextRenderingScorer, candidate_boxes
from seedream_jax.stages.glyph_align import batch_loss, glyph_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = GlyphAlignConfig(byt5=ByT5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                        relative_attention_num_buckets=8, relative_attention_max_distance=16),
                        image_size=32, image_channels=(8, 16), groups=4, roi_size=(2, 6), embed_dim=32)


def _one_edit(a: str, b: str) -> bool:
    """b is a with exactly one character replaced."""
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def _one_insert(short: str, long: str) -> bool:
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short for i in range(len(long)))


@pytest.mark.parametrize("text,language", [("HELLO CAT", "en"), ("SKY", "en"), ("你好世界", "zh"), ("一帆风", "zh"),
                                           ("大", "zh")])
def test_each_augmentation_changes_the_text_as_its_name_says(text, language):
    words = G.words_of(text, language)
    for seed in range(6):
        out = {k: G.augment(text, language, k, np.random.default_rng(seed)) for k in G.AUGMENTATIONS}
        assert out == {k: G.augment(text, language, k, np.random.default_rng(seed)) for k in G.AUGMENTATIONS}
        pool = G.chars_of(language)
        assert _one_edit(text, out["replace_char"]) and all(c in pool or c == " " for c in out["replace_char"])
        assert _one_insert(text, out["repeat_char"])
        assert any(out["repeat_char"][i] == out["repeat_char"][i + 1] and out["repeat_char"][:i] + out["repeat_char"][i + 1:] == text
                   for i in range(len(text)))
        assert _one_insert(text, out["add_char"])
        if len(text) == 1:
            assert out["drop_char"] is None
        else:
            assert _one_insert(out["drop_char"], text)
        assert any(G.join_words(words[:i] + [w] + words[i + 1:], language) == out["wrong_word"]
                   for i in range(len(words)) for w in S.WORDS[language] if w != words[i])
        doubled = out["repeat_word"]
        assert any(G.join_words(words[:i + 1] + words[i:], language) == doubled for i in range(len(words)))
        if len(words) == 1:
            assert out["drop_word"] is None
        else:
            assert any(G.join_words(words[:i] + words[i + 1:], language) == out["drop_word"] for i in range(len(words)))
        assert all(v != text for v in out.values() if v is not None)


def test_examples_are_deterministic_and_the_box_bounds_the_word():
    for i in range(6):
        e = G.make_example(2, "train", i)
        assert G.make_example(2, "train", i) == e and G.make_example(2, "heldout", i).scene != e.scene
        assert G.text_of(e.prompt) == e.text and e.prompt.startswith('Text "')
        y0, x0, y1, x1 = S.text_box(e.scene, 64)
        alone = S.render_scene(S.Scene(e.scene.background, [], e.scene.text), 64)
        drawn = np.any(alone != np.array(S.BACKGROUNDS[e.scene.background][0]), -1)
        inside = np.zeros_like(drawn)
        inside[y0:y1, x0:x1] = True
        assert drawn[inside].any() and not drawn[~inside].any()
    ids, mask, spans = G.encode_templates(["你好"], [G.template("你好", "red", "wqy-microhei")], 64)
    start, end = spans[0]
    assert bytes(int(b) - 3 for b in ids[0, start:end]).decode("utf-8") == "你好"


def test_roi_align_matches_bilinear_sampling_of_a_linear_map_and_reads_vertical_boxes_top_down():
    h, w = 8, 10
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    feats = jnp.asarray(np.stack([yy, xx], -1)[None].astype(np.float32))  # feature = (row, col) of the cell
    stride = 4
    wide = jnp.array([[8.0, 4.0, 16.0, 36.0]])   # y 8..16, x 4..36 px
    out = np.asarray(roi_align(feats, wide, (2, 4), stride))[0]
    # bin (i, j) centre in px: y = 8 + (i + .5) * 4, x = 4 + (j + .5) * 8; in cells: px / 4 - 0.5
    for i in range(2):
        for j in range(4):
            np.testing.assert_allclose(out[i, j], [(8 + (i + .5) * 4) / 4 - .5, (4 + (j + .5) * 8) / 4 - .5], atol=1e-5)
    tall = jnp.array([[0.0, 8.0, 32.0, 16.0]])   # y 0..32, x 8..16: read top to bottom
    out = np.asarray(roi_align(feats, tall, (2, 4), stride))[0]
    for i in range(2):
        for j in range(4):
            np.testing.assert_allclose(out[i, j], [(0 + (j + .5) * 8) / 4 - .5, (8 + (i + .5) * 4) / 4 - .5], atol=1e-5)


def _init(config):
    m = GlyphAligner(config)
    s, length = config.image_size, config.max_length
    params = m.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)), jnp.array([[0.0, 0.0, 8.0, 16.0]]),
                    jnp.ones((1, length), jnp.int32), jnp.ones((1, length), bool), jnp.array([[6, 8]]))["params"]
    return m, params


def test_a_short_fit_ranks_the_drawn_text_above_its_hard_negatives():
    m, params = _init(TINY)
    batch = {k: jnp.asarray(v) for k, v in glyph_batch([G.make_example(0, "train", i) for i in range(8)], TINY).items()}
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        (loss, metrics), g = jax.value_and_grad(lambda q: batch_loss(m, q, batch), has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, metrics

    first = None
    for _ in range(30):
        params, state, loss, metrics = step(params, state)
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first
    assert float(metrics["hard_accuracy"]) >= 0.9


def test_the_text_rendering_score_is_differentiable_in_the_pixels_and_zero_without_quoted_text():
    m, params = _init(TINY)
    scorer = TextRenderingScorer(m, params)
    assert len(candidate_boxes("你好", 32)) == 12 and len(candidate_boxes("SKY", 32)) == 6
    e = G.make_example(1, "train", 3)
    image = jnp.asarray(S.render_scene(e.scene, 32)[None].astype(np.float32) / 127.5 - 1.0)
    prompts = [f'a sign that says "{e.text}"']
    ids, mask, spans, boxes, valid, _ = scorer.inputs(prompts)
    grad = jax.grad(lambda x: scorer.score_fn(params, x, ids, mask, spans, boxes, valid).sum())(image)
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0
    scores = scorer(jnp.concatenate([image, image]), prompts + ["a red circle"])
    assert scores.shape == (2,) and float(scores[1]) == 0.0 and -1.0 <= float(scores[0]) <= 1.0


STAGE_CONFIG = '''
from seedream_jax import config_lib

def get_config():
    c = config_lib.base_config("tiny")
    c.stages = ("glyph_align",)
    g = c.glyph_align
    g.train.update(steps=3, batch_size=8, checkpoint_every=3, log_every=1)
    g.model.update(image_channels=(8, 16), groups=4, embed_dim=32, roi_size=(2, 6))
    g.examples.update(heldout=8)
    g.speed_batch = 4
    return c
'''


def test_the_glyph_stage_runs_through_main_and_pretrain_can_start_its_byt5_from_it(tmp_path):
    cfg = tmp_path / "glyph.py"
    cfg.write_text(STAGE_CONFIG)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "seedream_jax.main", "--config", str(cfg), "--workdir",
                          str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    stage = open_stage(str(tmp_path / "run" / "glyph_align"))
    assert (stage.kind, stage.step, list(stage.meta["components"])) == ("glyph_align", 3, ["glyph"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["glyph_align"]
    assert set(summary["heldout_accuracy"]) == set(G.AUGMENTATIONS) | {"all"}
    assert "| replace_char |" in (tmp_path / "run" / "glyph_align" / "heldout_accuracy.md").read_text()
    glyph_byt5 = stage.params("ema")["glyph"]["byt5"]
    # The conditioner's glyph branch (same ByT5 shape by default) loads it through init_from.
    conditioner = {"byt5": jax.tree_util.tree_map(np.zeros_like, glyph_byt5), "context_proj": {"kernel": np.ones(2)}}
    trainable, _ = apply_init_from({"conditioner": conditioner}, {}, {"conditioner/byt5": "glyph_align:glyph/byt5"},
                                   workdir=str(tmp_path / "run"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, trainable["conditioner"]["byt5"], glyph_byt5)
    assert config_lib.base_config("tiny").glyph_align.model.byt5.to_dict() == \
        config_lib.base_config("tiny").model.byt5.to_dict()
    scorer = rewards.load_glyph(stage.directory, name="test_text_rendering")
    assert isinstance(scorer, TextRenderingScorer)
    image = S.render_scene(G.make_example(0, "heldout", 0).scene, 64)[None]
    assert rewards.score("test_text_rendering", image, ['the text "HELLO"']).shape == (1,)


def test_tiny_glyph_trains_two_arms_that_differ_only_in_the_byt5_init():
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny_glyph

    cfg = tiny_glyph.get_config()
    stages = list(cfg.stages)
    assert stages.index("data_text") < stages.index("glyph_align") < stages.index("pretrain_random")
    assert stages.index("pretrain_aligned") < stages.index("eval_aligned")
    assert cfg.data_text.data.world.text_probability == 1.0 and cfg.data_text.data.dir == "data/text"
    random, aligned = cfg.pretrain_random.to_dict(), cfg.pretrain_aligned.to_dict()
    assert aligned.pop("init_from") == {"vae": "vae", "conditioner/byt5": "glyph_align:glyph/byt5"}
    assert random.pop("init_from") == {"vae": "vae"}
    assert random == aligned and random["data"] == cfg.data_text.data.to_dict()
    assert random["train"]["steps"] == tiny_glyph.TEXT_STEPS
    assert (cfg.eval_random.checkpoint, cfg.eval_aligned.checkpoint) == ("pretrain_random", "pretrain_aligned")
    assert cfg.glyph_align.model.byt5.to_dict() == cfg.model.byt5.to_dict()
