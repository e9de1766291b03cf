"""Distribution-preserving down-sampling by cluster.

Records are clustered by k-means on feature vectors (given embeddings, or ``simple_features``:
a 4x4 RGB thumbnail and the log aspect ratio), then each cluster c of size n_c keeps

    q_c = min(n_c, cap, lambda * n_c)     with lambda chosen so that sum_c q_c = target,

rounded by largest remainder: proportional sampling (the cluster mix is preserved) except that no
cluster keeps more than ``cap``, whose excess budget goes proportionally to the other clusters.
Within a cluster the kept records are drawn uniformly at random (seeded). Dropped records are
counted as ``downsampled``; ``stats.extra["clusters"]`` lists every cluster's size and kept count.

Two ways to run: ``ClusterDownsample(...)(records)`` buffers its input stream (records and
features in memory), selects and yields the kept records in input order; for corpora larger than
memory, compute features in a first pass, call ``fit(features, keys)`` and the filter then streams,
keeping exactly the selected keys.
"""
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from seedream_jax.data.curation.base import Drop, Filter, release, resized_batch


def simple_features(batch) -> np.ndarray:
    """float32 [B, 49] features of records: 4x4 RGB thumbnail in [0, 1] and log(width / height)."""
    thumbs = resized_batch(batch, 4).reshape(len(batch), -1).astype(np.float32) / 255.0
    aspect = np.array([[np.log(r.width / r.height)] for r in batch], np.float32)
    return np.concatenate([thumbs, aspect], axis=1)


def kmeans(x: np.ndarray, k: int, iters: int = 30, seed: int = 0):
    """Lloyd's k-means with k-means++ init on float [N, D]; returns (centres [k', D], labels int [N]).

    k' = min(k, number of distinct points). Deterministic for a given seed.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    k = int(min(k, len(np.unique(x, axis=0))))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres.append(x[rng.choice(n, p=d2 / d2.sum())])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    centres = np.stack(centres)
    labels = np.full(n, -1)
    for _ in range(iters):
        dist = (x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None]
        new = dist.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = x[labels == c]
            if len(members):
                centres[c] = members.mean(0)
    return centres, labels


def allocate(sizes: Sequence[int], target: int, cap: Optional[int] = None) -> np.ndarray:
    """Per-cluster quotas int [C] summing to min(target, sum of min(size, cap)); see the module docstring."""
    sizes = np.asarray(sizes, np.int64)
    limit = np.minimum(sizes, cap) if cap is not None else sizes.copy()
    if limit.sum() <= target:
        return limit
    lo, hi = 0.0, 1.0
    for _ in range(100):  # bisection on lambda: sum(min(limit, lambda * size)) = target
        mid = (lo + hi) / 2
        if np.minimum(limit, mid * sizes).sum() < target:
            lo = mid
        else:
            hi = mid
    share = np.minimum(limit, hi * sizes)
    quota = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - quota), kind="stable")
    for c in order:
        if quota.sum() >= target:
            break
        if quota[c] < limit[c]:
            quota[c] += 1
    return quota


def cluster_select(features: np.ndarray, target: int, k: int = 16, cap: Optional[int] = None, seed: int = 0):
    """Indices (sorted) of the records to keep, labels [N] and quotas [k'] for features float [N, D]."""
    _, labels = kmeans(features, k, seed=seed)
    ks = labels.max() + 1
    sizes = np.bincount(labels, minlength=ks)
    quota = allocate(sizes, target, cap)
    rng = np.random.default_rng(seed + 1)
    keep = [rng.choice(np.flatnonzero(labels == c), size=int(quota[c]), replace=False) for c in range(ks)]
    return np.sort(np.concatenate(keep)), labels, quota


class ClusterDownsample(Filter):
    """Keeps ``target`` records (or ``fraction`` of them) spread over ``k`` clusters; see module docstring.

    ``feature_fn``: callable on a list of records -> float [B, D] (default ``simple_features``);
    to use an image embedding model, pass ``lambda recs: embed(resized_batch(recs, 224))``.
    """
    name = "cluster_downsample"
    selection = True  # its drops are the requested down-sampling

    def __init__(self, target: Optional[int] = None, fraction: Optional[float] = None, k: int = 16,
                 cap: Optional[int] = None, feature_fn: Optional[Callable] = None, seed: int = 0,
                 batch_size: int = 64):
        super().__init__()
        if (target is None) == (fraction is None):
            raise ValueError("give exactly one of target (records) or fraction (0..1)")
        self.target, self.fraction, self.k, self.cap, self.seed = target, fraction, k, cap, seed
        self.feature_fn = feature_fn or simple_features
        self.batch_size = batch_size
        self.keep_keys: Optional[set] = None

    def _target(self, n: int) -> int:
        return int(self.target) if self.target is not None else int(round(self.fraction * n))

    def _select(self, features: np.ndarray) -> np.ndarray:
        idx, labels, quota = cluster_select(np.asarray(features), self._target(len(features)), self.k, self.cap,
                                            self.seed)
        sizes = np.bincount(labels, minlength=len(quota))
        self.stats.extra["clusters"] = [{"size": int(s), "kept": int(q)} for s, q in zip(sizes, quota)]
        return idx

    def fit(self, features: np.ndarray, keys: Sequence[str]) -> "ClusterDownsample":
        """Selects from precomputed features float [N, D] of the records named ``keys``; returns self.

        The filter then streams, keeping the records whose key was selected.
        """
        if len(features) != len(keys):
            raise ValueError(f"{len(features)} feature rows for {len(keys)} keys")
        self.keep_keys = {keys[i] for i in self._select(features)} if len(keys) else set()
        return self

    def features(self, records: List) -> np.ndarray:
        """Features float [N, D] of ``records`` computed in batches."""
        out = []
        for i in range(0, len(records), self.batch_size):
            batch = records[i:i + self.batch_size]
            out.append(np.asarray(self.feature_fn(batch), np.float64))
            for r in batch:
                release(r)
        return np.concatenate(out) if out else np.zeros((0, 1))

    def _emit(self, record, keep: bool):
        self.stats.seen += 1
        if keep:
            self.stats.kept += 1
            return True
        self.stats.drop(record.key, Drop("downsampled", "cluster quota reached"))
        release(record)
        return False

    def __call__(self, records: Iterable) -> Iterator:
        if self.keep_keys is not None:  # fitted on precomputed features: stream
            for record in records:
                if self._emit(record, record.key in self.keep_keys):
                    yield record
            return
        buffered = []
        for record in records:
            release(record)
            buffered.append(record)
        keep = set(self._select(self.features(buffered)).tolist()) if buffered else set()
        for i, record in enumerate(buffered):
            if self._emit(record, i in keep):
                yield record
