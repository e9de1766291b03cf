"""Which records make up global batch ``k``: bucketed, shuffled by seed, the same on every process.

Every record belongs to one aspect-ratio bucket (``buckets.nearest_bucket`` of its width and
height). Epoch ``e`` of the plan:

1. the records of each bucket ``b`` are permuted with ``default_rng([seed, e, b + 1])`` and cut
   into global batches of ``global_batch`` (a bucket's remainder waits for another epoch's
   permutation: it is dropped in this one);
2. the batch slots of all buckets are interleaved by a permutation drawn from
   ``default_rng([seed, e])``.

So global batch ``k`` (epoch ``k // steps_per_epoch``) is a pure function of (record buckets,
global_batch, seed, k): every process computes the same plan without communicating, and all rows
of a global batch share one bucket, hence one image shape. Process ``p`` of ``P`` takes rows
``p::P`` of each global batch: the process shards are disjoint and together cover the batch.
"""
from typing import Iterable, List, Sequence, Tuple

import numpy as np

from seedream_jax.data import buckets as buckets_lib


def assign_buckets(sizes: Iterable[Tuple[int, int]], bucket_table: Sequence[Tuple[int, int]]) -> np.ndarray:
    """int32 [N]: index into ``bucket_table`` of the bucket nearest each (height, width)."""
    index = {b: i for i, b in enumerate(bucket_table)}
    return np.array([index[buckets_lib.nearest_bucket(h, w, bucket_table)] for h, w in sizes], np.int32)


class BucketBatchPlan:
    """Global batches drawn one bucket at a time (see the module docstring).

    Args:
      bucket_ids: int [N], the bucket of every record (index into a bucket table).
      num_buckets: size of the bucket table.
      global_batch: records per global batch (all processes together).
      seed: shuffling seed.
    """

    def __init__(self, bucket_ids: np.ndarray, num_buckets: int, global_batch: int, seed: int):
        self.bucket_ids = np.asarray(bucket_ids, np.int64)
        self.global_batch, self.seed = int(global_batch), int(seed)
        self.members: List[np.ndarray] = [np.flatnonzero(self.bucket_ids == b) for b in range(num_buckets)]
        self.batches_per_bucket = np.array([len(m) // self.global_batch for m in self.members], np.int64)
        self.steps_per_epoch = int(self.batches_per_bucket.sum())
        if self.steps_per_epoch == 0:
            sizes = {b: len(m) for b, m in enumerate(self.members) if len(m)}
            raise ValueError(f"no bucket holds a full global batch of {global_batch} records "
                             f"(records per bucket: {sizes}); lower the batch size or use fewer buckets")
        self._cache = (-1, None)  # (epoch, plan): one attribute, so reader threads see a consistent pair

    def _epoch_plan(self, epoch: int):
        cached_epoch, plan = self._cache
        if epoch != cached_epoch:
            slots = np.repeat(np.arange(len(self.members)), self.batches_per_bucket)
            slots = np.random.default_rng([self.seed, epoch]).permutation(slots)
            within = np.zeros_like(slots)
            seen = np.zeros(len(self.members), np.int64)
            for i, b in enumerate(slots):
                within[i], seen[b] = seen[b], seen[b] + 1
            perms = [np.random.default_rng([self.seed, epoch, b + 1]).permutation(m) if len(m) else m
                     for b, m in enumerate(self.members)]
            plan = (slots, within, perms)
            self._cache = (epoch, plan)
        return plan

    def batch(self, k: int) -> Tuple[int, np.ndarray]:
        """(bucket index, int64 record indices [global_batch]) of global batch ``k``."""
        epoch, slot = divmod(int(k), self.steps_per_epoch)
        slots, within, perms = self._epoch_plan(epoch)
        b, j = int(slots[slot]), int(within[slot])
        return b, perms[b][j * self.global_batch:(j + 1) * self.global_batch]

    def bucket_order(self, k: int, bucket: int) -> np.ndarray:
        """int64 [records of ``bucket``]: the bucket's record order in the epoch of global batch ``k``."""
        return self._epoch_plan(int(k) // self.steps_per_epoch)[2][bucket]

    def records_per_epoch(self) -> int:
        """Records used per epoch (each bucket's remainder is left out)."""
        return self.steps_per_epoch * self.global_batch
