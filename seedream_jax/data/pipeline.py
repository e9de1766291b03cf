"""The Grain input pipeline over a random-access record source (ArrayRecord, TFDS, in memory).

    source = arrayrecord_io.ArrayRecordSource("data/world")          # or tfds_builder.data_source(...)
    pipe = RecordPipeline(source, PipelineConfig(global_batch=32, base_resolution=256, num_workers=4))
    batch = next(pipe)   # {"image": float32 [32 / P, h, w, 3] in [-1, 1], "caption": str [32 / P], "index": int64}

What happens, per global batch ``k`` (all processes agree on it without communicating):

1. plan (``batch_plan.BucketBatchPlan``): every record is assigned to the aspect-ratio bucket of
   its width/height (bucket table of ``base_resolution``, ``buckets.aspect_ratio_buckets``); batch
   ``k`` is ``global_batch`` records of one bucket, shuffled by ``seed`` epoch after epoch.
2. shard: process ``p`` of ``P`` (``jax.process_index()/process_count()`` unless given) takes rows
   ``p::P``; the process shards are disjoint and cover the global batch, and the loop assembles
   them with ``jax.make_array_from_process_local_data``.
3. per record, in Grain reader threads (``num_workers``; 0 = inline): read, check
   (``records.decode_record``), decode the image, fit it to the bucket (``augment.fit_to_bucket``:
   scale to cover, random or centre crop, optional flip) and choose its caption
   (``captions.choose_caption_pairs``: language/type ratios, CFG drop). Randomness comes from ``default_rng([seed, k, row])`` of the global row, so a record's
   crop and caption do not depend on the number of processes or workers.
4. batch: the per-process rows are stacked; ``batch_fn`` (e.g. tokenisation) runs on the stacked
   batch in the consumer.

A record that fails its check or image decode is logged and replaced by the next record of its
bucket in the bucket's epoch order (``skipped`` counts the replacements in the batches yielded so
far; each example carries its own count, so prefetching does not inflate it), so batches keep their size and stay
deterministic; a source where more than ``max_bad_in_a_row`` consecutive replacements fail raises.

With a latent cache (``latent_cache.LatentCache``: precomputed VAE posteriors at each record's
bucket with the centre crop) the image is not decoded: the batch holds ``latent_mean`` and
``latent_logvar`` [b, h/f, w/f, C] instead of ``image``, and random crop/flip do not apply.
With a text cache (``text_cache.TextCache``: the frozen conditioner's outputs per record and
caption) the batch also holds ``text_context`` [b, L, D], ``text_mask`` [b, L] and
``text_pooled`` [b, D] of the drawn caption (the empty prompt's where it is dropped for CFG);
the draws are the same as without the cache.

State (``get_state``): ``{"position": k, "seed", "global_batch", "num_records"}`` (JSON). After
``set_state`` the pipeline yields exactly the batches from ``k`` on, whatever was prefetched.
"""
import dataclasses
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import grain
import numpy as np

from seedream_jax.data import augment, batch_plan, buckets as buckets_lib, captions as captions_lib
from seedream_jax.data import records as records_lib
from seedream_jax.data import style_tags as style_tags_lib

Batch = Dict[str, np.ndarray]
_AUGMENT, _CAPTION = 1, 2  # rng stream tags


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of ``RecordPipeline``.

    global_batch: records per step over all processes. seed: shuffling/augmentation seed.
    base_resolution: side (px) of the square whose area every bucket approximates.
    bucket_multiple: bucket sides are multiples of this (VAE factor x patch size or more).
    bucket_max_ratio: most extreme aspect ratio kept (1.0 = square images only).
    random_crop: random offset when cropping to the bucket (else centred). flip_prob: chance of
    a horizontal flip (0: captions name left/right and text). num_workers: Grain reader threads
    decoding in parallel (0 = inline). prefetch: batches decoded ahead per process.
    caption_*: caption sampling, as in the ``data`` config (``captions.py``).
    """
    global_batch: int
    seed: int = 0
    base_resolution: int = 256
    bucket_multiple: int = 32
    bucket_max_ratio: float = 3.0
    random_crop: bool = True
    flip_prob: float = 0.0
    num_workers: int = 0
    prefetch: int = 2
    caption_languages: Tuple[str, ...] = ("en", "zh")
    language_probs: Tuple[float, ...] = (0.5, 0.5)
    caption_types: Tuple[str, ...] = ("short", "long")
    caption_type_probs: Tuple[float, ...] = (0.5, 0.5)
    cfg_drop_prob: float = 0.1
    max_bad_in_a_row: int = 16

    def __post_init__(self):
        if self.global_batch < 1 or self.num_workers < 0:
            raise ValueError(f"need global_batch >= 1 and num_workers >= 0, got {self.global_batch}, {self.num_workers}")

    def bucket_table(self) -> List[Tuple[int, int]]:
        """(height, width) buckets of ``base_resolution`` (``buckets.aspect_ratio_buckets``)."""
        table = buckets_lib.aspect_ratio_buckets(self.base_resolution, self.bucket_multiple, self.bucket_max_ratio)
        if not table:
            raise ValueError(f"no bucket for base_resolution {self.base_resolution}, multiple {self.bucket_multiple}")
        return table


def record_sizes(source, chunk: int = 512) -> List[Tuple[int, int]]:
    """(height, width) of every record of an encoded-record source, from the headers only."""
    sizes = []
    for start in range(0, len(source), chunk):
        indices = list(range(start, min(start + chunk, len(source))))
        items = source.__getitems__(indices) if hasattr(source, "__getitems__") else [source[i] for i in indices]
        for data in items:
            header = records_lib.decode_header(data)
            sizes.append((int(header["height"]), int(header["width"])))
    return sizes


class _Positions:
    """The endless sequence 0, 1, 2, ... of a process's example slots (Grain source)."""

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, i: int) -> int:
        return int(i)


class _LoadExample:
    """Example slot -> one training example (called from Grain reader threads)."""

    def __init__(self, source, plan: batch_plan.BucketBatchPlan, table, cfg: PipelineConfig,
                 process_index: int, process_count: int, cache=None, text_cache=None, style_tags: bool = False):
        self.source, self.plan, self.table, self.cfg = source, plan, table, cfg
        self.style_tags = style_tags
        self.process_index, self.process_count, self.cache = process_index, process_count, cache
        self.text_cache = text_cache
        self.local_batch = cfg.global_batch // process_count

    def _load(self, i: int):
        data = self.source[i]
        if self.cache is not None:
            return records_lib.decode_header(data), None
        rec = records_lib.decode_record(data)
        return rec.__dict__, records_lib.decode_image(rec.image)

    def _read(self, bucket: int, index: int, k: int):
        """(record index, header dict, uint8 image or None, records skipped) of ``index``, or of the
        next good record of its bucket (in the bucket's epoch order) where it is corrupt."""
        try:
            return (index, *self._load(index), 0)
        except Exception as e:  # corrupt record or undecodable image: count, replace
            logging.warning("data: skipping record %d (%s: %s)", index, type(e).__name__, e)
        order = self.plan.bucket_order(k, bucket)
        at = int(np.flatnonzero(order == index)[0])
        for attempt in range(1, min(self.cfg.max_bad_in_a_row, len(order) - 1) + 1):
            i = int(order[(at + attempt) % len(order)])
            try:
                return (i, *self._load(i), attempt)
            except Exception as e:
                logging.warning("data: skipping record %d (%s: %s)", i, type(e).__name__, e)
        raise RuntimeError(f"data: record {index} and the {self.cfg.max_bad_in_a_row} records after it in bucket "
                           f"{self.table[bucket]} failed to decode; check the dataset")

    def __call__(self, slot: int) -> dict:
        k, local_row = divmod(int(slot), self.local_batch)
        row = self.process_index + local_row * self.process_count
        bucket, indices = self.plan.batch(k)
        index, header, image, skipped = self._read(bucket, int(indices[row]), k)
        pair = captions_lib.choose_caption_pairs([header["captions"]], np.random.default_rng(
            [self.cfg.seed, _CAPTION, k, row]), self.cfg, keys=[header["key"]])[0]
        caption = "" if pair is None else header["captions"][pair[0]][pair[1]]
        out = {"caption": np.asarray(caption), "index": np.int64(index), "skipped": np.int32(skipped)}
        if self.style_tags:
            out["style_tags"] = style_tags_lib.from_spec(header.get("spec"))
        if self.text_cache is not None:
            context, mask, pooled = self.text_cache.conditioning(index, pair)
            out.update(text_context=context, text_mask=mask, text_pooled=pooled)
        if self.cache is not None:
            mean, logvar = self.cache.posterior(index, self.table[bucket])
            return {**out, "latent_mean": mean, "latent_logvar": logvar}
        fitted = augment.fit_to_bucket(image, self.table[bucket], np.random.default_rng([self.cfg.seed, _AUGMENT, k, row]),
                                       random_crop=self.cfg.random_crop, flip_prob=self.cfg.flip_prob)
        return {**out, "image": fitted.astype(np.float32) / 127.5 - 1.0}


class RecordPipeline:
    """Per-process batches of a random-access source of encoded records (module docstring).

    Implements the training loop's ``DataSource`` (``__next__``, ``get_state``, ``set_state``).

    Args:
      source: ``len`` + ``__getitem__`` (+ optionally ``__getitems__``) returning encoded record bytes
        (``ArrayRecordSource``, ``tfds_builder.TfdsRecordSource``, a list of bytes).
      cfg: ``PipelineConfig``.
      process_index, process_count: this process's shard (default: ``jax.process_index()`` /
        ``jax.process_count()``).
      batch_fn: optional ``Batch -> Batch`` applied to each stacked per-process batch.
      sizes: (height, width) per record if known (else read from the record headers once).
      cache: an optional ``latent_cache.LatentCache`` matching ``source``.
      text_cache: an optional ``text_cache.TextCache`` matching ``source``.
      style_tags: batches also hold ``style_tags`` int32 [b, A] of each record's spec
        (``style_tags.from_spec``: the aesthetic adapter's tags; zeros without a style).
    """

    def __init__(self, source, cfg: PipelineConfig, process_index: Optional[int] = None,
                 process_count: Optional[int] = None, *, batch_fn: Optional[Callable[[Batch], Batch]] = None,
                 sizes: Optional[Sequence[Tuple[int, int]]] = None, cache=None, text_cache=None,
                 style_tags: bool = False):
        if process_index is None or process_count is None:
            import jax
            process_index, process_count = jax.process_index(), jax.process_count()
        if cfg.global_batch % process_count:
            raise ValueError(f"global batch {cfg.global_batch} is not divisible by {process_count} processes")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if cache is not None:
            cache.check_matches(source, cfg)
        if text_cache is not None:
            text_cache.check_matches(source)
        self.source, self.cfg, self.batch_fn = source, cfg, batch_fn
        self.process_index, self.process_count = process_index, process_count
        self.bucket_table = cfg.bucket_table()
        sizes = record_sizes(source) if sizes is None else sizes
        if len(sizes) != len(source):
            raise ValueError(f"{len(sizes)} sizes for a source of {len(source)} records")
        self.bucket_ids = batch_plan.assign_buckets(sizes, self.bucket_table)
        self.plan = batch_plan.BucketBatchPlan(self.bucket_ids, len(self.bucket_table), cfg.global_batch, cfg.seed)
        self.local_batch = cfg.global_batch // process_count
        self._load = _LoadExample(source, self.plan, self.bucket_table, cfg, process_index, process_count, cache,
                                  text_cache, style_tags)
        self.position = 0
        self.skipped = 0  # records replaced because they failed to decode, in the batches yielded so far
        self._iter = None

    @property
    def image_size(self) -> Tuple[int, int]:
        """(height, width) of the square base bucket (``base_resolution``), the shape a model initialises at."""
        return (self.cfg.base_resolution, self.cfg.base_resolution)

    def bucket_of(self, k: int) -> Tuple[int, int]:
        """(height, width) of global batch ``k``."""
        return self.bucket_table[self.plan.batch(k)[0]]

    def _start(self) -> None:
        cfg = self.cfg
        slots = grain.MapDataset.source(_Positions())[self.position * self.local_batch:].map(self._load)
        threads = cfg.num_workers
        ds = slots.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                     prefetch_buffer_size=cfg.prefetch * self.local_batch if threads else 0))
        self._iter = iter(ds.batch(self.local_batch))

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._iter is None:
            self._start()
        batch = dict(next(self._iter))
        self.skipped += int(batch.pop("skipped").sum())
        self.position += 1
        return self.batch_fn(batch) if self.batch_fn is not None else batch

    def get_state(self) -> dict:
        return {"position": int(self.position), "seed": int(self.cfg.seed),
                "global_batch": int(self.cfg.global_batch), "num_records": len(self.source)}

    def set_state(self, state: dict) -> None:
        for key, mine in (("seed", self.cfg.seed), ("global_batch", self.cfg.global_batch),
                          ("num_records", len(self.source))):
            if key in state and int(state[key]) != int(mine):
                raise ValueError(f"data state was saved with {key}={state[key]}, this pipeline has {key}={mine}: "
                                 "resuming would not continue with the same records")
        self.position = int(state["position"])
        self._iter = None

    def close(self) -> None:
        """Drops the running Grain iterator (its reader threads)."""
        self._iter = None
