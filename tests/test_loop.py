"""The generic training loop: exact resume (also after SIGTERM), NaN guard, checkpoints."""
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.training import loop
from toy_task import toy_stage_config, toy_task

HERE = os.path.dirname(__file__)


def _params(stage_dir):
    state, step = restore_raw_state(stage_dir)
    return jax.tree_util.tree_leaves(state["params"]) + jax.tree_util.tree_leaves(state["opt_state"]) \
        + jax.tree_util.tree_leaves(state["ema_params"]), step


def _assert_identical(dir_a, dir_b):
    (a, step_a), (b, step_b) = _params(dir_a), _params(dir_b)
    assert step_a == step_b
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("full"))
    cfg, stage = toy_stage_config(30)
    result = loop.train(toy_task(), cfg, stage, d)
    assert result.step == 30 and not result.preempted
    return d, result


def test_loss_decreases(uninterrupted):
    d, result = uninterrupted
    cfg, stage = toy_stage_config(1)
    first = loop.train(toy_task(), cfg, stage, d + "_one").last_metrics["loss"]
    assert result.last_metrics["loss"] < 0.8 * first


def test_resume_is_bit_exact(uninterrupted, tmp_path):
    """Preempt a 30-step run in-process (SIGTERM once batch 12 is drawn), then resume it."""
    d = str(tmp_path / "split")
    cfg, stage = toy_stage_config(30)
    task = toy_task()
    draw = type(task.data).__next__

    class PreemptAt12(type(task.data)):
        def __next__(self):
            if self.position == 12:
                os.kill(os.getpid(), signal.SIGTERM)
            return draw(self)

    task.data.__class__ = PreemptAt12
    first = loop.train(task, cfg, stage, d)
    assert first.preempted and 11 <= first.step < 30
    result = loop.train(toy_task(), cfg, stage, d)
    assert result.step == 30 and not result.preempted
    _assert_identical(uninterrupted[0], d)


def test_sigterm_saves_and_resume_is_bit_exact(uninterrupted, tmp_path):
    d = str(tmp_path / "killed")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "toy_task.py"), d, "30", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in proc.stdout:  # wait until a few steps are logged, then preempt
        seen.append(line)
        if "[step 10]" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "preempted=True" in out, out
    stopped_at = _params(d)[1]
    assert 10 <= stopped_at < 30, f"stopped at {stopped_at}"
    cfg, stage = toy_stage_config(30)
    assert loop.train(toy_task(), cfg, stage, d).step == 30
    _assert_identical(uninterrupted[0], d)


def test_nan_guard_names_step_and_metric(tmp_path):
    task = toy_task()
    base = task.loss_fn

    def exploding(params, frozen, batch, rng):
        loss, metrics = base(params, frozen, batch, rng)
        step_is_late = jnp.sum(batch["x"]) * 0 + jax.random.uniform(rng) > 2.0  # never
        return loss, {**metrics, "bad": jnp.where(step_is_late, 0.0, jnp.log(-1.0))}

    task.loss_fn = exploding
    cfg, stage = toy_stage_config(5)
    with pytest.raises(loop.NonFiniteError, match=r"step 1: non-finite metric\(s\) \{'bad': nan\}"):
        loop.train(task, cfg, stage, str(tmp_path / "nan"))


def test_init_from_another_stage_gets_exactly_its_weights(uninterrupted, tmp_path):
    from seedream_jax.checkpoint.init_from import apply_init_from

    source_dir = uninterrupted[0]
    task = toy_task()
    task.initialise = lambda trainable, frozen: apply_init_from(trainable, frozen, {"toy": source_dir})
    cfg, stage = toy_stage_config(0)
    result = loop.train(task, cfg, stage, str(tmp_path / "second"))
    source, _ = restore_raw_state(source_dir)
    got = jax.tree_util.tree_leaves(jax.device_get(result.state.params["toy"]))
    want = jax.tree_util.tree_leaves(source["ema_params"]["toy"])
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # The source's raw (non-EMA) weights differ, so this checks the EMA copy was taken.
    assert not np.array_equal(jax.tree_util.tree_leaves(source["params"]["toy"])[0], want[0])


def test_init_from_rejects_mismatched_component(uninterrupted, tmp_path):
    from seedream_jax.checkpoint.init_from import apply_init_from

    with pytest.raises(KeyError, match="no component 'nothere'"):
        apply_init_from({"toy": {}}, {}, {"nothere": uninterrupted[0]})


def test_ema_warmup_rule_matches_a_hand_computation():
    """decay_t = min(decay, (1 + t) / (10 + t)): 1/10 at step 0, 2/11 at step 1, 1001/1010 at
    step 1000, and the ceiling once the warmup passes it; one update blends by that weight."""
    from seedream_jax.training.state import ema_decay_at, ema_update
    for step, expected in ((0, 0.1), (1, 2 / 11), (1000, 1001 / 1010), (20000, 0.999)):
        np.testing.assert_allclose(float(ema_decay_at(jnp.int32(step), 0.999)), expected, rtol=1e-6)
    ema = ema_update({"w": jnp.full((2,), 4.0)}, {"w": jnp.full((2,), 14.0)}, ema_decay_at(jnp.int32(0), 0.999))
    np.testing.assert_allclose(np.asarray(ema["w"]), [0.1 * 4.0 + 0.9 * 14.0] * 2, rtol=1e-6)


def test_loop_ema_follows_the_warmup_rule(tmp_path):
    """The loop's EMA after step 2 is the rule's blend of its EMA after step 1 and the step-2
    parameters, with decay min(0.9, 2/11) (the toy stage's ceiling is 0.9)."""
    from seedream_jax.training.state import ema_decay_at
    cfg, stage = toy_stage_config(2)
    stage.train.checkpoint_every = 1
    stage.train.keep_checkpoints = 3
    loop.train(toy_task(), cfg, stage, str(tmp_path))
    (s1, _), (s2, _) = restore_raw_state(str(tmp_path), 1), restore_raw_state(str(tmp_path), 2)
    d1 = float(ema_decay_at(1, 0.9))
    assert abs(d1 - 2 / 11) < 1e-7
    for e1, e2, p2 in zip(*(jax.tree_util.tree_leaves(t) for t in (s1["ema_params"], s2["ema_params"], s2["params"]))):
        np.testing.assert_allclose(np.asarray(e2), d1 * np.asarray(e1) + (1 - d1) * np.asarray(p2), rtol=1e-5, atol=1e-7)
        assert np.abs(np.asarray(e2) - np.asarray(e1)).max() > 0
