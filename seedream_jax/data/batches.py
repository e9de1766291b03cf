"""Resumable, deterministic batches over an indexable dataset (the default data path).

Batch ``k`` is a pure function of (seed, k): records come from a per-epoch permutation of the
dataset, and any per-batch randomness (caption language, CFG drop) uses a generator seeded by
(seed, k). The iterator state is therefore just the position, saved in every checkpoint, so
a resumed run sees exactly the batches it would have seen. With several processes, each
builds its slice (rows ``process_index::process_count``) of the global batch.
"""
from typing import Callable, Dict

import jax
import numpy as np

Batch = Dict[str, np.ndarray]


class IndexedBatches:
    """Iterator of global batches built by ``make_batch(indices [b], rng) -> Batch``."""

    def __init__(self, num_records: int, global_batch: int, seed: int,
                 make_batch: Callable[[np.ndarray, np.random.Generator], Batch],
                 process_index: int | None = None, process_count: int | None = None):
        if num_records < global_batch:
            raise ValueError(f"dataset has {num_records} records, fewer than one batch of {global_batch}")
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch % self.process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {self.process_count} processes")
        self.num_records, self.global_batch, self.seed = num_records, global_batch, seed
        self.make_batch = make_batch
        self.steps_per_epoch = num_records // global_batch
        self.position = 0
        self._perm_epoch, self._perm = -1, None

    def indices(self, position: int) -> np.ndarray:
        """Global record indices of batch ``position`` [global_batch]."""
        epoch, within = divmod(position, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
            self._perm_epoch = epoch
        return self._perm[within * self.global_batch:(within + 1) * self.global_batch]

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        idx = self.indices(self.position)[self.process_index::self.process_count]
        rng = np.random.default_rng([self.seed, 1_000_003, self.position, self.process_index])
        self.position += 1
        return self.make_batch(idx, rng)

    def get_state(self) -> dict:
        return {"position": int(self.position), "seed": int(self.seed)}

    def set_state(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"data state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.position = int(state["position"])


class MappedBatches:
    """``source``'s batches passed through ``fn`` (batch -> batch, e.g. tokenising texts); resumes
    exactly as ``source`` does (``get_state``/``set_state`` are its own)."""

    def __init__(self, source, fn: Callable[[Batch], Batch]):
        self.source, self.fn = source, fn

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return self.fn(next(self.source))

    def get_state(self) -> dict:
        return self.source.get_state()

    def set_state(self, state: dict) -> None:
        self.source.set_state(state)


class JoinedBatches:
    """Each batch of ``main`` with the next batch of ``extra`` merged into it (their keys must differ):
    two data streams in one step, e.g. world pairs and a user's pair dataset. Resumes exactly:
    the state holds both positions."""

    def __init__(self, main, extra):
        self.main, self.extra = main, extra

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch, more = next(self.main), next(self.extra)
        clash = sorted(set(batch) & set(more))
        if clash:
            raise ValueError(f"joined batches share the keys {clash}")
        return {**batch, **more}

    def get_state(self) -> dict:
        return {"main": self.main.get_state(), "extra": self.extra.get_state()}

    def set_state(self, state: dict) -> None:
        self.main.set_state(state["main"])
        self.extra.set_state(state["extra"])
