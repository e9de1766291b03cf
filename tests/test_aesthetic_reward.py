"""Aesthetic/structure reward: the degradations, the model's fit, the reward API, the aesthetic stage."""
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
from seedream_jax.data import degradations as D, synthetic as S
from seedream_jax.models.rewards import AestheticReward, AestheticRewardConfig, ImageTowerConfig
from seedream_jax.rewards.aesthetic import AestheticScorer, pair_accuracy
from seedream_jax.stages import aesthetic as stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = AestheticRewardConfig(tower=ImageTowerConfig(image_size=32, patch_size=4, image_channels=(16, 32), groups=4,
                                                    embed_dim=32))
WORLD = S.SyntheticWorldConfig(text_probability=0.3, object_count_weights=(5.0, 3.0, 1.0, 1.0), group_probability=0.2)


@pytest.fixture(scope="module")
def initial_params():
    """Fresh parameters of ``AestheticReward(TINY)`` (initialised once: the compile is the slow part)."""
    return jax.jit(AestheticReward(TINY).init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]


def _scenes(n=12):
    return [S.sample_scene(np.random.default_rng([7, i]), WORLD) for i in range(n)]


@pytest.mark.parametrize("kind", D.KINDS)
def test_each_degradation_changes_a_world_image_and_is_deterministic_per_seed(kind):
    changes, outputs = [], []
    for i, scene in enumerate(_scenes()):
        image = S.render_scene(scene, 64)
        out = D.degrade(image, scene, kind, np.random.default_rng(i))
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.array_equal(out, D.degrade(image, scene, kind, np.random.default_rng(i)))  # same seed, same image
        diff = out.astype(np.float32) - image.astype(np.float32)
        assert np.linalg.norm(diff, axis=-1).max() >= 24, (kind, i)  # an RGB distance visible somewhere in every image
        changes.append(np.abs(diff).mean())
        outputs.append([D.degrade(image, scene, kind, np.random.default_rng(100 + k)) for k in range(3)])
    assert np.mean(changes) >= 1.5, (kind, np.mean(changes))  # grey levels, averaged over the images
    # other seeds draw other parameters (JPEG qualities are integers: some of three may coincide)
    assert all(any(not np.array_equal(a, b) for a in outs for b in outs if a is not b) for outs in outputs)


def test_a_broken_shape_is_cut_only_inside_its_objects_cells():
    for i, scene in enumerate(_scenes()):
        image = S.render_scene(scene, 48)
        changed = np.any(D.degrade(image, scene, "broken_shape", np.random.default_rng(i)) != image, axis=-1)
        cells = np.zeros((48, 48), bool)
        for o in scene.objects:
            row, col = o.cell
            cells[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = True
        assert changed.any() and not (changed & ~cells).any()
    with pytest.raises(ValueError, match="unknown degradation"):
        D.degrade(image, scene, "sepia", np.random.default_rng(0))


def test_a_short_fit_ranks_clean_images_above_their_degraded_copies(initial_params):
    model, params = AestheticReward(TINY), initial_params
    tx = optax.adam(3e-3)

    def batch(split, start, n):
        pairs = [stage.degraded_pair(WORLD, 0, split, j, D.KINDS[j % len(D.KINDS)], 32)
                 for j in range(start, start + n)]
        return {"clean": np.stack([c for c, _ in pairs]), "degraded": np.stack([d for _, d in pairs])}

    @jax.jit
    def step(p, opt, b):
        (value, metrics), g = jax.value_and_grad(lambda q: stage.batch_loss(model, q, b), has_aux=True)(p)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, value

    opt = tx.init(params)
    losses = []
    for k in range(40):
        params, opt, value = step(params, opt, batch("train", 28 * k, 28))
        losses.append(float(value))
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
    held = batch("heldout", 0, 70)  # scenes with held-out colour-shape pairs, never trained on
    acc = pair_accuracy(AestheticScorer(model, params), held["clean"], held["degraded"],
                        [D.KINDS[j % len(D.KINDS)] for j in range(70)])
    assert np.mean(list(acc.values())) >= 0.75, acc


def test_the_aesthetic_reward_is_differentiable_in_the_pixels_and_ignores_prompts(initial_params):
    scorer = AestheticScorer(AestheticReward(TINY), initial_params)
    rewards.register("test_aesthetic", scorer, differentiable=True, replace=True)
    scene = S.Scene("beige", [S.ShapeObject("circle", "red", "large", "center")])
    pixels = np.stack([S.render_scene(scene, 64), D.degrade(S.render_scene(scene, 64), scene, "noise",
                                                            np.random.default_rng(0))])
    images = jnp.asarray(pixels, jnp.float32) / 127.5 - 1.0  # 64 px float: resized inside
    values = rewards.score("test_aesthetic", images, ["a large red circle", "anything"])
    assert values.shape == (2,) and values.dtype == jnp.float32
    np.testing.assert_allclose(values, rewards.score("test_aesthetic", images, ["", ""]), rtol=1e-6)
    np.testing.assert_allclose(values, scorer(pixels), atol=2e-3)  # uint8 and [-1, 1] read alike
    grad = jax.grad(lambda x: jnp.sum(rewards.score("test_aesthetic", x, ["", ""])))(images)
    assert grad.shape == images.shape and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0
    assert rewards.get("test_aesthetic").differentiable


STAGE_CONFIG = '''
from seedream_jax import config_lib

def get_config():
    c = config_lib.base_config("tiny")
    c.stages = ("aesthetic",)
    a = c.aesthetic
    a.train.update(steps=4, batch_size=8, checkpoint_every=2, log_every=2)
    a.model.update(image_size=32, image_channels=(8,), groups=4, embed_dim=16)
    a.pairs.update(heldout_per_kind=3)
    a.speed_batch = 4
    return c
'''


def test_the_aesthetic_stage_runs_through_main_and_its_model_loads_into_the_api(tmp_path):
    cfg = tmp_path / "aesthetic.py"
    cfg.write_text(STAGE_CONFIG)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "seedream_jax.main", "--config", str(cfg), "--workdir",
                          str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "run" / "tokenizer").exists()  # no tokenizer needed
    stage_dir = open_stage(str(tmp_path / "run" / "aesthetic"))
    assert (stage_dir.kind, stage_dir.step, list(stage_dir.meta["components"])) == ("aesthetic", 4, ["aesthetic"])
    assert stage_dir.meta["tokenizer"] is None
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["aesthetic"]
    assert list(summary["heldout_accuracy"]) == list(D.KINDS) and summary["heldout_pairs_per_kind"] == 3
    assert summary["scorer_images_per_second"] > 0
    assert "| broken_shape |" in (tmp_path / "run" / "aesthetic" / "heldout_accuracy.md").read_text()
    scorer = rewards.load_aesthetic(stage_dir.directory, name="test_stage_aesthetic")
    image = S.render_scene(S.Scene("beige", [S.ShapeObject("circle", "red", "large", "center")]), 64)[None]
    assert rewards.score("test_stage_aesthetic", image, ["ignored"]).shape == (1,)
    assert scorer.config.tower.image_channels == (8,) and scorer.config.image_size == 32


def test_the_config_section_rejects_unknown_keys_and_the_cycle_weights_kinds():
    with pytest.raises(KeyError, match="aesthetic_section: unknown keys"):
        config_lib.aesthetic_section(bogus=1)
    s = config_lib.aesthetic_section()
    s.pairs.kind_weights = (1, 0, 0, 0, 0, 2, 0)
    assert stage._cycle(s) == ["blur", "broken_shape", "broken_shape"]
    s.generated_from, s.generated_weight = "pretrain", 2
    assert stage._cycle(s)[-2:] == [stage.GENERATED] * 2


@pytest.mark.slow  # about 7 minutes on 2 shared cores: data, tokenizer, VAE and DiT stages to sample from
def test_generated_pairs_come_from_a_pretrain_stage(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from test_pipeline import small_config

    from seedream_jax.main import run_stages
    cfg = small_config()
    cfg.stages = ("data", "tokenizer", "vae", "pretrain", "aesthetic")
    a = cfg.aesthetic
    a.train.update(steps=4, batch_size=8, checkpoint_every=2, log_every=2)
    a.model.update(image_size=32, image_channels=(8,), groups=4, embed_dim=16)
    a.pairs.update(heldout_per_kind=4)
    a.update(generated_from="pretrain", generated_count=6, generated_num_steps=2, generated_batch_size=4,
             speed_batch=4)
    summary = run_stages(cfg, str(tmp_path))["aesthetic"]
    assert list(summary["heldout_accuracy"]) == list(D.KINDS) + [stage.GENERATED]
    assert summary["generated_from"]["source"] == str(tmp_path / "pretrain")
    rendered, generated = stage.generated_pairs(cfg, a, str(tmp_path), "heldout", 4)  # reused from finish
    assert rendered.shape == generated.shape == (4, 32, 32, 3) and generated.dtype == np.uint8
