"""Shared test setup: 8 virtual CPU devices for mesh tests, float32 reference numerics, and
XLA:CPU's code generator at optimisation level 0."""
import os

# The suite is compile-bound: at LLVM -O0 XLA:CPU compiles about a third faster, which outweighs
# the slower machine code of the tiny programs (the whole suite 1329 s -> 983 s on the 2-core
# machine, 2026-12-08; benchmarks/RESULTS.md (a5)). The HLO is the same. Subprocess tests add it too.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def max_abs_diff(a, b) -> float:
    """Largest absolute elementwise difference of two arrays (torch tensors allowed)."""
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
    assert a.shape == b.shape, f"shape mismatch {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def perturbed(params, seed: int = 0, scale: float = 0.05):
    """``params`` plus N(0, scale^2) noise on every leaf (boxed trees keep their axis names).

    A freshly initialised MMDiT is adaLN-Zero: its modulation and output layers are zero and it
    outputs exactly 0, so parity and sharding tests perturb it first or they would compare zeros."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def micro_config(size: int, num_images: int):
    """configs' tiny run shrunk for stage tests: ``size`` px, a 2x VAE read in 4x4 patches, one
    LLM / ByT5 layer, one double and one single MMDiT block of width 32, a synthetic world of
    ``num_images``, pretrain without init_from."""
    from ml_collections import ConfigDict
    from seedream_jax import config_lib
    c = config_lib.base_config("tiny")
    c.model.resolution = size
    c.model.llm = ConfigDict(config_lib._llm(vocab=512, hidden=32, inter=64, layers=1, heads=2, kv=1, theta=1e4))
    c.model.byt5 = ConfigDict(config_lib._byt5(d_model=32, d_kv=8, d_ff=64, layers=1, heads=2, buckets=8, max_distance=16))
    c.model.update(dict(context_dim=32, byt5_max_length=8))
    c.model.vae = ConfigDict(config_lib._vae((8, 8), 1, 4, 4))
    c.model.mmdit = ConfigDict(config_lib._mmdit(2, 16, 1, 1, (4, 6, 6), 4, 32, base_grid=2))
    c.model.mmdit.patch_size = 4
    c.tokenizer.vocab_size = 512
    c.data.update(dict(num_images=num_images, image_size=size))
    c.pretrain.init_from = ConfigDict()
    return c


def write_random_pretrain_stage(cfg, workdir: str, size: int, seed: int = 0) -> str:
    """A ``pretrain`` stage in ``workdir`` (tokenizer already there) holding random weights of
    ``cfg``'s models at ``size`` px, one checkpoint at step 1 and its stage.json: norm scales near
    1, every other parameter N(0, 0.1^2) (so the adaLN-Zero DiT is not zero). Returns its dir."""
    import flax.linen as nn
    from seedream_jax.checkpoint.manager import Checkpointer
    from seedream_jax.checkpoint.stage_dir import write_stage_meta
    from seedream_jax.stages import pretrain
    pipe, _, _ = pretrain.build_pipeline(cfg, workdir, cfg.pretrain)
    init = pretrain.model_functions(pipe, cfg.pretrain, size, size)[0]
    shapes = nn.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return (base + 0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

    trainable, frozen = jax.tree_util.tree_map_with_path(draw, shapes)
    stage_dir = os.path.join(workdir, "pretrain")
    ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), keep=1, async_save=False)
    ckpt.save(1, {"params": trainable, "frozen": frozen}, {"position": 0}, force=True)
    ckpt.wait()
    ckpt.close()
    write_stage_meta(stage_dir, "pretrain", "pretrain", pretrain.describe(cfg, cfg.pretrain, workdir, stage_dir))
    return stage_dir


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
        torch.set_num_threads(2)
        torch.manual_seed(0)
    except ImportError:
        pass
