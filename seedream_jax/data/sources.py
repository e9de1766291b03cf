"""Data sources by format name (``data.format``): how every stage opens its data section.

    source = sources.open_source(data_cfg, workdir, global_batch)  # data_cfg: config_lib.data_section(...)
    batch = next(source)
    state = source.get_state()      # JSON, saved in every checkpoint by the training loop
    fresh.set_state(state)          # a fresh source of the same config goes on with the same batches

Every source is a training-loop ``DataSource`` (``__next__``, ``get_state``, ``set_state``) and
yields this process's rows (``process_index::process_count``) of each global batch, b of them:

  format       yields   one batch
  synthetic    images   {"image": float32 [b, H, W, 3] in [-1, 1] (or "latent_mean", "latent_logvar":
                         float32 [b, h, w, C] given ``encode``), "caption": [str] * b, "index": int64 [b]}
  arrayrecord  images   the Grain pipeline's batches (``data/pipeline.py``): the same keys, with the
                         latent cache's posteriors and the text cache's outputs when given those
  prompts      prompts  {"prompt": [str] * b}
  pairs        pairs    {"prompt": [str] * b, "chosen": [str] * b, "rejected": [str] * b}
  image_pairs  image_pairs
                        {"prompt": [str] * b, "chosen": uint8 [b, S, S, 3], "rejected": uint8 [b, S, S, 3],
                         "index": int64 [b]}, S = ``data.image_size``: a pair dataset (``data/preference.py``)
  text         text     {"prompt": [str] * b, "rewrite": [str] * b, "language": [str] * b, "direction": [str] * b}:
                         prompt -> rewrite pairs (``data/rewrite_pairs.py``), the world's or a JSONL file's

An ``images`` (and ``image_pairs``) source takes ``batch_fn`` (batch -> batch, e.g. tokenising the
captions, applied to each batch) and has ``image_size`` (height, width): the base size a model
initialises at. A stage
names what it reads (``lookup(name, yields='images')``), so a wrong format fails before anything
loads, naming the formats that would do; ``register`` adds a format (a user's module can add its own).

``prompts`` (from a file), ``pairs`` and ``text`` read a UTF-8 file whole at open (Chinese and
English alike). A JSONL row that is not valid JSON, not an object, or lacks one of its fields as a
non-empty string is skipped and counted by reason (``source.skipped``: {reason: count}), a summary
is logged, and a file with no usable row raises ValueError naming it. Their rows cycle epoch after
epoch (``RowBatches``), each epoch a seeded shuffle; the state is the batch position.
"""
import dataclasses
import functools
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import jax
import numpy as np

from seedream_jax.data import arrayrecord_io, augment, preference, records, synthetic
from seedream_jax.data import rewrite_pairs as pairs_lib
from seedream_jax.data import style_tags as style_tags_lib
from seedream_jax.data.batches import IndexedBatches
from seedream_jax.data.captions import choose_captions
from seedream_jax.data.pipeline import PipelineConfig, RecordPipeline
from seedream_jax.data.text_files import BAD_UTF8, read_jsonl, text_lines

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """A registered format: ``open(data_cfg, workdir, global_batch, **options) -> DataSource`` and
    what its batches hold (``yields``: 'images', 'prompts', 'pairs', 'text' or a user's own word)."""
    name: str
    yields: str
    open: Callable


_FORMATS: Dict[str, SourceFormat] = {}


def register(name: str, yields: str):
    """Decorator: registers ``open`` (a function or class) as format ``name`` yielding ``yields``."""
    def add(open_fn):
        if name in _FORMATS:
            raise ValueError(f"data source format {name!r} is already registered")
        _FORMATS[name] = SourceFormat(name, yields, open_fn)
        return open_fn
    return add


def known_formats(yields: Optional[str] = None) -> List[str]:
    """Names of the registered formats (those yielding ``yields`` if given)."""
    return sorted(n for n, f in _FORMATS.items() if yields is None or f.yields == yields)


def lookup(name: str, yields: Optional[str] = None) -> SourceFormat:
    """The format ``name``; ValueError naming the known formats when it is unknown, or naming those
    yielding ``yields`` when it yields something else."""
    if name not in _FORMATS:
        raise ValueError(f"data.format must be one of {known_formats()}, got {name!r}")
    fmt = _FORMATS[name]
    if yields is not None and fmt.yields != yields:
        raise ValueError(f"data.format={name!r} yields {fmt.yields}, but this stage reads {yields}: "
                         f"use one of {known_formats(yields)}")
    return fmt


def open_source(data_cfg, workdir: str, global_batch: int, *, yields: Optional[str] = None, **options):
    """The source of ``data_cfg.format`` (``lookup``) over ``data_cfg``, relative paths inside ``workdir``."""
    return lookup(str(data_cfg.format), yields).open(data_cfg, workdir, int(global_batch), **options)


# ---- images

@register("synthetic", yields="images")
class SyntheticImages(IndexedBatches):
    """The in-memory synthetic world of ``data.dir`` (``synthetic.write_dataset``), shuffled by
    ``IndexedBatches`` with ``data.seed``: images in [-1, 1], or with ``encode`` (uint8 [N, H, W, 3]
    -> (mean, logvar) float32 [N, h, w, C], run once over the whole world at open) their
    posteriors, and one caption per image drawn with the section's ratios (``choose_captions``).
    With ``style_tags`` a batch also holds ``style_tags`` int32 [b, A] of each record's style
    (``style_tags.from_spec``; zeros for unstyled scenes)."""

    def __init__(self, data_cfg, workdir: str, global_batch: int, *, batch_fn: Optional[Callable] = None,
                 encode: Optional[Callable] = None, style_tags: bool = False):
        self.images, self.records = synthetic.load_dataset(os.path.join(workdir, data_cfg.dir))
        self.latents = encode(self.images) if encode is not None else None
        self.image_size = tuple(self.images.shape[1:3])
        self.data_cfg, self.batch_fn = data_cfg, batch_fn
        self.tags = np.stack([style_tags_lib.from_spec(r.get("spec")) for r in self.records]) if style_tags else None
        super().__init__(len(self.images), int(global_batch), int(data_cfg.seed), self._make_batch)

    def _make_batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict:
        idx = np.sort(idx)
        captions = choose_captions([self.records[i]["captions"] for i in idx], rng, self.data_cfg)
        if self.latents is None:
            pixels = {"image": np.asarray(self.images[idx]).astype(np.float32) / 127.5 - 1.0}
        else:
            pixels = {"latent_mean": self.latents[0][idx], "latent_logvar": self.latents[1][idx]}
        batch = {**pixels, "caption": captions, "index": idx}
        if self.tags is not None:
            batch["style_tags"] = self.tags[idx]
        return self.batch_fn(batch) if self.batch_fn is not None else batch


def record_stream(data_cfg, workdir: str) -> Iterator[records.Record]:
    """Every record of an image data section, in order: the synthetic world of ``data.dir``
    (``format='synthetic'``, each image as a PNG record with its captions and scene spec) or the
    ArrayRecord dataset of ``data.path`` (``format='arrayrecord'``, decoded records)."""
    fmt = str(data_cfg.format)
    if fmt == "synthetic":
        from seedream_jax.data.synthetic_records import png_bytes
        images, recs = synthetic.load_dataset(os.path.join(workdir, data_cfg.dir))
        for i, (image, rec) in enumerate(zip(images, recs)):
            yield records.Record(key=f"synthetic/{i:08d}", image=png_bytes(np.asarray(image)), image_format="png",
                                 width=int(image.shape[1]), height=int(image.shape[0]), captions=rec["captions"],
                                 source="synthetic", spec=rec.get("spec"), meta={"world_index": i})
    elif fmt == "arrayrecord":
        yield from arrayrecord_io.ArrayRecordSource(arrayrecord_path(data_cfg, workdir), decode=True)
    else:
        raise ValueError(f"data.format must be 'synthetic' or 'arrayrecord' (images with captions), got {fmt!r}")


def arrayrecord_path(data_cfg, workdir: str,
                     made_by: str = "tools/ingest.py, tools/curate.py or tools/make_synthetic.py --format arrayrecord"
                     ) -> str:
    """The ArrayRecord dataset of ``data.path`` (inside ``workdir`` when relative); ``made_by`` names the
    tools that write one in the error for an empty ``data.path``."""
    if not data_cfg.path:
        raise ValueError(f"data.format = {str(data_cfg.format)!r} needs data.path: a dataset written by {made_by}")
    return os.path.join(workdir, data_cfg.path)


def pipeline_config(data_cfg, global_batch: int) -> PipelineConfig:
    """``PipelineConfig`` of a data section (base resolution ``data.image_size``)."""
    d = data_cfg
    return PipelineConfig(
        global_batch=int(global_batch), seed=int(d.seed), base_resolution=int(d.image_size),
        bucket_multiple=int(d.bucket_multiple), bucket_max_ratio=float(d.bucket_max_ratio),
        random_crop=bool(d.random_crop), flip_prob=float(d.flip_prob), num_workers=int(d.num_workers),
        caption_languages=tuple(d.caption_languages),
        language_probs=tuple(d.language_probs), caption_types=tuple(d.caption_types),
        caption_type_probs=tuple(d.caption_type_probs), cfg_drop_prob=float(d.cfg_drop_prob))


@register("arrayrecord", yields="images")
def arrayrecord_images(data_cfg, workdir: str, global_batch: int, *, batch_fn: Optional[Callable] = None,
                       cache=None, text_cache=None, style_tags: bool = False) -> RecordPipeline:
    """The Grain pipeline over the ArrayRecord dataset ``data.path``, bucketed around ``data.image_size``;
    ``cache`` (``latent_cache.LatentCache``) and ``text_cache`` (``text_cache.TextCache``) as there;
    ``style_tags``: batches also hold each record's ``style_tags`` int32 [b, A] (from its spec)."""
    source = arrayrecord_io.ArrayRecordSource(arrayrecord_path(data_cfg, workdir))
    return RecordPipeline(source, pipeline_config(data_cfg, global_batch), batch_fn=batch_fn, cache=cache,
                          text_cache=text_cache, style_tags=style_tags)


# ---- image preference pairs

@register("image_pairs", yields="image_pairs")
class ImagePairs(IndexedBatches):
    """Image preference pairs of the pair dataset ``data.path`` (``tools/ingest.py`` of a preference
    file, ``data/preference.py``), shuffled by ``IndexedBatches`` with ``data.seed``: batches
    {"prompt": [str] * b, "chosen", "rejected": uint8 [b, S, S, 3], "index": int64 [b]} (record
    indices), S = ``data.image_size``. Each image is fit as the image sources fit theirs
    (``augment.fit_to_bucket``: scale to cover, then a random crop when ``data.random_crop``, else
    centred, and ``data.flip_prob``), both images of a pair with the same draws. A record that does not
    decode is logged, counted (``skipped``) and replaced by the next record of the dataset. The state
    is the batch position (``get_state``: position, seed, num_records)."""

    max_bad_in_a_row = 16

    def __init__(self, data_cfg, workdir: str, global_batch: int, *, batch_fn: Optional[Callable] = None):
        path = arrayrecord_path(data_cfg, workdir, "tools/ingest.py from a preference file (data/preference.py)")
        self.source = arrayrecord_io.ArrayRecordSource(path)
        if len(self.source):
            try:
                preference.decode_pair_header(self.source[0])
            except records.RecordError as e:
                raise ValueError(f"data.path {path} does not hold preference pairs ({e}); ingest a preference "
                                 "file with tools/ingest.py (data.format='arrayrecord' reads image datasets)") from None
        size = int(data_cfg.image_size)
        self.image_size = (size, size)
        self.random_crop, self.flip_prob = bool(data_cfg.random_crop), float(data_cfg.flip_prob)
        self.batch_fn, self.skipped = batch_fn, 0
        super().__init__(len(self.source), int(global_batch), int(data_cfg.seed), self._make_batch)

    def _load(self, index: int):
        """(record index, prompt, chosen uint8 [H, W, 3], rejected uint8 [H', W', 3]) of ``index``, or of
        the next record that decodes (each failure logged and counted in ``skipped``)."""
        for attempt in range(self.max_bad_in_a_row + 1):
            i = (index + attempt) % self.num_records
            try:
                pair = preference.decode_pair(self.source[i])
                images = [records.decode_image(r.image) for r in (pair.chosen, pair.rejected)]
                return (i, pair.prompt, *images)
            except Exception as e:  # corrupt record or undecodable image: count, replace
                logging.warning("data: skipping pair record %d (%s: %s)", i, type(e).__name__, e)
                self.skipped += 1
        raise RuntimeError(f"data: pair record {index} and the {self.max_bad_in_a_row} after it failed to decode; "
                           "check the dataset")

    def _fit(self, image: np.ndarray, seed: int) -> np.ndarray:
        """uint8 [H, W, 3] -> uint8 [S, S, 3] with the draws of ``seed`` (one seed per pair)."""
        return augment.fit_to_bucket(image, self.image_size, np.random.default_rng(seed), self.random_crop,
                                     self.flip_prob)

    def _make_batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict:
        rows = [self._load(int(i)) for i in idx]
        seeds = rng.integers(2 ** 63, size=len(rows))
        batch = {"prompt": [r[1] for r in rows],
                 "chosen": np.stack([self._fit(r[2], seed) for r, seed in zip(rows, seeds)]),
                 "rejected": np.stack([self._fit(r[3], seed) for r, seed in zip(rows, seeds)]),
                 "index": np.asarray([r[0] for r in rows], np.int64)}
        return self.batch_fn(batch) if self.batch_fn is not None else batch

    def get_state(self) -> dict:
        return {**super().get_state(), "num_records": int(self.num_records)}

    def set_state(self, state: dict) -> None:
        if int(state.get("num_records", self.num_records)) != self.num_records:
            raise ValueError(f"data state was saved with num_records={state['num_records']}, this dataset has "
                             f"{self.num_records}: resuming would not continue with the same pairs")
        super().set_state(state)


# ---- rows of text: prompts, preference pairs, rewrite pairs

class RowBatches:
    """Resumable batches of rows ({field: str}): global batch k holds rows [kB, (k+1)B) of the
    endless sequence perm_0 + perm_1 + ..., perm_e = ``default_rng([seed, e]).permutation(N)``, so
    each row comes once per epoch and a list shorter than a batch still fills one. Yields
    {field: [str] * b}. ``skipped``: {reason: count} of the rows left out when reading."""

    def __init__(self, rows: Sequence[dict], fields: Sequence[str], global_batch: int, seed: int,
                 skipped: Optional[Dict[str, int]] = None, process_index: Optional[int] = None,
                 process_count: Optional[int] = None):
        if process_index is None or process_count is None:
            process_index, process_count = jax.process_index(), jax.process_count()
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.rows, self.fields, self.global_batch, self.seed = list(rows), tuple(fields), int(global_batch), int(seed)
        self.skipped = dict(skipped or {})
        self.process_index, self.process_count = process_index, process_count
        self.position = 0
        n = len(self.rows)
        self._permutation = functools.lru_cache(maxsize=4)(
            lambda epoch: np.random.default_rng([self.seed, epoch]).permutation(n))

    def indices(self, position: int) -> np.ndarray:
        """Row indices of global batch ``position`` [global_batch]."""
        epoch, offset = divmod(position * self.global_batch, len(self.rows))
        parts, need = [], self.global_batch
        while need:
            part = self._permutation(epoch)[offset:offset + need]
            parts.append(part)
            need, epoch, offset = need - len(part), epoch + 1, 0
        return np.concatenate(parts)

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, List[str]]:
        idx = self.indices(self.position)[self.process_index::self.process_count]
        self.position += 1
        return {f: [self.rows[i][f] for i in idx] for f in self.fields}

    def get_state(self) -> dict:
        return {"position": int(self.position), "seed": self.seed, "num_rows": len(self.rows)}

    def set_state(self, state: dict) -> None:
        for key, mine in (("seed", self.seed), ("num_rows", len(self.rows))):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"data state was saved with {key}={state[key]}, this source has {key}={mine}: "
                                 "resuming would not continue with the same rows")
        self.position = int(state["position"])


def _text_file(data_cfg, workdir: str) -> str:
    if not data_cfg.path:
        raise ValueError(f"data.format = {data_cfg.format!r} needs data.path (a UTF-8 text or JSONL file)")
    path = os.path.join(workdir, data_cfg.path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.path: {path} does not exist")
    return path


def _row_batches(rows, skipped, where: str, fields, data_cfg, global_batch: int) -> RowBatches:
    """``RowBatches`` of ``rows`` after logging what was read and skipped from ``where``."""
    if skipped:
        logging.warning("data: %s: %d rows, skipped %d (%s)", where, len(rows), sum(skipped.values()),
                        ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())))
    else:
        logging.info("data: %s: %d rows", where, len(rows))
    if not rows:
        raise ValueError(f"data: {where} has no usable {data_cfg.format} rows (skipped: {skipped})")
    return RowBatches(rows, fields, global_batch, int(data_cfg.seed), skipped)


@register("prompts", yields="prompts")
def prompt_batches(data_cfg, workdir: str, global_batch: int) -> RowBatches:
    """Prompts for sampling and online RL: ``data.prompts`` or the file ``data.path`` (a ``.jsonl``
    file's ``prompt`` field per row, else one prompt per non-empty line); batches {"prompt": [str] * b}."""
    if data_cfg.prompts and data_cfg.path:
        raise ValueError("data.format = 'prompts': give data.prompts or data.path, not both")
    if data_cfg.prompts:
        rows, skipped, where = [{"prompt": str(p)} for p in data_cfg.prompts], {}, "data.prompts"
    else:
        where = _text_file(data_cfg, workdir)
        if where.endswith(".jsonl"):
            rows, skipped = read_jsonl(where, ("prompt",))
        else:
            lines, bad = text_lines(where)
            rows, skipped = [{"prompt": line.strip()} for line in lines if line and line.strip()], {}
            if bad:
                skipped[BAD_UTF8] = bad
    return _row_batches(rows, skipped, where, ("prompt",), data_cfg, global_batch)


@register("pairs", yields="pairs")
def preference_pairs(data_cfg, workdir: str, global_batch: int) -> RowBatches:
    """Preference pairs of the JSONL file ``data.path``, rows {"prompt", "chosen", "rejected"}.

    ``chosen``/``rejected`` are both texts or both image paths (by extension, ``IMAGE_EXTENSIONS``;
    relative to the file's folder, yielded absolute). Besides the JSONL reasons, a row is skipped
    for "chosen equals rejected", "mixes an image and a text" and "missing image file".
    Batches {"prompt", "chosen", "rejected": [str] * b}."""
    path = _text_file(data_cfg, workdir)
    folder = os.path.dirname(path)

    def check(row):
        if row["chosen"] == row["rejected"]:
            return None, "chosen equals rejected"
        images = [row[k].lower().endswith(IMAGE_EXTENSIONS) for k in ("chosen", "rejected")]
        if images[0] != images[1]:
            return None, "mixes an image and a text"
        if images[0]:
            row = dict(row, **{k: os.path.join(folder, row[k]) for k in ("chosen", "rejected")})
            if not all(os.path.isfile(row[k]) for k in ("chosen", "rejected")):
                return None, "missing image file"
        return row, None

    fields = ("prompt", "chosen", "rejected")
    rows, skipped = read_jsonl(path, fields, check)
    return _row_batches(rows, skipped, path, fields, data_cfg, global_batch)


@register("text", yields="text")
def rewrite_pairs(data_cfg, workdir: str, global_batch: int) -> RowBatches:
    """Prompt -> rewrite pairs for the prompt rewriter (``data/rewrite_pairs.py``): ``data.path =
    "world"`` for the synthetic world's train pairs, else a JSONL file of {"prompt", "rewrite",
    "language" (optional)} rows; batches of its ``FIELDS``, {"prompt", "rewrite", "language",
    "direction": [str] * b}."""
    if str(data_cfg.path) == pairs_lib.WORLD:
        rows, skipped, where = pairs_lib.world_rows(data_cfg), {}, "the synthetic world's rewrite pairs"
    else:
        where = _text_file(data_cfg, workdir)
        rows, skipped = pairs_lib.read_pairs(where)
    return _row_batches(rows, skipped, where, pairs_lib.FIELDS, data_cfg, global_batch)
