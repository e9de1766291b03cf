"""``loop.train`` through the pretrain task on ``data.format='arrayrecord'``: a tiny synthetic
ArrayRecord world of two aspect-ratio buckets trains with a finite loss on both bucket shapes
(one compiled step each, each with its own resolution shift), and a run preempted midway then
resumed from its checkpoint ends bit-identical to an uninterrupted run (the data position resumes
exactly)."""
import os
import signal

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.data import synthetic as S
from seedream_jax.data import synthetic_records as SR
from seedream_jax.data.tokenizer import train_sentencepiece
from seedream_jax.training import loop
from seedream_jax.stages import pretrain
from record_configs import tiny_record_config

WORLD = SR.RecordWorldConfig(S.SyntheticWorldConfig(num_images=40, image_size=32, seed=8), sizes=((32, 32), (24, 40)))
BUCKETS = {(32, 32), (24, 40)}
STEPS, PREEMPT_AT = 6, 3


def _config(root):
    cfg = tiny_record_config(root / "ds")  # the MMDiT trains: half the compile time of training all
    cfg.pretrain.init_from = {}
    cfg.pretrain.eval_prompts = ()
    cfg.pretrain.train.update(steps=STEPS, batch_size=8, checkpoint_every=2, log_every=1, async_checkpoint=False)
    cfg.data.update(dict(caption_types=("short", "text"), caption_type_probs=(0.5, 0.5), cfg_drop_prob=0.2))
    return cfg


def _task(cfg, workdir, traced):
    """The pretrain task; its loss appends each traced image shape to ``traced`` (once per compile)."""
    task = pretrain.build_task(cfg, cfg.pretrain, workdir)
    loss_fn = task.loss_fn

    def tracing_loss(params, frozen, batch, rng):
        traced.append(batch["image"].shape[1:3])
        return loss_fn(params, frozen, batch, rng)

    task.loss_fn = tracing_loss
    return task


def _leaves(stage_dir):
    state, step = restore_raw_state(stage_dir)
    return [np.asarray(x) for part in ("params", "opt_state", "ema_params")
            for x in jax.tree_util.tree_leaves(state[part])], step


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module: each ``loop.train`` call jits a fresh step
    function, so the three runs compile the same two bucket programs; with the cache the 2nd and
    3rd runs load them instead of recompiling (~20 s each on 2 CPU cores). Restored afterwards."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}
    for name, value in zip(names, (str(tmp_path_factory.mktemp("xla_cache")), 1.0, 0)):
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def world(tmp_path_factory, compile_cache):
    root = tmp_path_factory.mktemp("record_training")
    SR.write_record_world(WORLD, str(root / "ds"), records_per_shard=12)
    texts = [c for i in range(WORLD.world.num_images)
             for by in S.all_captions(SR.extended_scene(WORLD, i)[0]).values() for c in by.values()]
    os.makedirs(root / "tokenizer")
    train_sentencepiece(texts, str(root / "tokenizer" / "spm"), 512, user_defined_symbols=S.zh_caption_words())
    return _config(root), str(root)


@pytest.fixture(scope="module")
def uninterrupted(world):
    cfg, workdir = world
    traced = []
    task = _task(cfg, workdir, traced)
    planned = [task.data.bucket_of(k) for k in range(STEPS)]
    result = loop.train(task, cfg, cfg.pretrain, os.path.join(workdir, "full"))
    return result, traced, planned


def test_trains_both_buckets_with_finite_loss(uninterrupted):
    result, traced, planned = uninterrupted
    assert result.step == STEPS and not result.preempted
    assert np.isfinite(result.last_metrics["loss"]) and np.isfinite(result.last_metrics["grad_norm"])
    assert set(planned) == BUCKETS  # the first STEPS batches hold both shapes...
    assert sorted(traced) == sorted(BUCKETS)  # ...and the step compiled exactly once for each


def test_each_bucket_gets_its_own_resolution_shift(world, monkeypatch):
    cfg, workdir = world
    pipe = pretrain.build_pipeline(cfg, workdir, cfg.pretrain)[0]
    init_params, loss_fn = pretrain.model_functions(pipe, cfg.pretrain, 32, 32)
    params, frozen = jax.eval_shape(lambda r: nn.meta.unbox(init_params(r)), jax.random.PRNGKey(0))
    seen = []
    real_loss = pretrain.flow_matching_loss

    def spy(velocity_fn, x0, rng, *, mu, **kw):
        seen.append(mu)
        return real_loss(velocity_fn, x0, rng, mu=mu, **kw)

    monkeypatch.setattr(pretrain, "flow_matching_loss", spy)
    tokens = {k: np.asarray(v) for k, v in pretrain.tokenize_prompts(["a"] * 2, pipe.tokenizer,
                                                                       pipe.conditioner_cfg).items()}
    for h, w in sorted(BUCKETS):  # tracing only: no compile
        jax.eval_shape(loss_fn, params, frozen, {"image": np.zeros((2, h, w, 3), np.float32), **tokens},
                       jax.random.PRNGKey(1))
    want = [pipe.mu(h, w) for h, w in sorted(BUCKETS)]
    assert seen == want and want[0] != want[1]


def test_preempted_run_resumes_bit_exact(world, uninterrupted):
    """SIGTERM while batch PREEMPT_AT is drawn, then rerun in the same stage dir: the loop
    restores the checkpoint and the data position and ends identical to the uninterrupted run."""
    cfg, workdir = world
    stage_dir = os.path.join(workdir, "split")
    task = _task(cfg, workdir, [])
    draw = type(task.data).__next__

    class PreemptedPipeline(type(task.data)):
        def __next__(self):
            if self.position == PREEMPT_AT:
                os.kill(os.getpid(), signal.SIGTERM)
            return draw(self)

    task.data.__class__ = PreemptedPipeline
    first = loop.train(task, cfg, cfg.pretrain, stage_dir)
    assert first.preempted and PREEMPT_AT <= first.step < STEPS
    second = loop.train(_task(cfg, workdir, []), cfg, cfg.pretrain, stage_dir)
    assert second.step == STEPS and not second.preempted
    (want, want_step), (got, got_step) = _leaves(os.path.join(workdir, "full")), _leaves(stage_dir)
    assert want_step == got_step == STEPS and len(want) == len(got) > 0
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
