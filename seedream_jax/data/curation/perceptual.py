"""Near-duplicate removal by perceptual hash (pHash or dHash) within a Hamming distance.

Both hashes are 64-bit ints of a grayscale image:

- ``phash``: resize to 32x32 (Lanczos), 2D DCT-II (orthonormal), keep the 8x8 lowest
  frequencies, bit = coefficient > their median. Robust to rescaling, re-encoding, small colour
  and brightness changes.
- ``dhash``: resize to 9x8 (Lanczos), bit = pixel brighter than its right neighbour.

``HammingIndex`` finds a stored hash within distance ``t`` of a query without a full scan: the
64 bits are cut into ``t + 1`` bands, and two hashes within distance ``t`` agree exactly on at
least one band (pigeonhole), so only hashes sharing a band value are compared.
"""
import functools
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from seedream_jax.data.curation.base import Drop, Filter, pixels


@functools.lru_cache(maxsize=4)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix float64 [n, n]: ``D @ x`` is the DCT of a length-n vector."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def _gray(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.asarray(image, np.uint8)).convert("L").resize(size, Image.LANCZOS)
    return np.asarray(img, np.float64)


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8).ravel()).tobytes(), "big")


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of uint8 [H, W, 3] (or [H, W]) pixels."""
    d = dct_matrix(32)
    coeffs = d @ _gray(image, (32, 32)) @ d.T
    low = np.round(coeffs[:8, :8], 6)  # float noise of flat regions must not flip bits
    return _bits_to_int(low > np.median(low))


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash of uint8 [H, W, 3] (or [H, W]) pixels."""
    g = _gray(image, (9, 8))  # PIL size is (width, height): 8 rows of 9
    return _bits_to_int(g[:, 1:] > g[:, :-1])


HASHES = {"phash": phash, "dhash": dhash}


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two 64-bit hashes."""
    return (a ^ b).bit_count()


class HammingIndex:
    """Set of 64-bit hashes answering "is any stored hash within ``threshold`` bits of this one?"."""

    def __init__(self, threshold: int):
        if not 0 <= threshold < 64:
            raise ValueError(f"Hamming threshold must be in [0, 63], got {threshold}")
        self.threshold = threshold
        bands = threshold + 1
        edges = np.linspace(0, 64, bands + 1).round().astype(int)
        self._bands = [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(edges[:-1], edges[1:])]
        self._tables: List[Dict[int, List[int]]] = [{} for _ in self._bands]
        self.hashes: List[int] = []
        self.ids: List[str] = []

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, h: int) -> Optional[Tuple[str, int]]:
        """(id, distance) of the first stored hash within the threshold of ``h``, or None."""
        seen = set()
        best = None
        for (shift, mask), table in zip(self._bands, self._tables):
            for j in table.get((h >> shift) & mask, ()):
                if j in seen:
                    continue
                seen.add(j)
                dist = hamming(h, self.hashes[j])
                if dist <= self.threshold and (best is None or j < best[0]):
                    best = (j, dist)
        return None if best is None else (self.ids[best[0]], best[1])

    def add(self, h: int, ident: str) -> None:
        j = len(self.hashes)
        self.hashes.append(h)
        self.ids.append(ident)
        for (shift, mask), table in zip(self._bands, self._tables):
            table.setdefault((h >> shift) & mask, []).append(j)


class PerceptualDedup(Filter):
    """Keeps the first of each group of images whose ``kind`` hash ("phash" | "dhash") lies within
    ``threshold`` bits of an earlier kept one; drops the rest as ``near_duplicate_<kind>``."""

    def __init__(self, kind: str = "phash", threshold: int = 6):
        if kind not in HASHES:
            raise ValueError(f"hash kind must be one of {sorted(HASHES)}, got {kind!r}")
        self.name = f"dedup_{kind}"
        super().__init__()
        self.kind, self.hash_fn = kind, HASHES[kind]
        self.index = HammingIndex(threshold)

    def check(self, record):
        h = self.hash_fn(pixels(record))
        hit = self.index.find(h)
        if hit is not None:
            return Drop(f"near_duplicate_{self.kind}", f"{hit[1]} bits from {hit[0]!r}")
        self.index.add(h, record.key)
        return record
