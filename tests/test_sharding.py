"""Sharding by logical-axis rules: every mesh shape computes the one-device loss and gradients.

A small text encoder (Qwen2 layout: embeddings, GQA, SwiGLU) feeds an MMDiT (double and single
blocks) trained with the flow-matching loss; parameters are laid out by the rules on meshes of
the 8 virtual CPU devices, the batch over ('data', 'fsdp'). One initialisation serves every mesh
and each mesh's step is compiled once (``_mesh_step``), so the mis-paired batches reuse the 2x2x2
step. A batch whose captions are paired with the wrong images must fail the same comparison.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import perturbed

from seedream_jax.models import layers
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig
from seedream_jax.models.text_encoder import Qwen2Config, Qwen2Model
from seedream_jax.parallel import axes
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.parallel import sharding as sharding_lib
from seedream_jax.training.losses import flow_matching_loss

LLM = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2)
DIT = MMDiTConfig(in_channels=4, patch_size=2, num_heads=4, head_dim=8, num_double_blocks=1,
                  num_single_blocks=1, context_dim=32, pooled_dim=32, axes_dims=(2, 2, 4), rope_base_grid=4)
BATCH = 8


class TextToLatent(nn.Module):
    @nn.compact
    def __call__(self, x, t, ids, mask):
        ctx = Qwen2Model(LLM, name="llm")(ids, mask)
        pooled = jnp.sum(ctx * mask[..., None], 1) / jnp.sum(mask, 1, keepdims=True)
        return MMDiT(DIT, name="mmdit")(x, t, ctx, mask, pooled)


def _batch():
    r = np.random.default_rng(0)
    lengths = r.integers(3, 9, size=BATCH)
    return {"x0": r.normal(size=(BATCH, 8, 8, 4)).astype(np.float32),
            "ids": r.integers(0, LLM.vocab_size, size=(BATCH, 8)).astype(np.int32),
            "mask": np.arange(8)[None, :] < lengths[:, None]}


MODEL = TextToLatent()
LOSS_TOL, GRAD_TOL = 1e-5, 1e-4  # |loss diff| relative to max(1, |loss|); worst per-leaf grad diff / max |grad|
# What is under test is the SPMD partitioning, which XLA does before the CPU backend's LLVM
# optimisation: every step here, the one-device reference included, is compiled at LLVM level 0,
# about three times faster than the default.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _loss(params, batch, rng):
    fn = lambda x, t: MODEL.apply({"params": params}, x, t, batch["ids"], batch["mask"])
    return flow_matching_loss(fn, batch["x0"], rng, mu=0.5)[0]


@functools.lru_cache(maxsize=None)
def _host_params():
    """(boxed abstract tree, perturbed parameters on the host): one initialisation for every mesh."""
    batch = _batch()
    first = (batch["x0"][:1], jnp.zeros((1,)), batch["ids"][:1], batch["mask"][:1])
    init = lambda r: perturbed(MODEL.init(r, *first)["params"])
    key = jax.random.PRNGKey(0)
    params = jax.jit(lambda r: nn.meta.unbox(init(r))).lower(key).compile(FAST_COMPILE)(key)
    return jax.eval_shape(init, key), jax.device_get(params)


@functools.lru_cache(maxsize=None)
def _mesh_step(shape, rules_name):
    """(run, param shardings) for a (data, fsdp, tensor) mesh shape: run(batch) -> (loss, grads) of
    one step with the parameters laid out by the rules, the batch over ('data', 'fsdp')."""
    mesh = mesh_lib.make_mesh(dict(zip(mesh_lib.MESH_AXES, shape)), jax.devices()[:math.prod(shape)])
    rules = sharding_lib.resolve_rules(rules_name)
    boxed, host = _host_params()
    shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
    params = jax.device_put(host, shardings)
    place = lambda batch: {k: jax.device_put(v, mesh_lib.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    rng = jax.random.PRNGKey(1)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        step = jax.jit(jax.value_and_grad(_loss), out_shardings=(mesh_lib.replicated(mesh), shardings))
        compiled = step.lower(params, place(_batch()), rng).compile(FAST_COMPILE)

    def run(batch):
        loss, grads = compiled(params, place(batch), rng)
        return float(loss), jax.device_get(grads)

    return run, shardings


@pytest.fixture(scope="module")
def single_device():
    """(loss, grads) of the true batch on one device: the reference every comparison uses."""
    return _mesh_step((1, 1, 1), "data_parallel")[0](_batch())


def _differences(result, reference):
    """(|loss - reference loss|, worst per-leaf max |grad diff| / max |reference grad|)."""
    (loss, grads), (ref_loss, ref_grads) = result, reference
    flat = dict(jax.tree_util.tree_leaves_with_path(grads))
    worst = max(float(np.max(np.abs(np.asarray(flat[p]) - np.asarray(g)))) / (float(np.max(np.abs(g))) + 1e-12)
                for p, g in jax.tree_util.tree_leaves_with_path(ref_grads))
    return abs(loss - ref_loss), worst


def _loss_tol(reference):
    return LOSS_TOL * max(1.0, abs(reference[0]))


# (data, fsdp, tensor) sizes. 2x2x2 is the one with all three > 1: there XLA's SPMD partitioner
# swaps batch shards in the row-parallel projections unless the kernels are gathered before use
# (see ``sharding.gathered_axes`` and docs/xla_row_parallel_swap.md).
MESHES = [((8, 1, 1), "data_parallel"), ((1, 8, 1), "fsdp"), ((1, 1, 8), "fsdp"), ((1, 4, 2), "fsdp"),
          ((4, 1, 2), "fsdp"), ((2, 1, 4), "fsdp"), ((4, 2, 1), "fsdp"), ((2, 2, 2), "fsdp")]


@pytest.mark.parametrize("shape,rules", MESHES, ids=[f"{'x'.join(map(str, s))}-{r}" for s, r in MESHES])
def test_every_mesh_gives_the_one_device_loss_and_grads(single_device, shape, rules):
    run, shardings = _mesh_step(shape, rules)
    result = run(_batch())
    loss_diff, grad_diff = _differences(result, single_device)
    print(f"mesh {shape} {rules}: loss {result[0]:.6f} (1 device {single_device[0]:.6f}), "
          f"|loss diff| {loss_diff:.2e}, worst relative grad diff {grad_diff:.2e}")
    assert loss_diff <= _loss_tol(single_device)
    assert grad_diff <= GRAD_TOL
    if rules == "fsdp" and max(shape[1:]) > 1:  # the layout really is sharded, not silently replicated
        sharded = [s for s in jax.tree_util.tree_leaves(shardings) if not s.is_fully_replicated]
        assert len(sharded) >= 10


def _shards_swapped(a):
    """The 4 batch shards of a 2x2 (data, fsdp) batch in (fsdp, data) order: the middle two swapped."""
    return a.reshape((2, 2, -1) + a.shape[1:]).swapaxes(0, 1).reshape(a.shape)


MISPAIRINGS = {"rolled-one-shard": lambda a: np.roll(a, BATCH // 4, axis=0), "middle-shards-swapped": _shards_swapped}


@pytest.mark.parametrize("mispairing", sorted(MISPAIRINGS))
def test_a_mispaired_batch_fails_the_equivalence_check(single_device, mispairing):
    """Captions moved against their images by whole batch shards of the 2x2x2 mesh (rolled by one
    shard; or the middle two swapped, what a (data, fsdp) / (fsdp, data) mix-up does) must fail the
    comparison the mesh test passes, by a wide margin."""
    batch = _batch()
    shuffle = MISPAIRINGS[mispairing]
    mispaired = dict(batch, ids=shuffle(batch["ids"]), mask=shuffle(batch["mask"]))
    assert not np.array_equal(mispaired["ids"], batch["ids"])
    loss_diff, grad_diff = _differences(_mesh_step((2, 2, 2), "fsdp")[0](mispaired), single_device)
    print(f"{mispairing}: |loss diff| {loss_diff:.2e}, worst relative grad diff {grad_diff:.2e}")
    assert loss_diff > 10 * _loss_tol(single_device)
    assert grad_diff > 10 * GRAD_TOL


def test_row_parallel_dense_is_exact_on_a_2x2x2_mesh():
    """The case XLA miscompiles, through ``layers.dense``: x [batch over (data, fsdp), L, heads over
    tensor] times the (heads, embed) kernel with the output's width over tensor. With the kernel
    gathered over fsdp at use it matches numpy; XLA's own partitioning of it swaps batch shards."""
    rules = sharding_lib.resolve_rules("fsdp")
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    dense = layers.dense(32, axes.HEADS, axes.EMBED)
    r = np.random.default_rng(0)
    x = r.normal(size=(8, 8, 32)).astype(np.float32)
    params = {"kernel": r.normal(size=(32, 32)).astype(np.float32), "bias": r.normal(size=(32,)).astype(np.float32)}
    boxed = jax.eval_shape(lambda: dense.init(jax.random.PRNGKey(0), x))
    shardings = sharding_lib.tree_shardings(boxed, mesh, rules)["params"]
    assert tuple(shardings["kernel"].spec) == ("tensor", "fsdp")
    assert sharding_lib.gathered_axes((axes.HEADS, axes.EMBED), rules) == (axes.HEADS, None)
    act = (axes.BATCH, axes.LENGTH, axes.ACT_HEADS)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        constrain = lambda a: nn.with_logical_constraint(a, act)
        apply = lambda p, x: constrain(dense.apply({"params": p}, constrain(x)))
        out = np.asarray(jax.jit(apply, out_shardings=mesh_lib.replicated(mesh))(jax.device_put(params, shardings), x))
    np.testing.assert_allclose(out, x @ params["kernel"] + params["bias"], rtol=1e-5, atol=1e-4)


def test_fsdp_shards_the_embedding_matrix_over_fsdp_and_tensor():
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    rules = sharding_lib.resolve_rules("fsdp")
    boxed = jax.eval_shape(lambda r: Qwen2Model(LLM).init(r, jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4))),
                           jax.random.PRNGKey(0))
    shardings = sharding_lib.tree_shardings(boxed, mesh, rules)["params"]
    assert tuple(shardings["embed_tokens"]["embedding"].spec) == ("tensor", "fsdp")
    assert tuple(shardings["layers_0"]["mlp"]["gate_proj"]["kernel"].spec) == ("fsdp", "tensor")
    assert tuple(shardings["layers_0"]["mlp"]["down_proj"]["kernel"].spec) == ("tensor", "fsdp")
