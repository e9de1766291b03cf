"""Cross-stage initialisation: 'stage[:component]' sources with renames, restored straight into
the target shardings on the 8-device CPU mesh without a host copy of the state, equal to the
source's EMA (or raw) weights, training on exactly like the host hook; clear errors."""
import jax
import numpy as np
import pytest

from seedream_jax.checkpoint.init_from import apply_init_from, parse_source, parse_sources, restore_component
from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.training import loop
from toy_task import toy_stage_config, toy_task


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A workdir with two toy stages of 5 steps: 'src' keeps an EMA, 'noema' does not."""
    workdir = str(tmp_path_factory.mktemp("sources"))
    for name, ema in (("src", 0.9), ("noema", 0.0)):
        cfg, stage = toy_stage_config(5)
        stage.train.ema_decay = ema
        loop.train(toy_task(), cfg, stage, f"{workdir}/{name}")
    return workdir


def _target(steps: int):
    """The toy task plus a frozen reference copy {'ref': {'toy': ...}}, on an 8-way FSDP mesh."""
    task = toy_task()
    base = task.init_params

    def init_params(rng):
        trainable, _ = base(rng)
        return trainable, {"ref": base(jax.random.fold_in(rng, 1))[0]}

    task.init_params = init_params
    cfg, stage = toy_stage_config(steps)
    cfg.mesh.update(dict(data=1, fsdp=8, tensor=1))
    return task, cfg, stage


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


def _assert_equal(got, want):
    got, want = _leaves(got), _leaves(want)
    assert [p for p, _ in got] == [p for p, _ in want] and got
    for (path, g), (_, w) in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=jax.tree_util.keystr(path))


def test_parse_source_names_a_stage_and_a_component(tmp_path):
    assert parse_source("vae", "vae", "/w") == ("/w/vae", "vae")
    assert parse_source("sft:mmdit", "ref/mmdit", "/w") == ("/w/sft", "mmdit")
    assert parse_source("glyph_align:conditioner/byt5", "conditioner/byt5", "/w") == \
        ("/w/glyph_align", "conditioner/byt5")
    assert parse_source("/runs/x/pretrain:mmdit", "mmdit", "/w") == ("/runs/x/pretrain", "mmdit")
    assert parse_source("/runs/x/vae", "vae", None) == ("/runs/x/vae", "vae")
    assert parse_sources({"vae": "vae", "mmdit": "", "ref/mmdit": ("/a", "mmdit")}, "/w") == \
        {"vae": ("/w/vae", "vae"), "ref/mmdit": ("/a", "mmdit")}
    (tmp_path / "run_10:00" / "vae").mkdir(parents=True)  # an existing directory with a ':' is a stage
    assert parse_source("run_10:00/vae", "vae", str(tmp_path)) == (str(tmp_path / "run_10:00" / "vae"), "vae")
    assert parse_source(str(tmp_path / "run_10:00:mmdit"), "m", None) == (str(tmp_path / "run_10:00"), "mmdit")
    for bad in ("sft:", ":mmdit"):
        with pytest.raises(ValueError, match="neither 'stage' nor 'stage:component/path'"):
            parse_source(bad, "mmdit", "/w")
    with pytest.raises(ValueError, match="no workdir"):
        parse_source("sft:mmdit", "mmdit", None)


def test_restored_leaves_are_the_sources_weights_in_the_target_shardings(sources, monkeypatch):
    """'toy' <- noema (raw weights), 'ref/toy' <- src:toy (a rename into the frozen tree, EMA
    weights); no jax.device_get and no NumPy conversion of any array on the way."""
    task, cfg, stage = _target(0)
    plain = loop.train(task, cfg, stage, sources + "/plain").state  # shardings of a fresh start
    task.init_sources = parse_sources({"toy": "noema", "ref/toy": "src:toy"}, sources)

    def no_host_copy(*args, **kwargs):
        raise AssertionError("the state went through the host")

    with monkeypatch.context() as m:
        m.setattr(jax, "device_get", no_host_copy)
        m.setattr(jax._src.array.ArrayImpl, "__array__", no_host_copy)
        state = loop.train(task, cfg, stage, sources + "/sharded").state
        with pytest.raises(AssertionError, match="through the host"):  # the host hook would fail here
            host = toy_task()
            host.initialise = lambda t, f: apply_init_from(t, f, {"toy": "noema"}, workdir=sources)
            loop.train(host, cfg, stage, sources + "/host")
    src, noema = restore_raw_state(sources + "/src")[0], restore_raw_state(sources + "/noema")[0]
    _assert_equal(state.params["toy"], noema["params"]["toy"])
    _assert_equal(state.ema_params["toy"], noema["params"]["toy"])
    _assert_equal(state.frozen["ref"]["toy"], src["ema_params"]["toy"])
    assert not np.array_equal(src["ema_params"]["toy"]["fc1"]["kernel"], src["params"]["toy"]["fc1"]["kernel"])
    shardings = lambda s: [x.sharding for x in jax.tree_util.tree_leaves((s.params, s.frozen, s.ema_params))]
    assert shardings(state) == shardings(plain)
    kernel = state.params["toy"]["fc1"]["kernel"]
    assert not kernel.sharding.is_fully_replicated and len({str(s.index) for s in kernel.addressable_shards}) == 8


def test_sharded_start_trains_exactly_like_the_host_hook(sources):
    task, cfg, stage = _target(4)
    task.init_sources = parse_sources({"toy": "src", "ref/toy": "noema:toy"}, sources)
    sharded = loop.train(task, cfg, stage, sources + "/sharded4")
    host_task, cfg, stage = _target(4)
    host_task.initialise = lambda t, f: apply_init_from(t, f, {"toy": "src", "ref/toy": "noema:toy"}, workdir=sources)
    host = loop.train(host_task, cfg, stage, sources + "/host4")
    assert sharded.step == host.step == 4
    for part in ("params", "frozen", "ema_params", "opt_state"):
        _assert_equal(getattr(sharded.state, part), getattr(host.state, part))


def test_errors_name_the_component_and_the_mismatch(sources):
    task, cfg, stage = _target(0)
    cases = [({"toy": (sources + "/src", "nothere")}, KeyError,
              r"checkpoint .*src \(step 5\) has no component 'nothere' \(at 'nothere'; found \['toy'\]\)"),
             ({"nothere": (sources + "/src", "toy")}, KeyError, r"this stage has no component 'nothere'.*'ref', 'toy'"),
             ({"toy/fc1": (sources + "/src", "toy/fc2")}, ValueError,
              r"'toy/fc1' <- .*src:toy/fc2.*misshaped=\['bias: \(1,\) vs \(32,\)', 'kernel: \(32, 1\) vs \(8, 32\)'\]"),
             ({"toy": (sources + "/src", "toy/fc1")}, ValueError,
              r"missing=\['fc1/bias', 'fc1/kernel', 'fc2/bias', 'fc2/kernel'\] unexpected=\['bias', 'kernel'\]")]
    for init_sources, error, message in cases:
        task.init_sources = init_sources
        with pytest.raises(error, match=message):
            loop.train(task, cfg, stage, sources + "/bad")
    with pytest.raises(KeyError, match="no component 'nothere'"):
        apply_init_from({"toy": {}}, {}, {"nothere": sources + "/src"})


def test_restore_component_reads_one_leaf_in_a_given_sharding(sources):
    mesh = jax.make_mesh((8,), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "x"))
    leaf, step = restore_component(sources + "/src", "toy/fc1/kernel",
                                   jax.ShapeDtypeStruct((8, 32), np.float32, sharding=sharding))
    assert step == 5 and leaf.sharding == sharding
    want = restore_raw_state(sources + "/src")[0]["ema_params"]["toy"]["fc1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(leaf), want)
