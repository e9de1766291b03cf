"""The optimizer: ``optimizer.flatten`` (one AdamW update over all parameters raveled into a
vector) computes what the per-tensor optax chain computes, with groups, frozen paths, the
weight-decay mask of 1-D parameters and clipping; and it is refused with sharded parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from seedream_jax import config_lib
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.training import optimizer as optimizer_lib


def _params():
    r = np.random.default_rng(0)
    return {"enc": {"kernel": jnp.asarray(r.normal(size=(6, 5)), jnp.float32), "bias": jnp.asarray(r.normal(size=5), jnp.float32)},
            "head": {"kernel": jnp.asarray(r.normal(size=(5, 3, 2)), jnp.float32), "scale": jnp.ones((3,))},
            "still": {"w": jnp.asarray(r.normal(size=(4, 4)), jnp.float32)}}


def _run(opt_cfg, steps=5):
    """Parameters after ``steps`` updates on fixed pseudo-random gradients."""
    tx = optimizer_lib.make_optimizer(opt_cfg, 20)
    params = _params()
    state = tx.init(params)
    for k in range(steps):
        keys = iter(jax.random.split(jax.random.PRNGKey(k), 8))
        grads = jax.tree_util.tree_map(lambda p: 3.0 * jax.random.normal(next(keys), p.shape), params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("grouped", [False, True], ids=["one-group", "groups-and-freeze"])
def test_flat_update_equals_the_per_tensor_adamw(grouped):
    opt = config_lib.optimizer_section(lr=1e-2, warmup_steps=2, weight_decay=0.1, grad_clip_norm=2.0)
    if grouped:
        opt.groups = {"head": {"pattern": r"head/.*", "lr": 3e-2}}
        opt.freeze = (r"still/.*",)
    per_tensor = _run(opt)
    opt.flatten = True
    flat = _run(opt)
    start = _params()
    for (path, a), b, s in zip(jax.tree_util.tree_leaves_with_path(per_tensor), jax.tree_util.tree_leaves(flat),
                               jax.tree_util.tree_leaves(start)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7, err_msg=str(path))
        moved = float(np.max(np.abs(np.asarray(b) - np.asarray(s))))
        if grouped and "still" in str(path):
            assert moved == 0.0
        else:
            assert moved > 1e-3, path


def test_flat_update_decays_matrices_and_not_vectors():
    """Zero gradients: only weight decay moves the parameters, and only those with ndim > 1."""
    tx = optimizer_lib.flat_adamw(optax.constant_schedule(0.1), b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.5)
    params = _params()
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["enc"]["kernel"]), -0.05 * np.asarray(params["enc"]["kernel"]),
                               rtol=1e-6)
    assert not np.any(np.asarray(updates["enc"]["bias"])) and not np.any(np.asarray(updates["head"]["scale"]))


def test_flatten_is_refused_with_sharded_parameters():
    opt = config_lib.optimizer_section(flatten=True)
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    optimizer_lib.check_flatten_layout(opt, {"w": mesh_lib.replicated(mesh)})
    sharded = {"enc": {"w": NamedSharding(mesh, P("fsdp"))}}
    with pytest.raises(ValueError, match=r"flatten=True needs unsharded parameters.*e\.g\. enc/w"):
        optimizer_lib.check_flatten_layout(opt, sharded)
    optimizer_lib.check_flatten_layout(config_lib.optimizer_section(), sharded)  # off: no check
