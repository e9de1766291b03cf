"""Near-duplicate removal by image embeddings and cosine similarity.

``embed_fn`` is any callable mapping a uint8 batch [B, S, S, 3] (each image resized to
``image_size`` x ``image_size``, aspect not kept) to float vectors [B, D] (a CLIP / SigLIP / DINO
image tower, or anything else). Vectors are L2-normalised; a record whose cosine similarity to an
earlier kept record is >= ``threshold`` is dropped as ``near_duplicate_embedding``. The search is
exact (a matrix product against all kept vectors, O(kept x D) per record), fine up to a few
hundred thousand records per run; shard larger corpora or use an ANN index upstream.
"""
from typing import Callable, Iterable, Iterator, List

import numpy as np

from seedream_jax.data.curation.base import Drop, Filter, release, resized_batch


class EmbeddingDedup(Filter):
    """See the module docstring. ``batch_size`` records are embedded per ``embed_fn`` call."""
    name = "dedup_embedding"

    def __init__(self, embed_fn: Callable[[np.ndarray], np.ndarray], threshold: float = 0.95,
                 image_size: int = 224, batch_size: int = 32):
        super().__init__()
        self.embed_fn, self.threshold = embed_fn, float(threshold)
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self._kept = np.zeros((0, 0), np.float32)
        self._n = 0
        self._keys: List[str] = []

    def _add(self, v: np.ndarray, key: str) -> None:
        if self._kept.shape[1] != v.shape[0]:
            if self._n:
                raise ValueError(f"embed_fn changed its output dimension: {self._kept.shape[1]} -> {v.shape[0]}")
            self._kept = np.zeros((64, v.shape[0]), np.float32)
        if self._n == len(self._kept):
            self._kept = np.concatenate([self._kept, np.zeros_like(self._kept)])
        self._kept[self._n] = v
        self._n += 1
        self._keys.append(key)

    def embed(self, batch) -> np.ndarray:
        """Normalised float32 [B, D] embeddings of a list of records."""
        v = np.asarray(self.embed_fn(resized_batch(batch, self.image_size)), np.float32)
        if v.ndim != 2 or len(v) != len(batch):
            raise ValueError(f"embed_fn must return [B={len(batch)}, D] vectors, got shape {v.shape}")
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def _flush(self, batch) -> Iterator:
        for record, v in zip(batch, self.embed(batch)):
            self.stats.seen += 1
            if self._n:
                sims = self._kept[:self._n] @ v
                j = int(np.argmax(sims))
                if sims[j] >= self.threshold:
                    self.stats.drop(record.key, Drop("near_duplicate_embedding",
                                                     f"cosine {sims[j]:.4f} to {self._keys[j]!r}"))
                    release(record)
                    continue
            self._add(v, record.key)
            self.stats.kept += 1
            yield record

    def __call__(self, records: Iterable) -> Iterator:
        batch = []
        for record in records:
            batch.append(record)
            if len(batch) == self.batch_size:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)
