"""FSDP-sharded convolutions run on each chip's share of the batch: the VAE decode compiled on 8
virtual devices with its parameters laid out by the fsdp rules and the latents split over
('data', 'fsdp'). Left to itself XLA convolves with the kernel's output channels split over
'fsdp' and every chip's input all-gathered, so each chip decodes the whole global batch;
``layers.conv`` gathers the kernel before use (``layers._gathered_conv_general_dilated``) to
prevent that, and keeps the bias replicated, whose split over 'fsdp' would otherwise split the
activations after each conv by channel, again with the whole batch on every chip. Nothing is
allocated: the decode is compiled for abstract inputs.
"""
import functools
import math
import os
import re

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from seedream_jax.models.vae import AutoencoderKL, VAEConfig  # noqa: E402
from seedream_jax.parallel import mesh as mesh_lib  # noqa: E402
from seedream_jax.parallel import sharding as sharding_lib  # noqa: E402
from seedream_jax.stages.plan import compiled_memory  # noqa: E402

# Three levels (two 2x upsamplings), mid-block attention on; the channels divide 8 so every
# kernel is split over fsdp = 8. Latents 32x32 -> 128 px images.
CFG = VAEConfig(block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8)
BATCH, LATENT = 8, 32
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # the partitioning is done before LLVM


@functools.lru_cache(maxsize=None)
def _compiled_decode(mesh_shape, batch):
    """(compiled decode of ``batch`` latents on a (data, fsdp, tensor) mesh of that shape, number of
    3x3 conv kernels in the decode path: XLA may turn a 1x1 one into a dot)."""
    vae = AutoencoderKL(CFG)
    mesh = mesh_lib.make_mesh(dict(zip(mesh_lib.MESH_AXES, mesh_shape)), jax.devices()[:math.prod(mesh_shape)])
    rules = sharding_lib.resolve_rules("fsdp")
    size = LATENT * CFG.downsample_factor
    boxed = jax.eval_shape(lambda r: vae.init(r, jnp.zeros((1, size, size, CFG.in_channels))), jax.random.PRNGKey(0))
    shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
    params = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    nn.unbox(boxed), shardings)
    z = jax.ShapeDtypeStruct((batch, LATENT, LATENT, CFG.latent_channels), jnp.float32,
                             sharding=mesh_lib.batch_sharding(mesh, 4))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = jax.jit(lambda v, z: vae.apply(v, z, method=vae.decode)).lower(params, z).compile(FAST_COMPILE)
    kernels = [x for p, x in jax.tree_util.tree_leaves_with_path(nn.unbox(boxed)["params"])
               if x.shape[:2] == (3, 3) and "encoder" not in jax.tree_util.keystr(p)]
    return compiled, len(kernels)


def _conv_batches(compiled):
    """The leading (batch) dimension of every convolution's output in the per-device program."""
    return [int(m.group(1)) for m in re.finditer(r"= \w+\[(\d+),[\d,]*\]\S* convolution\(", compiled.as_text())]


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 4, 1)], ids=["1x8x1", "2x4x1"])
def test_vae_decode_convolves_each_chips_share_of_the_batch(mesh_shape):
    data, fsdp, _ = mesh_shape
    share = BATCH // (data * fsdp)
    compiled, n_kernels = _compiled_decode(mesh_shape, BATCH)
    batches = _conv_batches(compiled)
    print(f"mesh {mesh_shape}: {len(batches)} convolutions ({n_kernels} 3x3 kernels), per-device batch: "
          f"{ {b: batches.count(b) for b in sorted(set(batches))} } (share {share} of {BATCH}); "
          f"temp {compiled_memory(compiled)['temp'] / 1e6:.2f} MB per device")
    assert len(batches) >= n_kernels
    assert set(batches) == {share}


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 4, 1)], ids=["1x8x1", "2x4x1"])
def test_vae_decode_needs_about_the_memory_of_one_chips_share(mesh_shape):
    """Per-device scratch of the sharded decode against the one-device decode of its share: 1.15x
    when measured (the attention's extra buffers); 2.4x with the conv biases split over 'fsdp'
    (activations by channel, whole batch); 4.1x (1x8x1) and 2.2x (2x4x1) with the kernels used
    as they lie too."""
    data, fsdp, _ = mesh_shape
    share = BATCH // (data * fsdp)
    temp = compiled_memory(_compiled_decode(mesh_shape, BATCH)[0])["temp"]
    alone = compiled_memory(_compiled_decode((1, 1, 1), share)[0])["temp"]
    print(f"mesh {mesh_shape}: temp {temp / 1e6:.2f} MB per device; one device decoding its share of "
          f"{share}: {alone / 1e6:.2f} MB ({temp / alone:.2f}x)")
    assert temp <= 1.5 * alone
