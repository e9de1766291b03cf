"""Frozen components taken whole from an init_from source stay at their source
(``train.self_contained`` False): left out of every checkpoint, recorded with the exact step read
(``frozen_sources.json``, stage.json ``stored: "source"``), read back by ``open_stage(...).params()``,
by ``init_from`` through a chain of stages and by the loop's resume, bit-exactly; a source that
changed or lost that step fails naming the component, the source and the step."""
import json
import os
import shutil
import sys
import types

import flax
import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from seedream_jax import config_lib
from seedream_jax.checkpoint import init_from
from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.checkpoint.source_records import FROZEN_SOURCES_FILE, STAGE_FILE, stage_checksum
from seedream_jax.checkpoint.stage_dir import StageDescription, open_stage
from seedream_jax.stages.runner import run_stage
from seedream_jax.training import loop
from test_loop import _preempt_when_drawing
from toy_task import toy_task

KIND = "frozen_sources_test.reference"  # the kind below, registered in sys.modules by ``workdir``


def reference_task(cfg, stage_cfg, workdir):
    """The toy regression plus a frozen copy of its model, {'ref': {'toy': ...}}, both from ``init_from``."""
    task = toy_task(int(stage_cfg.train.seed))
    base = task.init_params

    def init_params(rng):
        trainable, _ = base(rng)
        return trainable, {"ref": base(jax.random.fold_in(rng, 1))[0]}

    task.init_params = init_params
    task.init_sources = init_from.parse_sources(stage_cfg.init_from, workdir)
    return task


def _section(kind, steps, init_from=None, **train):
    return ConfigDict(dict(kind=kind, init_from=ConfigDict(init_from or {}), train=config_lib.train_section(
        steps=steps, checkpoint_every=5, log_every=5, ema_decay=0.9, **train),
        optimizer=config_lib.optimizer_section(lr=3e-3, warmup_steps=5)))


def _config(**sections):
    """The tiny config on an 8-way FSDP mesh (the frozen copy is sharded) with these stage sections."""
    cfg = config_lib.base_config("tiny")
    cfg.mesh.update(dict(data=1, fsdp=8, tensor=1))
    for name, section in sections.items():
        cfg[name] = section
    return cfg


TARGET = {"toy": "src", "ref/toy": "src:toy"}  # the trained model starts from src, the frozen copy is src's


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """'src' (the toy regression, 5 steps, EMA) and 'tgt' (10 steps, its frozen copy from src), run
    by the stage runner."""
    kind = types.ModuleType(KIND)
    kind.build_task = reference_task
    kind.describe = lambda *args: StageDescription(components={})
    sys.modules[KIND] = kind
    wd = str(tmp_path_factory.mktemp("frozen_sources"))
    cfg = _config(src=_section("stage_kinds.regression", 5), tgt=_section(KIND, 10, TARGET))
    for name in ("src", "tgt"):
        run_stage(cfg, name, wd)
    yield wd
    del sys.modules[KIND]


def _keys(tree) -> set:
    return {"/".join(k) for k in flax.traverse_util.flatten_dict(dict(tree or {}))}


def _assert_equal(got, want):
    got, want = jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves_with_path(want)
    assert [p for p, _ in got] == [p for p, _ in want] and got
    for (path, g), (_, w) in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=jax.tree_util.keystr(path))


def _src_toy(wd, step=None):
    return restore_raw_state(os.path.join(wd, "src"), step)[0]["ema_params"]["toy"]


def test_a_frozen_component_is_not_checkpointed_and_opens_from_its_source(workdir):
    src, tgt = os.path.join(workdir, "src"), os.path.join(workdir, "tgt")
    meta, step = restore_raw_state(tgt, metadata_only=True)
    assert step == 10 and not _keys(meta["frozen"]) and "fc1/kernel" in _keys(meta["params"]["toy"])
    record = {"source": src, "step": 5, "checksum": stage_checksum(src), "stored": "source", "path": "toy",
              "weights": "ema"}
    with open(os.path.join(tgt, FROZEN_SOURCES_FILE)) as f:
        assert json.load(f) == {"ref/toy": record}
    stage = open_stage(tgt)
    assert stage.meta["init_from"]["ref/toy"] == record
    assert stage.meta["init_from"]["toy"] == {**{k: record[k] for k in ("source", "step", "checksum")},
                                              "stored": "checkpoint"}
    trained = restore_raw_state(tgt)[0]
    for weights, tree in (("ema", "ema_params"), ("raw", "params")):
        params = stage.params(weights)
        _assert_equal(params["ref"]["toy"], _src_toy(workdir))  # the source's EMA, as read, either way
        _assert_equal(params["toy"], trained[tree]["toy"])


def test_self_contained_keeps_them_in_the_checkpoint(workdir):
    cfg = _config(whole=_section(KIND, 10, TARGET, self_contained=True))
    run_stage(cfg, "whole", workdir)
    whole = os.path.join(workdir, "whole")
    meta, _ = restore_raw_state(whole, metadata_only=True)
    assert _keys(meta["frozen"]) == {"ref/toy/" + k for k in _keys(meta["params"]["toy"])}
    assert not os.path.exists(os.path.join(whole, FROZEN_SOURCES_FILE))
    assert open_stage(whole).meta["init_from"]["ref/toy"]["stored"] == "checkpoint"
    _assert_equal(restore_raw_state(whole)[0]["frozen"]["ref"]["toy"], _src_toy(workdir))
    _assert_equal(open_stage(whole).params(), open_stage(os.path.join(workdir, "tgt")).params())


def test_resume_rereads_from_the_source_bit_exactly(workdir, monkeypatch):
    """Preempt tgt's run after step 5 (SIGTERM as batch 7 is drawn) and resume it: the state equals
    the uninterrupted run's; the frozen copy was read again from src at step 5, into its shards."""
    cfg = _config(tgt=_section(KIND, 10, TARGET))
    split = os.path.join(workdir, "split")
    first = loop.train(_preempt_when_drawing(reference_task(cfg, cfg.tgt, workdir), 7), cfg, cfg.tgt, split)
    assert first.preempted and 5 < first.step < 10
    assert not _keys(restore_raw_state(split, first.step, metadata_only=True)[0]["frozen"])
    reads, restore_sharded = [], init_from.restore_sharded

    def spy(params, frozen, sources, **kwargs):
        reads.append((dict(sources), kwargs))
        return restore_sharded(params, frozen, sources, **kwargs)

    monkeypatch.setattr(init_from, "restore_sharded", spy)
    result = loop.train(reference_task(cfg, cfg.tgt, workdir), cfg, cfg.tgt, split)
    assert result.step == 10 and not result.preempted
    assert reads == [({"ref/toy": (os.path.join(workdir, "src"), "toy")}, {"use_ema": True, "step": 5})]
    resumed, uninterrupted = restore_raw_state(split)[0], restore_raw_state(os.path.join(workdir, "tgt"))[0]
    for part in ("step", "params", "opt_state", "ema_params", "rng"):
        _assert_equal(resumed[part], uninterrupted[part])
    _assert_equal(jax.device_get(result.state.frozen), {"ref": {"toy": _src_toy(workdir)}})
    kernel = result.state.frozen["ref"]["toy"]["fc1"]["kernel"]
    assert kernel.sharding == result.state.params["toy"]["fc1"]["kernel"].sharding
    assert not kernel.sharding.is_fully_replicated


def test_a_changed_or_pruned_source_fails_naming_the_component_source_and_step(workdir):
    """tgt2 reads its frozen copy from src2 (a copy of src) at step 5. src2's stage.json changed:
    open, init_from and resume fail naming it; restored, and src2 trained on to step 10, tgt2
    still reads step 5; with step 5 deleted they fail naming the step."""
    src2 = os.path.join(workdir, "src2")
    shutil.copytree(os.path.join(workdir, "src"), src2)
    cfg = _config(tgt2=_section(KIND, 5, {"toy": "src2", "ref/toy": "src2:toy"}))
    run_stage(cfg, "tgt2", workdir)
    tgt2 = os.path.join(workdir, "tgt2")
    more = _section(KIND, 10, {"toy": "src2", "ref/toy": "src2:toy"})
    meta_path = os.path.join(src2, STAGE_FILE)
    original = open(meta_path, "rb").read()
    with open(meta_path, "w") as f:
        json.dump({**json.loads(original), "name": "retrained"}, f)
    changed = rf"stage {tgt2}: component 'ref/toy' comes from {src2}, whose stage.json checksum .* since step 5"
    for read in (lambda: open_stage(tgt2), lambda: init_from.load_component(tgt2, "ref/toy"),
                 lambda: loop.train(reference_task(cfg, more, workdir), cfg, more, tgt2)):
        with pytest.raises(ValueError, match=changed):
            read()
    with open(meta_path, "wb") as f:
        f.write(original)
    src_cfg = _config(src=_section("stage_kinds.regression", 10))
    loop.train(toy_task(), src_cfg, src_cfg.src, src2)  # src2 goes on to step 10, keeping 5 (it resumed from it)
    _assert_equal(open_stage(tgt2).params()["ref"]["toy"], _src_toy(workdir, 5))
    assert not np.array_equal(_src_toy(workdir, 5)["fc1"]["kernel"],
                              restore_raw_state(src2)[0]["ema_params"]["toy"]["fc1"]["kernel"])
    shutil.rmtree(os.path.join(src2, "checkpoints", "5"))  # as keep_checkpoints does on a later save
    gone = rf"stage {tgt2}: component 'ref/toy' is read from {src2} at step 5, which is gone \(steps there: \[10\]"
    for read in (lambda: open_stage(tgt2), lambda: init_from.load_component(tgt2, "ref"),
                 lambda: loop.train(reference_task(cfg, more, workdir), cfg, more, tgt2)):
        with pytest.raises(FileNotFoundError, match=gone):
            read()


def test_init_from_follows_a_component_stored_at_its_source(workdir):
    """third takes its frozen copy from tgt, which stores it at src: read (and recorded) through tgt."""
    tgt = os.path.join(workdir, "tgt")
    run_stage(_config(third=_section(KIND, 5, {"toy": "tgt", "ref/toy": "tgt:ref/toy"})), "third", workdir)
    third = os.path.join(workdir, "third")
    with open(os.path.join(third, FROZEN_SOURCES_FILE)) as f:
        record = json.load(f)["ref/toy"]
    assert (record["source"], record["path"], record["step"], record["weights"]) == (tgt, "ref/toy", 10, "ema")
    assert not _keys(restore_raw_state(third, metadata_only=True)[0]["frozen"])
    src_toy = _src_toy(workdir)
    _assert_equal(open_stage(third).params()["ref"]["toy"], src_toy)  # third -> tgt -> src
    _assert_equal(init_from.load_component(tgt, "ref")[0], {"toy": src_toy})  # above the stored component
    _assert_equal(init_from.load_component(tgt, "ref/toy/fc1")[0], src_toy["fc1"])  # inside it
    zeros = {"ref": {"toy": jax.tree_util.tree_map(np.zeros_like, src_toy)}}
    _, frozen = init_from.apply_init_from({}, zeros, {"ref": "third"}, workdir=workdir)
    _assert_equal(frozen["ref"]["toy"], src_toy)  # the host form too
