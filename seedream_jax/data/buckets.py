"""Aspect-ratio buckets: image sizes of about the same area as a square base resolution.

A bucket table for base resolution R holds (height, width) pairs, both multiples of
``multiple`` (VAE factor x patch size, or more for hardware-friendly shapes), whose area is
close to R**2, for aspect ratios from 1:max_ratio to max_ratio:1. A training batch is drawn
from one bucket; an image goes to the bucket nearest its aspect ratio (in log space).
"""
import math
from typing import List, Sequence, Tuple


def aspect_ratio_buckets(base_resolution: int, multiple: int = 32, max_ratio: float = 3.0) -> List[Tuple[int, int]]:
    """Sorted (height, width) buckets: for every height that is a multiple of ``multiple``,
    the width (a multiple) giving the area closest to base**2, kept if h/w is within
    [1/max_ratio, max_ratio]. Includes (base, base) when base is a multiple."""
    area = base_resolution ** 2
    buckets = set()
    h = multiple
    while h <= base_resolution * math.sqrt(max_ratio) + multiple:
        w = max(multiple, int(round(area / h / multiple)) * multiple)
        if 1.0 / max_ratio <= h / w <= max_ratio:
            buckets.add((h, w))
        h += multiple
    return sorted(buckets)


def nearest_bucket(height: int, width: int, buckets: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The bucket whose aspect ratio is closest to height/width in log space."""
    target = math.log(height / width)
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - target))
