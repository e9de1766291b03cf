"""Shared test setup: 8 virtual CPU devices for mesh tests, float32 reference numerics."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
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


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
        torch.set_num_threads(2)
        torch.manual_seed(0)
    except ImportError:
        pass
