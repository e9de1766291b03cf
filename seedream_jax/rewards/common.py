"""What the learned reward scorers share: pixel conversion, batched evaluation, timing, and the rank
agreement (Spearman) of a reward with a check."""
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.models.rewards import resize_images


def model_pixels(images, size: int) -> jax.Array:
    """Images uint8 [B, H, W, 3] (0-255) or float [B, H, W, 3] in [-1, 1] -> float32 in [-1, 1],
    [B, size, size, 3] (bilinear with antialiasing where H, W differ; differentiable)."""
    x = images.astype(jnp.float32) / 127.5 - 1.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
    return resize_images(x, size)


def batched(fn: Callable, rows, batch_size: int) -> np.ndarray:
    """``fn`` over ``rows`` (an array or a list) ``batch_size`` at a time, the last batch padded
    with copies of its last row (one compiled shape) -> the outputs concatenated along axis 0."""
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n = len(chunk)
        if len(rows) > batch_size and n < batch_size:
            chunk = (np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
                     if isinstance(chunk, np.ndarray) else list(chunk) + [chunk[-1]] * (batch_size - n))
        out.append(np.asarray(fn(chunk))[:n])
    return np.concatenate(out)


def images_per_second(call: Callable[[], jax.Array], num_images: int, repeats: int = 5) -> float:
    """Throughput of ``call()``, which scores ``num_images`` images: compiled (and warmed) first,
    then ``repeats`` timed calls, each waited for."""
    jax.block_until_ready(call())
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(call())
    return repeats * num_images / (time.perf_counter() - t0)


def stage_model(stage_dir: str, component: str, weights: str = "ema"):
    """(stage, Flax model, params as jax arrays) of ``component`` in a stage directory's latest
    checkpoint (``weights`` 'ema' or 'raw')."""
    stage = open_stage(stage_dir)
    model, _ = stage.component(component)
    return stage, model, jax.tree_util.tree_map(jnp.asarray, stage.params(weights)[component])


def spearman(a, b) -> float:
    """Spearman rank correlation of two 1-D sequences (average ranks for ties); nan if either is constant."""
    def ranks(x):
        x = np.asarray(x, np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # ties share their mean rank
            r[x == value] = r[x == value].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
