"""The generic training loop: exact resume (also after SIGTERM, also with a rollout and inner
steps), NaN guard, checkpoints, parameter groups and logged learning rates, evaluation measurements."""
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.training import loop
from seedream_jax.training.optimizer import learning_rate_schedule, make_optimizer
from seedream_jax.training.writers import MetricWriter
from toy_task import rollout_task, toy_stage_config, toy_task

HERE = os.path.dirname(__file__)


def _params(stage_dir):
    """(params, optimizer state, EMA and RNG leaves of the latest checkpoint, its step)."""
    state, step = restore_raw_state(stage_dir)
    return jax.tree_util.tree_leaves([state[k] for k in ("params", "opt_state", "ema_params", "rng")]), step


def _data_state(stage_dir, step):
    manager = ocp.CheckpointManager(os.path.join(stage_dir, "checkpoints"),
                                    item_handlers={"data": ocp.JsonCheckpointHandler()})
    data = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
    manager.close()
    return dict(data)


def _assert_identical(dir_a, dir_b):
    (a, step_a), (b, step_b) = _params(dir_a), _params(dir_b)
    assert step_a == step_b
    assert _data_state(dir_a, step_a) == _data_state(dir_b, step_b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _recorded_train(task, cfg, stage, stage_dir):
    """``loop.train`` with a writer that also keeps what it is given: (result, {step: scalars},
    {step: texts})."""
    scalars, texts = {}, {}

    class Recorder(MetricWriter):
        def write_scalars(self, step, values):
            super().write_scalars(step, values)
            scalars.setdefault(step, {}).update(values)

        def write_texts(self, step, values):
            super().write_texts(step, values)
            texts.setdefault(step, {}).update(values)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "MetricWriter", Recorder)
        result = loop.train(task, cfg, stage, stage_dir)
    return result, scalars, texts


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


def _preempt_when_drawing(task, position: int):
    """``task`` whose data sends this process SIGTERM as batch ``position`` is drawn (in-process preemption)."""
    draw = type(task.data).__next__

    class Preempting(type(task.data)):
        def __next__(self):
            if self.position == position:
                os.kill(os.getpid(), signal.SIGTERM)
            return draw(self)

    task.data.__class__ = Preempting
    return task


def test_resume_is_bit_exact(uninterrupted, tmp_path):
    """Preempt a 30-step run in-process (SIGTERM once batch 12 is drawn), then resume it."""
    d = str(tmp_path / "split")
    cfg, stage = toy_stage_config(30)
    task = _preempt_when_drawing(toy_task(), 12)
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


def test_a_batch_that_does_not_split_over_the_mesh_fails_naming_the_stage(tmp_path):
    cfg, stage = toy_stage_config(2)
    cfg.mesh.update(dict(data=2, fsdp=4, tensor=1))
    stage.train.batch_size = 12
    with pytest.raises(ValueError, match=r"\[toy\] batch field 'x' \(train.batch_size=12\): a global batch of 12 "
                                         r"does not split over the 8 devices .*data=2 x fsdp=4.*multiple of 8"):
        loop.train(toy_task(batch_size=12), cfg, stage, str(tmp_path / "uneven"))


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


def _rollout_config(steps):
    cfg, stage = toy_stage_config(steps)
    stage.train.update(dict(checkpoint_every=2, keep_checkpoints=10, log_every=2))
    return cfg, stage


@pytest.fixture(scope="module")
def rollout_uninterrupted(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("rollout_full"))
    cfg, stage = _rollout_config(12)
    result, scalars, _ = _recorded_train(rollout_task(), cfg, stage, d)
    assert result.step == 12 and not result.preempted
    return d, scalars


def test_rollout_runs_once_per_batch_with_the_current_parameters(rollout_uninterrupted):
    """The output bias the rollout saw (logged by the loss at step S, after the 2 inner updates
    of that batch) is exactly the checkpointed bias at step S - 2, and no longer the one at S."""
    d, scalars = rollout_uninterrupted
    assert sorted(scalars) == [2, 4, 6, 8, 10, 12]
    assert _data_state(d, 12)["position"] == 6  # one batch per two updates
    for step in (4, 6, 8, 10, 12):
        before = float(restore_raw_state(d, step - 2)[0]["params"]["toy"]["fc2"]["bias"][0])
        after = float(restore_raw_state(d, step)[0]["params"]["toy"]["fc2"]["bias"][0])
        assert scalars[step]["rollout_bias"] == before != after
        assert scalars[step]["prox"] > 0


def test_rollout_with_inner_steps_resumes_bit_exactly(rollout_uninterrupted, tmp_path):
    """SIGTERM while batch 3 is drawn, then the same run again: parameters, optimizer state, EMA,
    RNG and data position equal the uninterrupted run's (the rollout's noise included)."""
    d = str(tmp_path / "split")
    cfg, stage = _rollout_config(12)
    task = _preempt_when_drawing(rollout_task(), 3)
    first = loop.train(task, cfg, stage, d)
    assert first.preempted and 2 <= first.step < 12 and first.step % 2 == 0
    result = loop.train(rollout_task(), cfg, stage, d)
    assert result.step == 12 and not result.preempted
    _assert_identical(rollout_uninterrupted[0], d)


def test_steps_must_be_a_multiple_of_inner_steps(tmp_path):
    cfg, stage = _rollout_config(5)
    with pytest.raises(ValueError, match=r"train.steps=5 must be a multiple of the task's inner_steps=2"):
        loop.train(rollout_task(), cfg, stage, str(tmp_path))


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    """6 steps of the toy task with fc1 in an lr-0 group, fc2's kernel in a group with its own lr,
    logging every step and an evaluation returning Measurements every 3 steps."""
    cfg, stage = toy_stage_config(6)
    stage.train.log_every = 1
    stage.train.eval_every = 3
    stage.optimizer.groups = {"still": {"pattern": r"toy/fc1/.*", "lr": 0.0},
                              "head": {"pattern": r"toy/fc2/kernel", "lr": 1e-2}}
    d = str(tmp_path_factory.mktemp("groups"))

    def evaluate(state, step):
        bias = float(jax.device_get(state.params["toy"]["fc2"]["bias"][0]))
        return loop.Measurements(scalars={"eval/bias": bias}, images={"grid": np.zeros((4, 6, 3), np.uint8)},
                                 texts={"eval/note": f"bias at {step}"})

    task = toy_task()
    task.evaluate = evaluate
    initial = loop.train(toy_task(), *toy_stage_config(0), d + "_init").state  # the same initialisation
    result, scalars, texts = _recorded_train(task, cfg, stage, d)
    return stage, d, jax.device_get(initial.params), result, scalars, texts


def test_lr_zero_group_keeps_its_parameters_bit_identical(grouped_run):
    _, _, initial, result, _, _ = grouped_run
    init, final = initial["toy"], jax.device_get(result.state.params["toy"])
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(final["fc1"][name], init["fc1"][name])
        assert np.abs(final["fc2"][name] - init["fc2"][name]).max() > 1e-4


def test_logged_learning_rates_follow_the_schedules(grouped_run):
    """At step S the logged rates are those of the update from S - 1 to S."""
    stage, _, _, _, scalars, _ = grouped_run
    main = learning_rate_schedule(stage.optimizer, 6)
    head = learning_rate_schedule(stage.optimizer, 6, 1e-2)
    assert sorted(scalars) == [1, 2, 3, 4, 5, 6]
    for step, logged in scalars.items():
        np.testing.assert_allclose(logged["lr"], float(main(step - 1)), rtol=1e-6)
        np.testing.assert_allclose(logged["lr/head"], float(head(step - 1)), rtol=1e-6)
        assert logged["lr/still"] == 0.0
    assert scalars[1]["lr"] == 0.0 and scalars[6]["lr"] > 0  # warmup starts at 0


def test_measurements_reach_the_writer(grouped_run, tmp_path):
    """Evaluation scalars and texts at steps 3 and 6 (the end), images as PNG files; an old-style
    dict of images is still written as images."""
    _, d, _, result, scalars, texts = grouped_run
    bias = float(jax.device_get(result.state.params["toy"]["fc2"]["bias"][0]))
    assert scalars[6]["eval/bias"] == bias
    assert "eval/bias" in scalars[3] and scalars[3]["eval/bias"] != bias
    assert texts == {3: {"eval/note": "bias at 3"}, 6: {"eval/note": "bias at 6"}}
    assert os.path.exists(os.path.join(d, "samples", "grid_step000003.png"))
    writer = MetricWriter(None)
    loop._write_measurements(writer, str(tmp_path), 7, {"old": np.zeros((2, 2, 3), np.uint8)})
    assert os.path.exists(os.path.join(str(tmp_path), "samples", "old_step000007.png"))


def test_optimizer_groups_scale_updates_and_frozen_gradients_skip_clipping():
    """First Adam step (no warmup, no decay): ungrouped moves by -lr, the 2x group by -2 lr, and a
    frozen parameter with a huge gradient stays put without shrinking the others through clipping."""
    cfg, stage = toy_stage_config(10)
    opt = stage.optimizer
    opt.update(dict(warmup_steps=0, weight_decay=0.0, grad_clip_norm=1.0))
    opt.groups = {"fast": {"pattern": r"b/.*", "lr": 2 * opt.lr}}
    opt.freeze = (r"c/w",)
    params = {k: {"w": jnp.ones((3, 3))} for k in "abc"}
    grads = {"a": {"w": jnp.ones((3, 3))}, "b": {"w": jnp.ones((3, 3))}, "c": {"w": jnp.full((3, 3), 1e9)}}
    tx = make_optimizer(opt, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["a"]["w"]), -opt.lr, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["b"]["w"]), -2 * opt.lr, rtol=1e-5)
    assert not np.any(np.asarray(updates["c"]["w"]))
    opt.freeze = (r"c/w", r"nothere/.*")
    with pytest.raises(ValueError, match=r"\['nothere/\.\*'\] match no parameter"):
        make_optimizer(opt, 10).init(params)
    opt.freeze = ()
    opt.groups = {"x": {"pattern": r"a/w", "lr": 1.0}, "y": {"pattern": r"a/.*", "lr": 1.0}}
    with pytest.raises(ValueError, match=r"'a/w' matches several groups \['x', 'y'\]"):
        make_optimizer(opt, 10).init(params)
