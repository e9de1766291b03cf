"""Fitting a decoded image to its aspect-ratio bucket, with optional random crop and flip.

``fit_to_bucket`` scales the image (bicubic, PIL) by the smallest factor that makes it cover the
bucket's height x width, then crops the overflow: a uniformly random offset when ``random_crop``
(training), centred otherwise (deterministic; what the latent cache stores). A horizontal flip is
applied with probability ``flip_prob``; it is 0 by default because captions name left/right
positions and rendered text, which a mirror image would contradict.
"""
from typing import Tuple

import numpy as np
from PIL import Image


def fit_to_bucket(image: np.ndarray, bucket: Tuple[int, int], rng: np.random.Generator | None = None,
                  random_crop: bool = False, flip_prob: float = 0.0) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [bucket_h, bucket_w, 3] (scale to cover, crop, maybe flip).

    ``rng`` is needed when ``random_crop`` or ``flip_prob > 0``; three draws are always taken from
    it in that case (crop top, crop left, flip), so the stream does not depend on the image size.
    """
    bh, bw = int(bucket[0]), int(bucket[1])
    h, w = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    scale = max(bh / h, bw / w)
    sh, sw = max(bh, round(h * scale)), max(bw, round(w * scale))
    if (sh, sw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BICUBIC))
    random = random_crop or flip_prob > 0
    if random and rng is None:
        raise ValueError("fit_to_bucket: random_crop/flip need an rng")
    u = rng.random(3) if random else np.full(3, 0.5)
    if random_crop:
        top, left = int(u[0] * (sh - bh + 1)), int(u[1] * (sw - bw + 1))
    else:
        top, left = (sh - bh) // 2, (sw - bw) // 2
    out = image[top:top + bh, left:left + bw]
    if u[2] < flip_prob:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
