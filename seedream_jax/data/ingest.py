"""Ingestion: turn an image-text corpus in any of the forms of ``data/ingest_sources.py`` (a folder
with sidecars, a Hugging Face imagefolder or Parquet shards, a JSONL/CSV manifest, WebDataset or
img2dataset output, COCO captions) into a record dataset, or preference pairs (JSONL / Parquet,
``data/preference.py``) into a pair dataset.

``ingest(kind, paths, out_dir, config)`` enumerates the input (``data/ingest_sources.py``),
checks every item in a worker pool (``check_item``; ``check_pair`` for a preference row, whose two
images get the same checks), writes the good ones as records (``data/records.py``; pair records
of ``data/preference.py``) into a sharded ArrayRecord dataset (``data/arrayrecord_io.py``) in
input order, and returns a report. Bad items are skipped and counted by reason, never fatal:

=====================  =============================================================
reason                 meaning
=====================  =============================================================
missing_file           the image path does not exist / a sidecar or sample has no image /
                       a row's image column is empty
remote_url             a row (or sample) has only a ``url``, no local image (nothing is downloaded)
read_error             the file exists but cannot be read (permissions, I/O error)
empty_file             zero-byte image
bad_utf8               a caption sidecar, manifest line or row field is not valid UTF-8
bad_sidecar            a caption JSON / manifest field is malformed
bad_manifest_row       a manifest line is not a JSON object, or a row has no image column
                       (an unknown column layout: the detail names its columns)
missing_field          a preference row lacks prompt, image_a, image_b or preferred (absent,
                       null or empty; the detail names its columns)
unknown_label          a preference row's ``preferred`` is not a / b (or A / B)
corrupt_tar            a WebDataset tar is truncated or corrupt (its earlier samples are kept)
missing_caption        no caption at all (an imagefolder image that no metadata row names)
empty_caption          a caption that is empty or only whitespace
unsupported_format     not JPEG, PNG or WebP (by magic bytes)
undecodable            the image does not decode fully (truncated, corrupt)
decoder_crash          decoding the image killed the worker process (pool="process" only)
too_large              more than ``max_pixels`` pixels
too_small              shorter side below ``min_side`` pixels
bad_aspect             longer / shorter side above ``max_aspect``
same_image             a preference row's two images are the same bytes
invalid_record         anything else the record schema rejects (e.g. a bad language code)
internal_error         an unexpected exception while checking the item (message in the report)
=====================  =============================================================

Checks run in that order of cost: file, captions, format, decode, size (for a pair: the row, then
image A, then image B, then whether they differ). The image bytes of a good item are stored exactly
as read. A rerun after an interruption resumes after the last finished shard (the resume state
holds the number of input items consumed and the counts so far), so the result and the report
equal those of an uninterrupted run. The report is printed as a table and
saved as ``<out_dir>/ingest_report.json`` and in the manifest's ``summary``.
"""
import dataclasses
import io
import json
import os
import sys
import time
import warnings
from typing import Callable, Optional, Sequence, Union

from PIL import Image
from tqdm import tqdm

from seedream_jax.data import arrayrecord_io, ingest_sources, pool, preference, records

REPORT = "ingest_report.json"
REASONS = ("missing_file", "remote_url", "read_error", "empty_file", "bad_utf8", "bad_sidecar", "bad_manifest_row",
           "missing_field", "unknown_label", "corrupt_tar", "missing_caption", "empty_caption", "unsupported_format",
           "undecodable", "decoder_crash", "too_large", "too_small", "bad_aspect", "same_image", "invalid_record",
           "internal_error")
_EXAMPLES_PER_REASON = 5


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Ingestion settings.

    min_side: shorter image side below this (pixels) is ``too_small``. max_aspect: longer/shorter
    side above this is ``bad_aspect``. max_pixels: width*height above this is ``too_large``
    (checked from the header, before decoding). lang / txt_caption_type: how untyped captions (and
    preference prompts) are filed (``ingest_sources.CaptionConfig``). caption_column /
    image_column: the row fields holding the untyped caption and the image (None:
    ``ingest_sources.CAPTION_COLUMNS`` / ``IMAGE_COLUMNS``, the first a row has). source: default
    ``Record.source`` (of a pair: else its file's name).
    records_per_shard: records per ArrayRecord shard. workers: decode workers (0 = CPU count,
    1 = inline). pool: ``"thread"`` (default: PIL decodes with the GIL released; no start-up cost) or
    ``"process"`` (isolates decoder crashes; pays a spawn start-up and a copy of every image).
    """
    min_side: int = 64
    max_aspect: float = 4.0
    max_pixels: int = 8192 * 8192
    lang: str = "auto"
    txt_caption_type: str = "short"
    caption_column: Optional[str] = None
    image_column: Optional[str] = None
    source: str = ""
    records_per_shard: int = 1000
    workers: int = 0
    pool: str = "thread"

    def output_settings(self) -> dict:
        """The settings that determine the output (a resumed run must match them)."""
        d = dataclasses.asdict(self)
        for k in ("workers", "pool"):
            d.pop(k)
        for k in ("caption_column", "image_column"):  # unset: as before these existed (resumable)
            if d[k] is None:
                d.pop(k)
        return d


@dataclasses.dataclass
class Outcome:
    """Result of checking one item: ``encoded`` record bytes, or a skip ``reason`` and ``detail``."""
    key: str
    encoded: Optional[bytes] = None
    reason: Optional[str] = None
    detail: str = ""


def _read_image(item: ingest_sources.RawItem) -> bytes:
    if item.image_bytes is not None:
        return item.image_bytes
    try:
        with open(item.image_path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ingest_sources.ItemError("missing_file", f"{item.image_path}: no such file") from None
    except OSError as e:
        raise ingest_sources.ItemError("read_error", f"{item.image_path}: {e}") from None


def inspect_image(data: bytes, cfg: IngestConfig, what: str):
    """Format and displayed (width, height) of encoded bytes after a full decode; ``ItemError`` if bad."""
    if not data:
        raise ingest_sources.ItemError("empty_file", f"{what}: zero bytes")
    fmt = records.sniff_format(data)
    if fmt is None:
        raise ingest_sources.ItemError("unsupported_format", f"{what}: not JPEG, PNG or WebP (starts {data[:8]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > cfg.max_pixels:
                raise ingest_sources.ItemError("too_large", f"{what}: {w}x{h} > max_pixels {cfg.max_pixels}")
            if fmt == "png":
                img.verify()  # chunk CRCs; verify() leaves the image unusable, so reopen
                img = Image.open(io.BytesIO(data))
            img.load()
            orientation = img.getexif().get(0x0112, 1)
    except ingest_sources.ItemError:
        raise
    except Image.DecompressionBombError as e:
        raise ingest_sources.ItemError("too_large", f"{what}: {e}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        raise ingest_sources.ItemError("undecodable", f"{what}: {type(e).__name__}: {e}") from None
    if orientation in (5, 6, 7, 8):  # EXIF transpose / rotate 90 / transverse / rotate 270
        w, h = h, w
    if min(w, h) < cfg.min_side:
        raise ingest_sources.ItemError("too_small", f"{what}: {w}x{h}, shorter side < min_side {cfg.min_side}")
    if max(w, h) / min(w, h) > cfg.max_aspect:
        raise ingest_sources.ItemError("bad_aspect", f"{what}: {w}x{h}, aspect {max(w, h) / min(w, h):.2f} "
                                                     f"> max_aspect {cfg.max_aspect}")
    return fmt, w, h


def _image_record(data: bytes, cfg: IngestConfig, what: str, **fields) -> records.Record:
    """The ``Record`` of encoded image ``data`` after ``inspect_image`` (format, size; ``ItemError`` if
    bad); ``fields``: the other ``Record`` fields (key, captions, source, ...)."""
    fmt, w, h = inspect_image(data, cfg, what)
    return records.Record(image=data, image_format=fmt, width=w, height=h, **fields)


def _outcome(key: str, encode: Callable[[], bytes]) -> Outcome:
    """``Outcome`` of ``encode()``: the encoded bytes, or the skip reason of what it raised
    (``ItemError``: its reason; ``RecordError``: ``invalid_record``; anything else: ``internal_error``)."""
    try:
        return Outcome(key, encoded=encode())
    except ingest_sources.ItemError as e:
        return Outcome(key, reason=e.reason, detail=e.detail)
    except records.RecordError as e:
        return Outcome(key, reason="invalid_record", detail=str(e))
    except Exception as e:  # a bug or a library failure on one item must not end the job
        return Outcome(key, reason="internal_error", detail=f"{key}: {type(e).__name__}: {e}")


def _encode_item(item: ingest_sources.RawItem, cfg: IngestConfig) -> bytes:
    """The encoded record of one image item; ``ItemError`` / ``RecordError`` when it is bad."""
    if item.error is not None:
        raise ingest_sources.ItemError(*item.error)
    if item.image_path is not None and item.image_bytes is None and not os.path.exists(item.image_path):
        raise ingest_sources.ItemError("missing_file", f"{item.image_path}: no such file")
    caption_cfg = ingest_sources.CaptionConfig(cfg.lang, cfg.txt_caption_type, cfg.caption_column)
    fields = ingest_sources.read_sidecars(item, caption_cfg)
    data = _read_image(item)
    if not data:
        raise ingest_sources.ItemError("empty_file", f"{item.image_path or item.key}: zero bytes")
    if not fields["captions"]:
        raise ingest_sources.ItemError("missing_caption", f"{item.key}: no caption sidecar or caption field")
    return records.encode_record(_image_record(
        data, cfg, item.image_path or item.key, key=fields["key"] or item.key, captions=fields["captions"],
        source=fields["source"] or cfg.source, scores=fields["scores"], spec=fields["spec"], meta=fields["meta"]))


def _encode_pair(item: ingest_sources.PairItem, cfg: IngestConfig) -> bytes:
    """The encoded pair record (``data/preference.py``) of one preference row: image A then image B
    read and checked like any image, the preferred one stored first; ``ItemError`` when it is bad."""
    if item.error is not None:
        raise ingest_sources.ItemError(*item.error)
    lang = ingest_sources.detect_lang(item.prompt, ingest_sources.CaptionConfig(cfg.lang))
    source = item.source or cfg.source or item.name
    sides = []
    for column, side in zip(preference.IMAGE_COLUMNS, item.images):
        if side.error is not None:
            raise ingest_sources.ItemError(*side.error)
        what = f"{item.key} {column} ({side.image_path})" if side.image_path else f"{item.key} {column}"
        sides.append(_image_record(_read_image(side), cfg, what, key=side.key, source=source,
                                   captions={lang: {cfg.txt_caption_type: item.prompt}}, meta={"column": column}))
    if sides[0].image == sides[1].image:
        raise ingest_sources.ItemError("same_image", f"{item.key}: image_a and image_b are the same image")
    chosen, rejected = sides if item.label == "a" else sides[::-1]
    return preference.encode_pair(preference.PairRecord(
        key=item.key, prompt=item.prompt, chosen=chosen, rejected=rejected, reason=item.reason, source=source,
        meta={**item.meta, "preferred": item.label}))


def check_item(item: ingest_sources.RawItem, cfg: IngestConfig) -> Outcome:
    """Reads, validates and encodes one item; never raises for bad input (see the reason table)."""
    return _outcome(item.key, lambda: _encode_item(item, cfg))


def check_pair(item: ingest_sources.PairItem, cfg: IngestConfig) -> Outcome:
    """Reads, validates and encodes one preference row as a pair record; never raises for bad input."""
    return _outcome(item.key, lambda: _encode_pair(item, cfg))


class _Checker:
    """Picklable ``check_item`` bound to a config (the function the worker pool maps)."""

    def __init__(self, cfg: IngestConfig):
        self.cfg = cfg

    def __call__(self, item):
        if isinstance(item, ingest_sources.PairItem):
            return check_pair(item, self.cfg)
        return check_item(item, self.cfg)


def _crashed(item) -> Outcome:
    where = getattr(item, "image_path", None) or item.key
    return Outcome(item.key, reason="decoder_crash", detail=f"{where}: worker process died")


def format_report(report: dict) -> str:
    """The skip report as a text table: one line per reason with its count and an example."""
    lines = [f"input items {report['items']:>10}", f"written     {report['written']:>10}",
             f"skipped     {report['skipped_total']:>10}"]
    if report["skipped"]:
        lines.append(f"  {'reason':<20}{'count':>8}  example")
        for reason, count in sorted(report["skipped"].items(), key=lambda kv: (-kv[1], kv[0])):
            ex = report["examples"].get(reason, [["", ""]])[0]
            lines.append(f"  {reason:<20}{count:>8}  {ex[1][:90]}")
    return "\n".join(lines)


def ingest(kind: str, paths: Union[str, Sequence[str]], out_dir: str, cfg: IngestConfig = IngestConfig(),
           image_root: Optional[str] = None, progress: bool = True, log=print) -> dict:
    """Ingests ``paths`` of input ``kind`` (``ingest_sources.FORMS``) into ``out_dir``.

    ``paths``: what ``ingest_sources.resolve_inputs`` returns (files; folders for folder and imagefolder).
    Kind ``preference`` writes pair records (``data/preference.py``), one per good row.

    Returns the report: ``items`` (input items seen), ``written``, ``skipped`` ({reason: count}),
    ``skipped_total``, ``examples`` ({reason: [[key, detail], ...]} up to 5), ``seconds``,
    ``items_per_s``, ``shards``. A complete ``out_dir`` with the same settings is left as is and its
    report returned; a partial one is resumed.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    ingest_sources.check_options(kind, cfg.image_column, cfg.caption_column, image_root)
    settings = {"kind": kind, "paths": [os.path.abspath(p) for p in paths],
                "image_root": image_root, **cfg.output_settings()}
    writer = arrayrecord_io.ShardedWriter(out_dir, cfg.records_per_shard, config=settings)
    if writer.complete:
        report = writer.close()["summary"]
        log(f"[ingest] {out_dir} is already complete ({report.get('written')} records)")
        log(format_report(report))
        return report
    state = writer.resume_state or {"items": 0, "written": 0, "skipped": {}, "examples": {}, "seconds": 0.0}
    if writer.records_done:
        log(f"[ingest] resuming {out_dir}: {len(writer.shards)} finished shards, {writer.records_done} records, "
            f"{state['items']} input items done")
    items = ingest_sources.iter_source(kind, paths, image_root, image_column=cfg.image_column,
                                       caption_column=cfg.caption_column)
    for _ in range(state["items"]):  # items consumed by the finished shards (cheap: no decoding)
        next(items, None)
    workers = cfg.workers or os.cpu_count() or 1
    t0, seconds0 = time.time(), state["seconds"]

    def snapshot():
        return {**state, "skipped": dict(state["skipped"]),
                "examples": {k: list(v) for k, v in state["examples"].items()},
                "seconds": seconds0 + time.time() - t0}

    bar = tqdm(desc="ingest", unit=" items", initial=state["items"], disable=not progress, file=sys.stderr,
               mininterval=1.0, dynamic_ncols=True)
    try:
        for _, out in pool.ordered_map(_Checker(cfg), items, workers=workers, kind=cfg.pool, on_crash=_crashed):
            state["items"] += 1
            if out.reason is None:
                state["written"] += 1
                writer.write(out.encoded, snapshot)
            else:
                state["skipped"][out.reason] = state["skipped"].get(out.reason, 0) + 1
                examples = state["examples"].setdefault(out.reason, [])
                if len(examples) < _EXAMPLES_PER_REASON:
                    examples.append([out.key, out.detail])
            bar.update(1)
            if state["items"] % 256 == 0:
                bar.set_postfix(written=state["written"], skipped=sum(state["skipped"].values()), refresh=False)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    report = snapshot()
    report.update(skipped_total=sum(report["skipped"].values()),
                  items_per_s=(report["items"] / report["seconds"]) if report["seconds"] > 0 else 0.0,
                  input=settings)
    manifest = writer.close(summary=report)
    report["shards"] = len(manifest["shards"])
    with open(os.path.join(out_dir, REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False, sort_keys=True)
    log(f"[ingest] {out_dir}: {report['written']} records in {report['shards']} shards "
        f"({report['items_per_s']:.1f} items/s)")
    log(format_report(report))
    return report


def skip_verdict(items: int, written: int, skipped: dict, max_skip_fraction: float, what: str = "input items",
                 top: int = 3) -> Optional[str]:
    """Why a run that saw ``items`` and wrote ``written`` should fail, or None: nothing written, or the
    skipped share (``sum(skipped.values()) / items``) above ``max_skip_fraction``. The message names the
    ``top`` most frequent reasons of ``skipped`` ({reason: count}) with their counts."""
    total = sum(skipped.values())
    reasons = ", ".join(f"{r} {c}" for r, c in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))[:top])
    because = f"; top reasons: {reasons}" if reasons else ""
    if written == 0:
        return f"nothing was written ({items} {what}, {total} skipped{because})"
    if items and total / items > max_skip_fraction:
        return (f"{total} of {items} {what} were skipped ({total / items:.0%}), more than --max_skip_fraction "
                f"{max_skip_fraction:g}{because}")
    return None
