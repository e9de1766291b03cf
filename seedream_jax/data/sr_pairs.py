"""Super-resolution training pairs for the refiner (``stages/refiner.py``): a high-resolution world
rendering and a degraded low-resolution copy of it.

For scene i of the synthetic world, rendered at HR = ``hr_size`` px (``synthetic.render_scene``, so
the HR image is the world's exact truth at that size, not an upsampled 64 px one):

  LR   = degrade(downsample(HR)), uint8 [hr_size / scale, hr_size / scale, 3]
  cond = upsample(LR) (float [-1, 1] at hr_size), encoded by the VAE (``sampling/generate.Refiner``)

``downsample``: PIL bicubic resize by 1 / ``scale`` (antialiased: PIL widens the kernel when it
reduces). ``degrade`` applies, in order and each every time (Real-ESRGAN's first-order chain, mild,
since the refiner's input at sampling time is the base model's output, which is soft and a little
noisy but not compressed hard): a Gaussian blur of sigma ~ U(``blur_sigma``) px of the LR image
(``degradations.gaussian_blur``), Gaussian pixel noise of sigma ~ U(``noise_sigma``) grey levels
(0-255 scale, per pixel and channel) and a JPEG round trip at quality ~ U{``jpeg_quality``}
(``degradations.jpeg_roundtrip``). Every draw comes from ``np.random.default_rng([seed, i])``, so
pair i is a pure function of (the scene, the sizes, the ranges, seed, i): the same seed gives the
same LR image, another seed other blur, noise and JPEG draws.

``upsample`` is the bicubic resize of PyTorch ``F.interpolate(x, scale_factor=s, mode='bicubic',
align_corners=False)`` exactly (Keys cubic with a = -0.75, half-pixel centres, border samples
clamped), written as two interpolation matrices, so the exported PyTorch cascade reproduces the
conditioning with the library call. The result is clipped to [-1, 1] (cubic overshoot).
"""
import dataclasses
import functools
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from seedream_jax.data import degradations, synthetic
from seedream_jax.data.batches import IndexedBatches
from seedream_jax.data.captions import choose_captions

CUBIC_A = -0.75  # PyTorch's bicubic coefficient (PIL and jax.image.resize use -0.5)


@dataclasses.dataclass(frozen=True)
class DegradationConfig:
    """How an LR image is made from an HR one (module docstring): ``scale`` (HR / LR side),
    ``blur_sigma`` (px of the LR image), ``noise_sigma`` (grey levels), ``jpeg_quality`` (inclusive
    range of PIL qualities), each a (low, high) range drawn uniformly."""
    scale: int = 2
    blur_sigma: Tuple[float, float] = (0.3, 1.0)
    noise_sigma: Tuple[float, float] = (0.0, 4.0)
    jpeg_quality: Tuple[int, int] = (60, 95)

    def __post_init__(self):
        for name in ("blur_sigma", "noise_sigma", "jpeg_quality"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"degradation {name}={getattr(self, name)}: expected 0 <= low <= high")
        if self.blur_sigma[0] <= 0:
            raise ValueError(f"degradation blur_sigma={self.blur_sigma}: sigmas must be > 0 px")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 95:
            raise ValueError(f"degradation jpeg_quality={self.jpeg_quality}: qualities must be in 1..95")
        if self.scale < 2:
            raise ValueError(f"degradation scale must be >= 2, got {self.scale}")


def downsample(image: np.ndarray, scale: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H / scale, W / scale, 3] by PIL's antialiased bicubic resize."""
    h, w = image.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"downsample: image size {h}x{w} is not a multiple of the scale {scale}")
    return np.asarray(Image.fromarray(image).resize((w // scale, h // scale), Image.BICUBIC))


def degrade(image: np.ndarray, cfg: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 [h, w, 3] blurred, noised and JPEG-compressed with parameters drawn from ``rng`` -> uint8."""
    x = degradations.gaussian_blur(image, rng.uniform(*cfg.blur_sigma))
    x = x + rng.normal(0.0, rng.uniform(*cfg.noise_sigma), x.shape).astype(np.float32)
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return degradations.jpeg_roundtrip(x, int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))


def low_resolution(hr: np.ndarray, cfg: DegradationConfig, seed: int, index: int) -> np.ndarray:
    """The LR image of pair ``index``: ``degrade(downsample(hr))`` with ``default_rng([seed, index])``."""
    return degrade(downsample(hr, cfg.scale), cfg, np.random.default_rng([int(seed), int(index)]))


@functools.lru_cache(maxsize=16)
def bicubic_matrix(n_in: int, scale: int) -> np.ndarray:
    """float32 [n_in * scale, n_in]: row i holds the weights of output sample i of PyTorch's bicubic
    upsampling (align_corners=False) of a length-``n_in`` signal; taps beyond the ends fold onto
    the border sample."""
    n_out = n_in * scale
    m = np.zeros((n_out, n_in), np.float64)
    a = CUBIC_A
    for i in range(n_out):
        real = (i + 0.5) / scale - 0.5
        base = int(np.floor(real))
        t = real - base
        x = np.array([1 + t, t, 1 - t, 2 - t])
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        weights = np.where(x <= 1, near, far)
        for k, wgt in zip(range(base - 1, base + 3), weights):
            m[i, min(max(k, 0), n_in - 1)] += wgt
    return m.astype(np.float32)


def upsample(images, scale: int) -> jax.Array:
    """float images [B, h, w, C] in [-1, 1] -> [B, h scale, w scale, C] float32, PyTorch's bicubic
    resize (module docstring) clipped to [-1, 1]. Pure and jittable."""
    _, h, w, _ = images.shape
    mh, mw = jnp.asarray(bicubic_matrix(h, scale)), jnp.asarray(bicubic_matrix(w, scale))
    out = jnp.einsum("Hh,bhwc,Ww->bHWc", mh, jnp.asarray(images, jnp.float32), mw,
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.clip(out, -1.0, 1.0)


def render_world(records: Sequence[dict], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: each record's scene spec (``records.jsonl`` of a synthetic world)
    rendered at ``size`` px."""
    return np.stack([synthetic.render_scene(synthetic.Scene.from_dict(r["spec"]), size) for r in records])


class WorldPairs(IndexedBatches):
    """Shuffled batches of SR pairs of the synthetic world of ``data.dir`` (``data.format`` must be
    'synthetic'): its first ``max_records`` scenes (0 = all) rendered at ``hr_size`` (``hr``, uint8
    [N, S, S, 3]) and their LR images (``lr``, uint8 [N, S / scale, S / scale, 3], seed
    ``data.seed``), both built once at open. ``encode(hr, lr) -> {name: [N, ...] array}`` (the
    stage's frozen VAE: HR posteriors and conditioning latents) runs once over all of them; a batch
    is those arrays at its indices plus ``caption`` ([str] * b, drawn with the section's language,
    type and CFG-drop ratios) and ``index`` int64 [b], then ``batch_fn``."""

    def __init__(self, data_cfg, workdir: str, global_batch: int, *, hr_size: int, degradation: DegradationConfig,
                 encode: Callable[[np.ndarray, np.ndarray], Dict[str, np.ndarray]],
                 batch_fn: Optional[Callable] = None, max_records: int = 0):
        if str(data_cfg.format) != "synthetic":
            raise ValueError(f"the refiner's pairs are rendered from the synthetic world's scene specs: data.format "
                             f"must be 'synthetic', got {str(data_cfg.format)!r}")
        if hr_size % degradation.scale:
            raise ValueError(f"refiner hr_size {hr_size} is not a multiple of the scale {degradation.scale}")
        _, records = synthetic.load_dataset(os.path.join(workdir, data_cfg.dir))
        self.records = records[:max_records] if max_records > 0 else records
        seed = int(data_cfg.seed)
        self.hr = render_world(self.records, hr_size)
        self.lr = np.stack([low_resolution(hr, degradation, seed, i) for i, hr in enumerate(self.hr)])
        self.arrays = encode(self.hr, self.lr)
        self.image_size = (hr_size, hr_size)
        self.data_cfg, self.batch_fn = data_cfg, batch_fn
        super().__init__(len(self.records), int(global_batch), seed, self._make_batch)

    def _make_batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict:
        idx = np.sort(idx)
        captions = choose_captions([self.records[i]["captions"] for i in idx], rng, self.data_cfg)
        batch = {**{k: v[idx] for k, v in self.arrays.items()}, "caption": captions, "index": idx}
        return self.batch_fn(batch) if self.batch_fn is not None else batch
