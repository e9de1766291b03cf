"""The input forms of ingestion, each enumerated as a deterministic stream of ``RawItem``.

- **folder**: a directory tree of images (``.jpg .jpeg .png .webp``; other image extensions are
  enumerated too and skipped as ``unsupported_format``) with sidecar captions of the same stem:
  ``cat.jpg`` + ``cat.txt`` and/or ``cat.json``. A sidecar without an image is an item whose
  image is missing (``missing_file``). Walk order: sorted paths.
- **manifest**: a JSONL file (one JSON object a line) or a Parquet file, one row per image. The
  image is a path column (``path``, ``image_path``, ``file`` or ``image`` as a string; relative
  paths resolve against ``image_root``, default the manifest's folder) or encoded bytes in an
  ``image`` column (bytes, or ``{"bytes": ...}`` as Hugging Face datasets store it).
- **webdataset**: tar shards; members are grouped into samples by key (the member path up to the
  first dot of its file name), e.g. ``0001.jpg``, ``0001.txt``, ``0001.json``. A tar that is
  corrupt or truncated yields its readable samples and then one ``corrupt_tar`` item.

Captions and metadata come from fields with one schema for JSON sidecars, WebDataset ``.json``
members and manifest rows (``parse_fields``): ``captions`` (``{lang: {type: text}}``; this, ``scores`` and ``spec`` may also
be JSON strings), ``caption`` (language detected, type ``txt_caption_type``), ``caption_<lang>``,
``<type>_<lang>`` (e.g. ``long_zh``), ``source``, ``scores`` (dict) and ``score_<name>``,
``spec`` (dict), ``key``; every other JSON-serialisable field is kept in ``meta``. A ``.txt``
sidecar is one caption (language detected, type ``txt_caption_type``); JSON captions win
where both give the same language and type.
"""
import dataclasses
import json
import os
import re
import tarfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from seedream_jax.data.records import CAPTION_TYPES

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
OTHER_IMAGE_EXTS = (".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jxl", ".jp2", ".ico")
SIDECAR_EXTS = (".txt", ".json")
PATH_COLUMNS = ("path", "image_path", "file", "image")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_TYPED = re.compile(r"^(?P<type>%s)_(?P<lang>[a-z]{2,3})$" % "|".join(CAPTION_TYPES))
_CAPTION_LANG = re.compile(r"^caption_(?P<lang>[a-z]{2,3})$")
_SCORE = re.compile(r"^score_(?P<name>\w+)$")
_RESERVED = {"captions", "caption", "source", "scores", "spec", "key", "width", "height", *PATH_COLUMNS}


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


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
    """How untyped captions are filed: language (``"auto"`` = zh if any CJK character, else en) and type."""
    lang: str = "auto"
    txt_caption_type: str = "short"


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
    for name, value in obj.items():
        if name in _RESERVED or value is None:
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
    if obj.get("caption") is not None:
        text = obj["caption"]
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


# -- manifests -----------------------------------------------------------------------------------
def _row_item(row: Any, index: int, image_root: str, manifest: str) -> RawItem:
    key = f"{os.path.basename(manifest)}:{index}"
    if not isinstance(row, dict):
        return RawItem(key=key, error=("bad_manifest_row", f"{manifest} row {index}: not a JSON object"))
    image_bytes = image_path = None
    for col in PATH_COLUMNS:
        value = row.get(col)
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            image_bytes = bytes(value)
            break
        if isinstance(value, str) and value:
            image_path = value if os.path.isabs(value) else os.path.join(image_root, value)
            key = value
            break
    if row.get("key") is not None:
        key = str(row["key"])
    if image_bytes is None and image_path is None:
        return RawItem(key=key, error=("bad_manifest_row",
                                       f"{manifest} row {index}: no image column (one of {PATH_COLUMNS})"))
    return RawItem(key=key, image_path=image_path, image_bytes=image_bytes, fields=row)


def iter_jsonl(path: str, image_root: Optional[str] = None) -> Iterator[RawItem]:
    """Items of a JSONL manifest, one per non-empty line; unreadable lines become error items."""
    root = image_root or os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawItem(key=f"{os.path.basename(path)}:{index}",
                              error=("bad_utf8", f"{path} line {index + 1}: {e}"))
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield RawItem(key=f"{os.path.basename(path)}:{index}",
                              error=("bad_manifest_row", f"{path} line {index + 1}: {e}"))
                continue
            yield _row_item(row, index, root, path)


def iter_parquet(path: str, image_root: Optional[str] = None, batch_size: int = 256) -> Iterator[RawItem]:
    """Items of a Parquet manifest, read in row batches (needs ``pyarrow``)."""
    import pyarrow.parquet as pq
    root = image_root or os.path.dirname(os.path.abspath(path))
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            yield _row_item(row, index, root, path)
            index += 1


# -- WebDataset ----------------------------------------------------------------------------------
def _split_key(member_name: str) -> Tuple[str, str]:
    folder, base = os.path.split(member_name)
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _sample_item(tar_name: str, key: str, members: Dict[str, bytes]) -> RawItem:
    full_key = f"{tar_name}/{key}"
    def last(e):
        return "." + e.rsplit(".", 1)[-1]
    image_ext = next((e for e in members if last(e) in IMAGE_EXTS), None) or \
        next((e for e in members if last(e) in OTHER_IMAGE_EXTS), None)
    sidecars = [(kind, members[kind]) for kind in ("txt", "json") if kind in members]
    if image_ext is None:
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


def iter_source(kind: str, paths: Union[str, Sequence[str]], image_root: Optional[str] = None) -> Iterator[RawItem]:
    """Dispatches ``kind`` in ``folder | jsonl | parquet | webdataset``."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if kind == "folder":
        for p in paths:
            yield from iter_folder(p)
    elif kind == "jsonl":
        for p in paths:
            yield from iter_jsonl(p, image_root)
    elif kind == "parquet":
        for p in paths:
            yield from iter_parquet(p, image_root)
    elif kind == "webdataset":
        yield from iter_webdataset(paths)
    else:
        raise ValueError(f"unknown input kind {kind!r}: expected folder, jsonl, parquet or webdataset")


def guess_kind(path: str) -> str:
    """Input kind from a path: a directory is a folder, else by extension (.jsonl, .parquet, .tar)."""
    if os.path.isdir(path):
        return "folder"
    lower = path.lower()
    for ext, kind in ((".jsonl", "jsonl"), (".parquet", "parquet"), (".tar", "webdataset"),
                      (".tar.gz", "webdataset"), (".tgz", "webdataset")):
        if lower.endswith(ext):
            return kind
    raise ValueError(f"cannot tell the input kind of {path!r}: pass kind= (folder, jsonl, parquet, webdataset)")
