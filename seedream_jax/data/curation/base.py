"""The filter interface of curation: a named stream transform with kept / dropped counts by reason.

A ``Filter`` maps an iterator of ``records.Record`` to the records it keeps (possibly annotated,
e.g. with OCR boxes). Per-record filters implement ``check(record) -> Record | Drop``; filters
that need batches or the whole stream override ``__call__``. Every filter counts what it saw,
kept and dropped (by reason, with a few example keys) in ``self.stats``.

``pixels(record)`` decodes a record's image once (uint8 [H, W, 3], EXIF-oriented) and caches it
on the record so that a chain of filters decodes each image once; ``release(record)`` drops the
cache (the pipeline does it when a record leaves).
"""
import dataclasses
from typing import Dict, Iterable, Iterator, List, Union

import numpy as np

from seedream_jax.data import records as records_lib

_CACHE = "_curation_pixels"
EXAMPLES_PER_REASON = 5


@dataclasses.dataclass(frozen=True)
class Drop:
    """A filter's verdict to drop a record: ``reason`` (report category) and a free-text ``detail``."""
    reason: str
    detail: str = ""


@dataclasses.dataclass
class FilterStats:
    """Counts of one filter: seen, kept, annotated (records it changed), dropped {reason: count};
    ``selection``: its drops are a requested selection (down-sampling), not records found bad."""
    name: str
    seen: int = 0
    kept: int = 0
    annotated: int = 0
    dropped: Dict[str, int] = dataclasses.field(default_factory=dict)
    examples: Dict[str, List[List[str]]] = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    selection: bool = False

    def drop(self, key: str, verdict: Drop) -> None:
        self.dropped[verdict.reason] = self.dropped.get(verdict.reason, 0) + 1
        ex = self.examples.setdefault(verdict.reason, [])
        if len(ex) < EXAMPLES_PER_REASON:
            ex.append([key, verdict.detail])

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "dropped_total": self.dropped_total}


class Filter:
    """Base class: subclasses set ``name`` and implement ``check`` (or override ``__call__``).

    ``selection = True`` marks a filter whose drops are what the user asked for (down-sampling to a
    target): they do not count as skipped records in ``curation.skipped(report)``."""
    name = "filter"
    selection = False

    def __init__(self):
        self.stats = FilterStats(self.name, selection=self.selection)

    def check(self, record: records_lib.Record) -> Union[records_lib.Record, Drop]:
        raise TypeError(f"filter {type(self).__name__} must implement check() or override __call__()")

    def __call__(self, records: Iterable[records_lib.Record]) -> Iterator[records_lib.Record]:
        for record in records:
            self.stats.seen += 1
            verdict = self.check(record)
            if isinstance(verdict, Drop):
                self.stats.drop(record.key, verdict)
                release(record)
                continue
            self.stats.kept += 1
            yield verdict


def pixels(record: records_lib.Record) -> np.ndarray:
    """uint8 [height, width, 3] RGB pixels of the record's image, decoded once and cached on it."""
    cached = record.__dict__.get(_CACHE)
    if cached is None:
        cached = records_lib.decode_image(record.image)
        record.__dict__[_CACHE] = cached
    return cached


def release(record: records_lib.Record) -> None:
    """Drops the cached pixels of ``record``."""
    record.__dict__.pop(_CACHE, None)


def resized_batch(batch: List[records_lib.Record], size: int) -> np.ndarray:
    """uint8 [B, size, size, 3]: each record's pixels resized (bilinear, aspect not kept)."""
    from PIL import Image
    out = np.empty((len(batch), size, size, 3), np.uint8)
    for i, r in enumerate(batch):
        out[i] = np.asarray(Image.fromarray(pixels(r)).resize((size, size), Image.BILINEAR))
    return out
