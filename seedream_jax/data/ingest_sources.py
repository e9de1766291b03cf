"""The input forms of ingestion, each enumerated as a deterministic stream of ``RawItem``.

=============  ===========================================================================
form           what it is
=============  ===========================================================================
folder         a directory tree of images (``.jpg .jpeg .png .webp``; other image extensions
               are enumerated too and skipped as ``unsupported_format``) with sidecar captions
               of the same stem: ``cat.jpg`` + ``cat.txt`` and/or ``cat.json``. A sidecar
               without an image is an item whose image is missing (``missing_file``). Walk
               order: sorted paths. (img2dataset's ``files`` output is such a folder.)
imagefolder    Hugging Face ``imagefolder``: a folder with ``metadata.jsonl`` or
               ``metadata.csv`` (at its top or in any sub-folder, e.g. ``train/``), one row per
               image: ``file_name`` (relative to the metadata file's folder) and a caption
               column. Images that no row names are counted as ``missing_caption``.
jsonl / csv    a manifest, one row per image (a JSON object a line, or a CSV row under a
               header; same columns either way).
parquet        Parquet manifests or shards (a file or a folder of them, in sorted order), e.g.
               Hugging Face ``datasets`` shards (``Dataset.to_parquet``, the Hub's
               ``data/*.parquet``) or img2dataset's ``parquet`` output.
webdataset     tar shards; members are grouped into samples by key (the member path up to the
               first dot of its file name), e.g. ``0001.jpg``, ``0001.txt``, ``0001.json``. A
               tar that is corrupt or truncated yields its readable samples and then one
               ``corrupt_tar`` item. img2dataset's ``webdataset`` output is such tars.
coco           COCO captions (``captions_*.json``: ``images`` plus ``annotations``); one
               record per image, its captions in annotation-id order (below). Images resolve
               against ``image_root``, default the first folder that exists of
               ``<json folder>/../<split>``, ``<json folder>/<split>`` (``<split>`` from
               ``captions_<split>.json``, e.g. ``train2017``) and the JSON's own folder.
preference     preference pairs (``data/preference.py`` documents the format): JSONL or
               Parquet rows of ``prompt``, ``image_a``, ``image_b``, ``preferred`` and an
               optional ``reason``; one ``PairItem`` per row (``iter_preference``), which
               ingestion turns into a pair record, not an image record.
=============  ===========================================================================

``detect_form`` tells the form from a path: a file by its extension (``.jsonl``, ``.csv``,
``.parquet``, ``.tar`` / ``.tar.gz`` / ``.tgz``, ``.json`` = COCO), a ``.jsonl`` or ``.parquet``
file whose columns include ``preference.REQUIRED_COLUMNS`` being ``preference``
(``is_preference_file``: the first rows of a JSONL file, a Parquet file's schema); a folder by
what it holds (looked for at its top and two folder levels below, then in the whole tree), in this
order: ``metadata.jsonl`` / ``metadata.csv`` (imagefolder), ``.tar`` shards (webdataset; the
``.parquet`` img2dataset writes beside its tars only lists URLs), COCO ``captions_*.json`` files
without a same-stem image (coco), preference files (preference; the images beside them are
theirs), image files (folder), ``.parquet`` files (parquet). A path
that is none of these is refused with a message naming what it holds. ``resolve_inputs`` turns
input paths into the form and the files to read (a folder of shards: its shards, sorted).

Rows (manifests, imagefolder metadata, Parquet, COCO) all take one path to a ``RawItem``
(``_row_item``). The image is the first of the columns ``IMAGE_COLUMNS`` (or the one
``image_column`` names) that has a value: a path (relative paths resolve against
``image_root``, default the manifest's folder), encoded bytes (``jpg``/``png``/``webp`` as
img2dataset stores them), or a ``{"bytes", "path"}`` struct as Hugging Face ``datasets`` stores
an ``Image`` (bytes win; a null ``bytes`` falls back to ``path``). A row with no image but a
``url`` is skipped as ``remote_url`` (nothing is downloaded); a row whose image column is
empty as ``missing_file``; a row with none of the image columns as ``bad_manifest_row``, naming
the columns it has. A text value that is not valid UTF-8 (a CSV cell, a Parquet string, a COCO
caption, a lone surrogate escape in JSON) makes the row ``bad_utf8``.

Captions and metadata come from fields with one schema for JSON sidecars, WebDataset ``.json``
members and rows (``parse_fields``): the caption column (``caption_column``; by default the
first of ``text`` and ``caption`` that the row has; language detected, type
``txt_caption_type``), ``captions`` (``{lang: {type: text}}``; this, ``scores`` and ``spec`` may
also be JSON strings), ``caption_<lang>``, ``<type>_<lang>`` (e.g. ``long_zh``), ``source``,
``scores`` (dict) and ``score_<name>``, ``spec`` (dict), ``key``; every other JSON-serialisable
field is kept in ``meta``. A caption column holding a list (COCO, Flickr30k-style datasets) keeps
its first non-empty entry as the caption and the other non-empty ones, in order, as
``meta["alt_captions"]`` (a record holds one caption per language and type). A ``.txt`` sidecar
is one caption (language detected, type ``txt_caption_type``); JSON captions win where both give
the same language and type. In a CSV row an empty cell is an absent value (but an empty caption
cell is an empty caption) and ``score_<name>`` cells are numbers.
"""
import collections
import csv
import dataclasses
import json
import os
import re
import tarfile
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from seedream_jax.data import preference
from seedream_jax.data.records import CAPTION_TYPES

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
OTHER_IMAGE_EXTS = (".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl", ".jp2", ".ico")
SIDECAR_EXTS = (".txt", ".json")
TAR_EXTS = (".tar", ".tar.gz", ".tgz")
FORMS = ("folder", "imagefolder", "jsonl", "csv", "parquet", "webdataset", "coco", "preference")
# Where a row's image is, in order: paths, then Hugging Face's Image struct / bytes, then
# img2dataset's encoded-image columns.
IMAGE_COLUMNS = ("path", "image_path", "file", "file_name", "image", "jpg", "jpeg", "png", "webp")
CAPTION_COLUMNS = ("text", "caption")  # the default caption columns, in order (as HF's training scripts)
METADATA_FILES = ("metadata.jsonl", "metadata.csv")  # HF imagefolder
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Text that was not UTF-8: bytes kept by surrogateescape, or a lone surrogate escape in JSON.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TYPED = re.compile(r"^(?P<type>%s)_(?P<lang>[a-z]{2,3})$" % "|".join(CAPTION_TYPES))
_CAPTION_LANG = re.compile(r"^caption_(?P<lang>[a-z]{2,3})$")
_SCORE = re.compile(r"^score_(?P<name>\w+)$")
_RESERVED = {"captions", "source", "scores", "spec", "key", "width", "height", *IMAGE_COLUMNS}


class ItemError(Exception):
    """An input item cannot become a record; ``reason`` is the skip-report category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class RawItem:
    """One input item before validation.

    key: id of the future record. image_path / image_bytes: where the image is (one of them).
    sidecars: ``(kind, path or content)`` with kind ``"txt"`` or ``"json"``, in priority order low to
    high. fields: an already-parsed manifest row. error: ``(reason, detail)`` when the item is known
    bad at enumeration (unreadable manifest row, corrupt tar).
    """
    key: str
    image_path: Optional[str] = None
    image_bytes: Optional[bytes] = None
    sidecars: List[Tuple[str, Union[str, bytes]]] = dataclasses.field(default_factory=list)
    fields: Optional[dict] = None
    error: Optional[Tuple[str, str]] = None


@dataclasses.dataclass
class PairItem:
    """One preference row before its images are checked (``data/preference.py``).

    key: id of the future pair record. name: the row's file name (the default source id). images:
    the (image_a, image_b) items, each with ``image_path`` or ``image_bytes`` (or its own ``error``).
    prompt, label (``"a"`` / ``"b"``), reason, source (None: the row names none), meta (the row's other
    columns): the parsed row. error: ``(reason, detail)`` when the row is known bad at enumeration.
    """
    key: str
    name: str = ""
    images: Tuple[RawItem, ...] = ()
    prompt: str = ""
    label: str = ""
    reason: str = ""
    source: Optional[str] = None
    meta: dict = dataclasses.field(default_factory=dict)
    error: Optional[Tuple[str, str]] = None


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
    """How untyped captions are filed: language (``"auto"`` = zh if any CJK character, else en) and
    type; ``caption_column``: the row field holding the untyped caption (None: the first of
    ``CAPTION_COLUMNS`` that the row has)."""
    lang: str = "auto"
    txt_caption_type: str = "short"
    caption_column: Optional[str] = None


def caption_column_of(obj: dict, cfg: CaptionConfig) -> Optional[str]:
    """The field of ``obj`` that holds its untyped caption under ``cfg``, or None."""
    for name in ((cfg.caption_column,) if cfg.caption_column else CAPTION_COLUMNS):
        if obj.get(name) is not None:
            return name
    return None


def _is_caption_field(name: str, caption_column: Optional[str]) -> bool:
    return (name in ((caption_column,) if caption_column else CAPTION_COLUMNS) or bool(_TYPED.match(name))
            or bool(_CAPTION_LANG.match(name)))


def detect_lang(text: str, cfg: CaptionConfig) -> str:
    """``cfg.lang``, or under ``"auto"`` ``"zh"`` if ``text`` has a CJK ideograph, else ``"en"``."""
    if cfg.lang != "auto":
        return cfg.lang
    return "zh" if _CJK.search(text) else "en"


def _decode_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ItemError("bad_utf8", f"{what}: {e}") from None


def _put(captions: Dict[str, Dict[str, str]], lang: str, kind: str, text: Any, what: str) -> None:
    if not isinstance(text, str):
        raise ItemError("bad_sidecar", f"{what}: caption {lang}/{kind} is {type(text).__name__}, expected text")
    if _SURROGATE.search(text):
        raise ItemError("bad_utf8", f"{what}: caption {lang}/{kind} is not valid UTF-8")
    text = text.strip()
    if not text:
        raise ItemError("empty_caption", f"{what}: caption {lang}/{kind} is empty")
    captions.setdefault(lang, {})[kind] = text


def parse_fields(obj: Any, cfg: CaptionConfig, what: str) -> dict:
    """Captions and metadata of a JSON sidecar / manifest row (schema in the module docstring).

    Returns ``{"captions", "source", "scores", "spec", "key", "meta"}`` (captions possibly empty);
    raises ``ItemError`` (``bad_sidecar``, ``empty_caption``) naming ``what``.
    """
    if not isinstance(obj, dict):
        raise ItemError("bad_sidecar", f"{what}: expected a JSON object, got {type(obj).__name__}")
    captions: Dict[str, Dict[str, str]] = {}
    nested = _json_field(obj, "captions", what)
    if nested is not None:
        if not isinstance(nested, dict) or not all(isinstance(v, dict) for v in nested.values()):
            raise ItemError("bad_sidecar", f"{what}: 'captions' must be {{lang: {{type: text}}}}")
        for lang, by_type in nested.items():
            for kind, text in by_type.items():
                if kind not in CAPTION_TYPES:
                    raise ItemError("bad_sidecar", f"{what}: caption type {kind!r} not in {CAPTION_TYPES}")
                _put(captions, lang, kind, text, what)
    scores = {}
    raw_scores = _json_field(obj, "scores", what) or {}
    if not isinstance(raw_scores, dict):
        raise ItemError("bad_sidecar", f"{what}: 'scores' must be a dict")
    meta = {}
    caption_field = caption_column_of(obj, cfg)
    for name, value in obj.items():
        if name in _RESERVED or name == caption_field or value is None:
            continue
        m_typed, m_lang, m_score = _TYPED.match(name), _CAPTION_LANG.match(name), _SCORE.match(name)
        if m_typed:
            _put(captions, m_typed["lang"], m_typed["type"], value, what)
        elif m_lang:
            _put(captions, m_lang["lang"], cfg.txt_caption_type, value, what)
        elif m_score and isinstance(value, (int, float)) and not isinstance(value, bool):
            scores[m_score["name"]] = float(value)
        elif _json_safe(value):
            meta[name] = value
    if caption_field is not None:
        text = obj[caption_field]
        if isinstance(text, (list, tuple)):  # several captions of one image (COCO, Flickr30k, ...)
            if not all(isinstance(t, str) for t in text):
                raise ItemError("bad_sidecar", f"{what}: {caption_field!r} is a list of "
                                               f"{sorted({type(t).__name__ for t in text})}, expected text")
            texts = [t for t in text if t.strip()]
            if not texts:
                raise ItemError("empty_caption" if text else "missing_caption",
                                f"{what}: every caption in {caption_field!r} is empty" if text
                                else f"{what}: {caption_field!r} is an empty list")
            text = texts[0]
            if len(texts) > 1:
                meta["alt_captions"] = [t.strip() for t in texts[1:]]
        lang = detect_lang(text, cfg) if isinstance(text, str) else "en"
        if cfg.txt_caption_type not in captions.get(lang, {}):
            _put(captions, lang, cfg.txt_caption_type, text, what)
    for name, value in raw_scores.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scores[str(name)] = float(value)
    spec = _json_field(obj, "spec", what)
    if spec is not None and not isinstance(spec, dict):
        raise ItemError("bad_sidecar", f"{what}: 'spec' must be a JSON object")
    source = obj.get("source")
    key = obj.get("key")
    return {"captions": captions, "source": source if isinstance(source, str) else None, "scores": scores,
            "spec": spec, "key": str(key) if key is not None else None, "meta": meta}


def _json_field(obj: dict, name: str, what: str) -> Any:
    """``obj[name]``, parsed if it is a JSON string (Parquet manifests often store dicts so)."""
    value = obj.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ItemError("bad_sidecar", f"{what}: {name!r} is not JSON: {e}") from None
    return value


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def read_sidecars(item: RawItem, cfg: CaptionConfig) -> dict:
    """Merged ``parse_fields`` result of an item's sidecars and manifest fields (later ones win)."""
    out = {"captions": {}, "source": None, "scores": {}, "spec": None, "key": None, "meta": {}}
    parts: List[dict] = []
    for kind, ref in item.sidecars:
        what = ref if isinstance(ref, str) else f"{item.key}.{kind}"
        if isinstance(ref, str):
            try:
                with open(ref, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ItemError("read_error", f"{what}: {e}") from None
        else:
            data = ref
        text = _decode_text(data, what)
        if kind == "txt":
            if not text.strip():
                raise ItemError("empty_caption", f"{what}: caption file is empty")
            parts.append({"captions": {detect_lang(text, cfg): {cfg.txt_caption_type: text.strip()}}})
        else:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise ItemError("bad_sidecar", f"{what}: not JSON: {e}") from None
            parts.append(parse_fields(obj, cfg, what))
    if item.fields is not None:
        parts.append(parse_fields(item.fields, cfg, f"manifest row {item.key!r}"))
    for part in parts:
        for lang, by_type in part.get("captions", {}).items():
            out["captions"].setdefault(lang, {}).update(by_type)
        out["scores"].update(part.get("scores", {}))
        out["meta"].update(part.get("meta", {}))
        for name in ("source", "spec", "key"):
            if part.get(name) is not None:
                out[name] = part[name]
    return out


# -- folder --------------------------------------------------------------------------------------
def iter_folder(root: str) -> Iterator[RawItem]:
    """Items of a directory tree of images with same-stem ``.txt`` / ``.json`` sidecars (sorted)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input folder {root!r} does not exist")
    groups: Dict[str, Dict[str, List[str]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            rel = os.path.relpath(os.path.join(dirpath, stem), root).replace(os.sep, "/")
            if ext in IMAGE_EXTS or ext in OTHER_IMAGE_EXTS:
                groups.setdefault(rel, {}).setdefault("images", []).append(name)
            elif ext in SIDECAR_EXTS:
                groups.setdefault(rel, {}).setdefault(ext[1:], []).append(name)
    for rel in sorted(groups):
        g = groups[rel]
        folder = os.path.join(root, os.path.dirname(rel))
        sidecars = [(kind, os.path.join(folder, g[kind][0])) for kind in ("txt", "json") if kind in g]
        if "images" not in g:
            yield RawItem(key=rel, sidecars=sidecars,
                          error=("missing_file", f"{rel}: caption sidecar without an image file"))
            continue
        for name in sorted(g["images"]):
            key = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            yield RawItem(key=key, image_path=os.path.join(folder, name), sidecars=sidecars)


# -- rows: manifests, imagefolder metadata, Parquet, COCO ----------------------------------------
Row = Union[dict, RawItem]  # a row, or an item already known bad (unreadable line)


def _bad_utf8_field(value: Any, name: str = "") -> Optional[str]:
    """The (dotted) name of the first text in ``value`` that is not valid UTF-8, or None."""
    if isinstance(value, str):
        return name if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = _bad_utf8_field(v, f"{name}.{k}" if name else str(k))
            if bad is not None:
                return bad
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _bad_utf8_field(v, f"{name}[{i}]")
            if bad is not None:
                return bad
    return None


def _row_item(row: Any, index: int, image_root: str, name: str, image_column: Optional[str] = None,
              key_root: Optional[str] = None) -> RawItem:
    """The one row -> item path of every row form (see the module docstring).

    ``name``: the row's file as shown in keys and messages; ``image_root``: base of relative image
    paths; ``key_root``: when given, a path image's key is its path relative to it (else the path
    as the row gives it). A ``key`` field names the record in any case.
    """
    key = f"{name}:{index}"
    where = f"{name} row {index}"
    if not isinstance(row, dict):
        return RawItem(key=key, error=("bad_manifest_row", f"{where}: not a JSON object"))
    columns = (image_column,) if image_column else IMAGE_COLUMNS
    image_bytes = image_path = None
    present = [c for c in columns if c in row]
    for col in present:
        value = row[col]
        if isinstance(value, dict):  # Hugging Face datasets' Image: {"bytes": ..., "path": ...}
            value = value["bytes"] if value.get("bytes") is not None else value.get("path")
        if isinstance(value, (bytes, bytearray)):
            image_bytes = bytes(value)
            break
        if isinstance(value, str) and value:
            image_path = value if os.path.isabs(value) else os.path.join(image_root, value)
            key = (os.path.relpath(image_path, key_root).replace(os.sep, "/") if key_root else value)
            break
    if row.get("key") is not None:
        key = str(row["key"])
    if _SURROGATE.search(key):  # a key that is not UTF-8 could not be written to the report
        key = f"{name}:{index}"
    bad = _bad_utf8_field(row)
    if bad is not None:  # the image stays named: an imagefolder does not count it again as unlisted
        return RawItem(key=key, image_path=image_path, error=("bad_utf8", f"{where}: field {bad!r} is not valid UTF-8"))
    if image_bytes is not None or image_path is not None:
        return RawItem(key=key, image_path=image_path, image_bytes=image_bytes, fields=row)
    url = row.get("url")
    if isinstance(url, str) and url.strip():
        status = f"; status {row['status']!r}" if row.get("status") else ""
        err = f": {row['error_message']}" if row.get("error_message") else ""
        return RawItem(key=key, error=("remote_url", f"{where}: only a url ({url}{status}{err}), no local image"))
    if present:
        return RawItem(key=key, error=("missing_file", f"{where}: image column {present[0]!r} is empty"))
    return RawItem(key=key, error=("bad_manifest_row", f"{where}: no image column (one of {columns}); "
                                                       f"it has {sorted(map(str, row))}"))


def _jsonl_rows(path: str, name: str) -> Iterator[Tuple[int, Row]]:
    """(line index, row) of a JSONL file's non-empty lines; lines that are not JSON as error items.
    Bytes that are not UTF-8 are kept as surrogates (``_row_item`` then names the field)."""
    with open(path, "rb") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            text = line.decode("utf-8-sig" if index == 0 else "utf-8", "surrogateescape")
            try:
                yield index, json.loads(text)
            except json.JSONDecodeError as e:
                error = (("bad_utf8", f"{name} line {index + 1}: not valid UTF-8 (nor JSON: {e})")
                         if _SURROGATE.search(text) else ("bad_manifest_row", f"{name} line {index + 1}: {e}"))
                yield index, RawItem(key=f"{name}:{index}", error=error)


def _csv_row(header: Sequence[str], cells: Sequence[str], caption_column: Optional[str]) -> dict:
    """A CSV row as a manifest row: empty cells are absent values, ``score_<name>`` cells numbers. If
    the row has no caption at all, its first empty caption cell stays ``""`` (an ``empty_caption``)."""
    row = dict(zip(header, cells))
    caption_cells = [c for c in row if _is_caption_field(c, caption_column)]
    has_caption = any(row[c] for c in caption_cells) or bool(row.get("captions"))
    keep_empty = None if has_caption else next((c for c in caption_cells if row[c] == ""), None)
    out = {}
    for col, text in row.items():
        if text == "" and col != keep_empty:
            continue
        if _SCORE.match(col):
            try:
                text = float(text)
            except ValueError:
                pass
        out[col] = text
    return out


def _csv_rows(path: str, name: str, caption_column: Optional[str] = None) -> Iterator[Tuple[int, Row]]:
    """(data row index, row) of a CSV file with a header; cells that are not UTF-8 make the row bad_utf8
    (read under surrogateescape, caught by ``_row_item``), a row with more cells than the header is bad."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ValueError(f"{path}: unreadable CSV header: {e}") from None
        index = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield index, RawItem(key=f"{name}:{index}", error=("bad_manifest_row", f"{name} line "
                                                                                     f"{reader.line_num}: {e}"))
                index += 1
                continue
            if not cells:
                continue
            if len(cells) > len(header):
                yield index, RawItem(key=f"{name}:{index}", error=(
                    "bad_manifest_row", f"{name} line {reader.line_num}: {len(cells)} cells, the header has "
                                        f"{len(header)}"))
            else:
                yield index, _csv_row(header, cells, caption_column)
            index += 1


def _arrow_text_as_binary(t):
    """The Arrow type ``t`` with every string replaced by binary (read without UTF-8 checks)."""
    import pyarrow as pa
    if pa.types.is_string(t):
        return pa.binary()
    if pa.types.is_large_string(t):
        return pa.large_binary()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _arrow_text_as_binary(f.type), f.nullable) for f in t])
    if pa.types.is_list(t):
        return pa.list_(_arrow_text_as_binary(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(_arrow_text_as_binary(t.value_type))
    return t


def _decode_arrow_text(value: Any, t) -> Any:
    """``value`` read as ``_arrow_text_as_binary(t)`` back to Python, texts decoded (surrogateescape)."""
    import pyarrow as pa
    if value is None:
        return None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return value.decode("utf-8", "surrogateescape")
    if pa.types.is_struct(t):
        return {f.name: _decode_arrow_text(value.get(f.name), f.type) for f in t}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [_decode_arrow_text(v, t.value_type) for v in value]
    return value


def _parquet_rows(path: str, name: str, batch_size: int = 256) -> Iterator[Tuple[int, Row]]:
    """(row index, row) of a Parquet file, read in row batches (needs ``pyarrow``). Strings are read as
    bytes and decoded per row, so one row that is not UTF-8 is one bad row, not a failed batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    f = pq.ParquetFile(path)
    schema = f.schema_arrow
    binary = pa.schema([pa.field(x.name, _arrow_text_as_binary(x.type)) for x in schema])
    index = 0
    for batch in f.iter_batches(batch_size=batch_size):
        batch = pa.Table.from_batches([batch]).cast(binary)
        for row in batch.to_pylist():
            yield index, {x.name: _decode_arrow_text(row[x.name], x.type) for x in schema}
            index += 1


def _absent(value: Any) -> bool:
    """A missing preference field: None, blank text, or an image struct with neither bytes nor a path."""
    if isinstance(value, dict):
        return value.get("bytes") is None and _absent(value.get("path"))
    return value is None or (isinstance(value, str) and not value.strip())


def _pair_error(row: dict, where: str) -> Optional[Tuple[str, str]]:
    """(reason, detail) of what makes a preference row unusable before its images are read, or None.
    Checked in this order: bad UTF-8, a missing field, an unknown label, a field of the wrong type, a URL."""
    bad = _bad_utf8_field(row)
    if bad is not None:
        return "bad_utf8", f"{where}: field {bad!r} is not valid UTF-8"
    missing = [c for c in preference.REQUIRED_COLUMNS if _absent(row.get(c))]
    if missing:
        return "missing_field", (f"{where}: no {', '.join(map(repr, missing))} (absent, null or empty); "
                                 f"it has {sorted(map(str, row))}")
    if preference.parse_label(row["preferred"]) is None:
        return "unknown_label", f"{where}: preferred is {row['preferred']!r}, expected one of 'a', 'b', 'A', 'B'"
    for column in ("prompt", "reason", "source"):
        if row.get(column) is not None and not isinstance(row[column], str):
            return "bad_sidecar", f"{where}: {column!r} is {type(row[column]).__name__}, expected text"
    for column in preference.IMAGE_COLUMNS:
        value = row[column]
        if not isinstance(value, (str, bytes, bytearray, dict)):
            return "bad_sidecar", f"{where}: {column!r} is {type(value).__name__}, expected a path or image bytes"
        if isinstance(value, str) and "://" in value:
            return "remote_url", f"{where}: {column!r} is a URL ({value}), not a local image"
    return None


def _pair_item(row: Row, index: int, image_root: str, name: str) -> PairItem:
    """The one preference row -> ``PairItem`` path of JSONL and Parquet files (``_pair_error``'s checks;
    each image resolved by ``_row_item`` as a one-column row: a path, bytes or an HF ``Image`` struct)."""
    if isinstance(row, RawItem):  # a line that is not JSON
        return PairItem(key=row.key, name=name, error=row.error)
    key, where = f"{name}:{index}", f"{name} row {index}"
    if not isinstance(row, dict):
        return PairItem(key=key, name=name, error=("bad_manifest_row", f"{where}: not a JSON object"))
    if row.get("key") is not None and not _SURROGATE.search(str(row["key"])):
        key = str(row["key"])
    error = _pair_error(row, where)
    if error is not None:
        return PairItem(key=key, name=name, error=error)
    images = []
    for column in preference.IMAGE_COLUMNS:
        item = _row_item({column: row[column]}, index, image_root, name, column)
        images.append(item if item.image_path is not None else dataclasses.replace(item, key=f"{key}:{column}"))
    meta = {k: v for k, v in row.items() if k not in preference.COLUMNS and v is not None and _json_safe(v)}
    return PairItem(key=key, name=name, images=tuple(images), prompt=row["prompt"].strip(),
                    label=preference.parse_label(row["preferred"]), reason=(row.get("reason") or "").strip(),
                    source=row.get("source") or None, meta=meta)


def _coco_image_root(path: str) -> str:
    here = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    split = stem[len("captions_"):] if stem.startswith("captions_") else None
    if split:
        for cand in (os.path.join(here, os.pardir, split), os.path.join(here, split)):
            if os.path.isdir(cand):
                return os.path.normpath(cand)
    return here


def _coco_rows(path: str, name: str) -> Iterator[Tuple[int, Row]]:
    """(index, row) per COCO image: its fields, ``caption`` = its captions in annotation-id order,
    ``coco_image_id``; then an error item per annotation whose image_id names no image."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8-sig", "surrogateescape")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}); a COCO captions file was expected") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("images"), list)
            and isinstance(obj.get("annotations"), list)):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} is not a COCO captions file: expected top-level 'images' and 'annotations' "
                         f"lists, found {found}")
    anns = [a for a in obj["annotations"] if isinstance(a, dict)]
    if anns and not any("caption" in a for a in anns):
        raise ValueError(f"{path}: its annotations have no 'caption' (found {sorted(anns[0])}): this is not a "
                         f"captions_*.json file (instances / keypoints annotations hold no captions)")
    by_image: Dict[Any, List[dict]] = collections.defaultdict(list)
    for a in sorted(anns, key=lambda a: a["id"] if isinstance(a.get("id"), int) else float("inf")):
        by_image[a.get("image_id")].append(a)
    seen = set()
    index = 0
    for img in obj["images"]:
        if not isinstance(img, dict):
            yield index, img
            index += 1
            continue
        row = {k: v for k, v in img.items() if k != "id"}
        row["coco_image_id"] = img.get("id")
        seen.add(img.get("id"))
        captions = [a.get("caption") for a in by_image.get(img.get("id"), [])]
        if captions:
            row["caption"] = captions
        yield index, row
        index += 1
    for image_id, group in by_image.items():
        if image_id not in seen:
            yield index, RawItem(key=f"{name}:annotations:{image_id}", error=(
                "bad_manifest_row", f"{name}: {len(group)} annotation(s) (ids {[a.get('id') for a in group][:5]}) "
                                    f"name image_id {image_id!r}, which is not in 'images'"))
            index += 1


def _items_of_rows(rows: Iterable[Tuple[int, Row]], image_root: str, name: str, image_column: Optional[str] = None,
                   key_root: Optional[str] = None) -> Iterator[RawItem]:
    for index, row in rows:
        yield row if isinstance(row, RawItem) else _row_item(row, index, image_root, name, image_column, key_root)


def _manifest_rows(path: str, name: str, caption_column: Optional[str]) -> Iterator[Tuple[int, Row]]:
    return _csv_rows(path, name, caption_column) if path.lower().endswith(".csv") else _jsonl_rows(path, name)


def iter_jsonl(path: str, image_root: Optional[str] = None, image_column: Optional[str] = None) -> Iterator[RawItem]:
    """Items of a JSONL manifest, one per non-empty line; unreadable lines become error items."""
    root = image_root or os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    yield from _items_of_rows(_jsonl_rows(path, name), root, name, image_column)


def iter_csv(path: str, image_root: Optional[str] = None, image_column: Optional[str] = None,
             caption_column: Optional[str] = None) -> Iterator[RawItem]:
    """Items of a CSV manifest (a header, then one row per image; the JSONL manifest's columns)."""
    root = image_root or os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    yield from _items_of_rows(_csv_rows(path, name, caption_column), root, name, image_column)


def iter_parquet(path: str, image_root: Optional[str] = None, image_column: Optional[str] = None,
                 batch_size: int = 256) -> Iterator[RawItem]:
    """Items of a Parquet manifest or shard, read in row batches (needs ``pyarrow``)."""
    root = image_root or os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    yield from _items_of_rows(_parquet_rows(path, name, batch_size), root, name, image_column)


def iter_preference(path: str, image_root: Optional[str] = None) -> Iterator[PairItem]:
    """Pair items of a preference JSONL or Parquet file (``data/preference.py``), one per non-empty
    line or row; relative image paths resolve against ``image_root`` (default: the file's folder)."""
    root = image_root or os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    rows = _parquet_rows(path, name) if path.lower().endswith(".parquet") else _jsonl_rows(path, name)
    for index, row in rows:
        yield _pair_item(row, index, root, name)


def is_preference_file(path: str, lines: int = 5) -> bool:
    """Whether a ``.jsonl`` file (one of its first ``lines`` non-empty lines) or a ``.parquet`` file (its
    schema) has every column of ``preference.REQUIRED_COLUMNS``; unreadable files are not."""
    try:
        if path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq
            return set(preference.REQUIRED_COLUMNS) <= set(pq.read_schema(path).names)
        with open(path, "rb") as f:
            rows = (line for line in f if line.strip())
            for _, line in zip(range(lines), rows):
                try:
                    obj = json.loads(line.decode("utf-8-sig", "surrogateescape"))
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    return set(preference.REQUIRED_COLUMNS) <= set(obj)
    except Exception:  # a zero-byte or corrupt Parquet file, an unreadable file: not a preference file
        return False
    return False


def iter_coco(path: str, image_root: Optional[str] = None) -> Iterator[RawItem]:
    """Items of a COCO captions JSON: one per image (all its captions), keyed by ``file_name``."""
    root = image_root or _coco_image_root(path)
    name = os.path.basename(path)
    yield from _items_of_rows(_coco_rows(path, name), root, name, "file_name")


def iter_imagefolder(root: str, image_column: Optional[str] = None,
                     caption_column: Optional[str] = None) -> Iterator[RawItem]:
    """Items of a Hugging Face imagefolder: the rows of every ``metadata.jsonl`` / ``metadata.csv`` in the
    tree (sorted by folder; ``file_name`` relative to that folder; keys relative to ``root``), then one
    ``missing_caption`` item per image file that no row names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input folder {root!r} does not exist")
    metadata: Dict[str, str] = {}
    images = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found = [n for n in METADATA_FILES if n in filenames]
        if len(found) > 1:
            raise ValueError(f"{dirpath} holds both {found[0]} and {found[1]}: keep one of them")
        if found:
            metadata[dirpath] = os.path.join(dirpath, found[0])
        for n in filenames:
            if os.path.splitext(n)[1].lower() in IMAGE_EXTS + OTHER_IMAGE_EXTS:
                images.add(os.path.normpath(os.path.join(dirpath, n)))
    if not metadata:
        raise ValueError(f"{root} holds no {' or '.join(METADATA_FILES)}: not an imagefolder (pass --format folder "
                         f"for images with .txt/.json sidecars)")
    listed = set()
    for folder in sorted(metadata):
        path = metadata[folder]
        name = os.path.relpath(path, root).replace(os.sep, "/")
        for item in _items_of_rows(_manifest_rows(path, name, caption_column), folder, name, image_column, root):
            if item.image_path is not None:
                listed.add(os.path.normpath(item.image_path))
            yield item
    for path in sorted(images - listed):
        key = os.path.relpath(path, root).replace(os.sep, "/")
        yield RawItem(key=key, image_path=path,
                      error=("missing_caption", f"{key}: no row of the metadata file(s) names this image"))


# -- WebDataset ----------------------------------------------------------------------------------
def _split_key(member_name: str) -> Tuple[str, str]:
    folder, base = os.path.split(member_name)
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _sample_url(data: Optional[bytes]) -> Optional[str]:
    """The ``url`` of a sample's ``.json`` member (img2dataset writes one), or None."""
    try:
        obj = json.loads(data) if data else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    url = obj.get("url") if isinstance(obj, dict) else None
    return url if isinstance(url, str) and url.strip() else None


def _sample_item(tar_name: str, key: str, members: Dict[str, bytes]) -> RawItem:
    full_key = f"{tar_name}/{key}"
    def last(e):
        return "." + e.rsplit(".", 1)[-1]
    image_ext = next((e for e in members if last(e) in IMAGE_EXTS), None) or \
        next((e for e in members if last(e) in OTHER_IMAGE_EXTS), None)
    sidecars = [(kind, members[kind]) for kind in ("txt", "json") if kind in members]
    if image_ext is None:
        url = _sample_url(members.get("json"))
        if url:
            return RawItem(key=full_key, sidecars=sidecars,
                           error=("remote_url", f"{full_key}: only a url ({url}), no image member"))
        return RawItem(key=full_key, sidecars=sidecars,
                       error=("missing_file", f"{full_key}: sample has no image member ({sorted(members)})"))
    return RawItem(key=full_key, image_bytes=members[image_ext], sidecars=sidecars)


def iter_webdataset(paths: Sequence[str]) -> Iterator[RawItem]:
    """Items of WebDataset tar shards, in the given order; consecutive members of one key form a sample."""
    for path in paths:
        tar_name = os.path.basename(path)
        key, members = None, {}
        try:
            with tarfile.open(path, "r|*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    k, ext = _split_key(info.name)
                    if k != key and key is not None:  # the previous sample is complete
                        yield _sample_item(tar_name, key, members)
                        members = {}
                    key = k
                    data = tar.extractfile(info).read()
                    if len(data) != info.size:
                        raise tarfile.ReadError(f"member {info.name} truncated")
                    members[ext] = data
            if key is not None:
                yield _sample_item(tar_name, key, members)
        except (tarfile.TarError, OSError, EOFError) as e:
            yield RawItem(key=f"{tar_name}/<after {key}>" if key else f"{tar_name}/<start>",
                          error=("corrupt_tar", f"{path}: {type(e).__name__}: {e}; the samples before "
                                                f"{key!r} were kept, it and the rest of the tar are lost"))


def check_options(kind: str, image_column: Optional[str] = None, caption_column: Optional[str] = None,
                  image_root: Optional[str] = None) -> None:
    """Raises ``ValueError`` for an unknown form or an option that does not apply to it."""
    if kind not in FORMS:
        raise ValueError(f"unknown input form {kind!r}: expected one of {FORMS}")
    if kind in ("folder", "imagefolder", "webdataset") and image_root:
        raise ValueError(f"image_root does not apply to the {kind} form (its images are found by their own paths)")
    if kind in ("folder", "webdataset", "coco") and image_column:
        raise ValueError(f"image_column does not apply to the {kind} form")
    if kind == "coco" and caption_column:
        raise ValueError("caption_column does not apply to COCO (its captions are the annotations)")
    if kind == "preference" and (image_column or caption_column):
        raise ValueError(f"image_column and caption_column do not apply to the preference form (its columns are "
                         f"{', '.join(preference.COLUMNS)}: data/preference.py)")


def iter_source(kind: str, paths: Union[str, Sequence[str]], image_root: Optional[str] = None,
                image_column: Optional[str] = None,
                caption_column: Optional[str] = None) -> Iterator[Union[RawItem, PairItem]]:
    """Items of ``paths`` (files, or folders for ``folder`` / ``imagefolder``) of form ``kind`` (``FORMS``):
    ``RawItem`` each, ``PairItem`` each for ``preference``.

    ``image_root``: base of relative image paths of manifests, Parquet and COCO (default: the file's
    folder; COCO's split folder). ``image_column`` / ``caption_column``: the row fields holding the
    image and the untyped caption (default: ``IMAGE_COLUMNS`` / ``CAPTION_COLUMNS``, first present).
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    check_options(kind, image_column, caption_column, image_root)
    if kind == "webdataset":
        yield from iter_webdataset(paths)
        return
    for p in paths:
        if kind == "folder":
            yield from iter_folder(p)
        elif kind == "imagefolder":
            yield from iter_imagefolder(p, image_column, caption_column)
        elif kind == "jsonl":
            yield from iter_jsonl(p, image_root, image_column)
        elif kind == "csv":
            yield from iter_csv(p, image_root, image_column, caption_column)
        elif kind == "parquet":
            yield from iter_parquet(p, image_root, image_column)
        elif kind == "preference":
            yield from iter_preference(p, image_root)
        else:
            yield from iter_coco(p, image_root)


# -- telling the form of an input ---------------------------------------------------------------
_FILE_FORMS = ((".jsonl", "jsonl"), (".csv", "csv"), (".parquet", "parquet"), (".json", "coco"),
               *((ext, "webdataset") for ext in TAR_EXTS))


def _ext(name: str) -> str:
    lower = name.lower()
    for ext in TAR_EXTS:
        if lower.endswith(ext):
            return ext
    return os.path.splitext(lower)[1]


def _is_coco_name(name: str, names: Sequence[str]) -> bool:
    """``captions_*.json`` with no image of the same stem beside it (which would make it a sidecar)."""
    stem = os.path.splitext(name)[0]
    return (name.lower().startswith("captions_") and name.lower().endswith(".json")
            and not any(os.path.splitext(n)[0] == stem and _ext(n) in IMAGE_EXTS + OTHER_IMAGE_EXTS for n in names))


def _scan(root: str, max_depth: Optional[int]) -> Dict[str, List[str]]:
    """What a folder holds, to ``max_depth`` folder levels below it (None: all): paths by category
    (metadata, tar, coco, image, parquet) and ``other`` extension counts as ``{".ext": [paths]}``."""
    found: Dict[str, List[str]] = collections.defaultdict(list)
    top = root.rstrip(os.sep).count(os.sep)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if max_depth is not None and dirpath.rstrip(os.sep).count(os.sep) - top >= max_depth:
            dirnames[:] = []
        for n in sorted(filenames):
            full, ext = os.path.join(dirpath, n), _ext(n)
            if n in METADATA_FILES:
                found["metadata"].append(full)
            elif ext in TAR_EXTS:
                found["tar"].append(full)
            elif _is_coco_name(n, filenames):
                found["coco"].append(full)
            elif ext in IMAGE_EXTS + OTHER_IMAGE_EXTS:
                found["image"].append(full)
            elif ext == ".parquet":
                found["parquet"].append(full)
            else:
                found[ext or "(no extension)"].append(full)
    return found


def detect_form(path: str) -> str:
    """The form (``FORMS``) of an input path; see the module docstring for the rules.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming what was found when
    the form cannot be told.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"input {path!r} does not exist")
    if not os.path.isdir(path):
        ext = _ext(path)
        for e, form in _FILE_FORMS:
            if ext == e:
                return "preference" if form in ("jsonl", "parquet") and is_preference_file(path) else form
        raise ValueError(f"cannot tell the input form of {path!r}: a {ext or 'extension-less'} file, not one of "
                         f"{sorted({e for e, _ in _FILE_FORMS})}; pass --format ({', '.join(FORMS)})")
    for depth in (2, None):
        found = _scan(path, depth)
        for category, form in (("metadata", "imagefolder"), ("tar", "webdataset"), ("coco", "coco"),
                               ("preference", "preference"), ("image", "folder"), ("parquet", "parquet")):
            if (_preference_files(found) if category == "preference" else found.get(category)):
                return form
    other = ", ".join(f"{len(v)} {k}" for k, v in sorted(found.items(), key=lambda kv: -len(kv[1]))) or "nothing"
    raise ValueError(f"cannot tell the input form of folder {path!r}: it holds {other} (no images, "
                     f"{' / '.join(METADATA_FILES)}, .tar, .parquet, captions_*.json or preference .jsonl); "
                     f"pass --format ({', '.join(FORMS)})")


def _preference_files(found: Dict[str, List[str]]) -> List[str]:
    """The preference files (``is_preference_file``) among the ``.jsonl`` and ``.parquet`` files of a
    ``_scan``, sorted."""
    return sorted(f for f in found.get(".jsonl", []) + found.get("parquet", []) if is_preference_file(f))


def expand_input(path: str, kind: str) -> List[str]:
    """The files (or the folder) that ``iter_source(kind, ...)`` reads for one input path: a folder
    of ``parquet`` / ``webdataset`` / ``coco`` / ``jsonl`` / ``csv`` becomes its files of that kind,
    of ``preference`` its preference files (whole tree, sorted); ``folder`` and ``imagefolder``
    need a folder."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"input {path!r} does not exist")
    if kind in ("folder", "imagefolder"):
        if not os.path.isdir(path):
            raise ValueError(f"the {kind} form reads a folder, {path!r} is a file")
        return [path]
    if not os.path.isdir(path):
        return [path]
    found = _scan(path, None)
    category = {"webdataset": "tar", "coco": "coco", "parquet": "parquet"}.get(kind)
    if kind == "preference":
        files = _preference_files(found)
    else:
        files = found.get(category, []) if category else [f for group in found.values() for f in group
                                                          if _ext(f) == f".{kind}"]
    if not files:
        raise ValueError(f"folder {path!r} holds no files of the {kind} form")
    return sorted(files)


def resolve_inputs(paths: Union[str, Sequence[str]], form: str = "auto") -> Tuple[str, List[str]]:
    """(form, the files or folders to read) for input paths, detected (``form="auto"``) or given.

    Inputs of several forms are refused (ingest them separately); see ``detect_form``.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    if form != "auto" and form not in FORMS:
        raise ValueError(f"unknown input form {form!r}: expected auto or one of {FORMS}")
    forms = {p: (detect_form(p) if form == "auto" else form) for p in paths}
    if len(set(forms.values())) > 1:
        raise ValueError("inputs of several forms: " + ", ".join(f"{p} ({k})" for p, k in forms.items())
                         + "; ingest them separately or pass --format")
    kind = forms[paths[0]]
    return kind, [f for p in paths for f in expand_input(p, kind)]
