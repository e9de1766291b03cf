"""The record: one image with its captions and metadata, as stored in every dataset shard.

A record is what an ArrayRecord shard (``data/arrayrecord_io.py``) or the TFDS builder
(``data/tfds_builder.py``) holds per entry, and what ingestion, curation, the Grain pipeline and
the latent cache read and write. A preference dataset holds pair records instead
(``data/preference.py``): a prompt with two of these records, the preferred image first.

Schema (version ``SCHEMA_VERSION`` = 1)
---------------------------------------
=============  ================================  ==========================================
field          type                              meaning
=============  ================================  ==========================================
key            str, non-empty                    id of the record in its corpus (a relative
                                                 path, ``tar/sample``, a manifest key)
image          bytes                             the encoded image exactly as ingested
image_format   ``"jpeg" | "png" | "webp"``       format of ``image`` (from its magic bytes)
width, height  int > 0, pixels                   size of the decoded image after applying its
                                                 EXIF orientation (= ``decode_image`` shape)
captions       {lang: {type: str}}               lang: ISO-639 code (``"en"``, ``"zh"``, ...);
                                                 type in ``CAPTION_TYPES``: ``short``, ``long``,
                                                 ``text`` (text rendering, rendered text quoted:
                                                 English "...", Chinese “...”), ``style``;
                                                 at least one non-empty caption
source         str                               corpus / origin name (may be empty)
scores         {name: float}                     e.g. ``aesthetic``, ``clip``; finite floats
ocr            list[OcrBox]                      text found in the image: ``text``, ``score``
                                                 in [0, 1], ``box`` float [4, 2] of (x, y)
                                                 pixel corners in the ``width`` x ``height``
                                                 frame, clockwise from top-left
spec           dict | None                       synthetic scene spec (JSON), None for real data
meta           dict                              any other JSON metadata (url, license, ...)
=============  ================================  ==========================================

Byte layout of an encoded record (``encode_record``)::

    b"SDR1"                 4 bytes, magic
    header_len              uint32 little-endian
    header                  header_len bytes, UTF-8 JSON object (sorted keys, compact):
                            {"v": version, "key", "format", "width", "height", "captions",
                             "source", "scores", "ocr", "spec", "meta",
                             "image_len": int, "image_crc32": int}
    image                   image_len bytes, the encoded image as given

The image is not re-encoded and sits after the header, so ``decode_header`` reads the metadata
(bucketing by ``width``/``height``, caption sampling) without touching the image bytes, and a
corrupt image or truncated record is caught by the CRC32 / length check (``RecordError``).
Readers accept any version <= ``SCHEMA_VERSION``; a newer version is refused with a clear error.
"""
import dataclasses
import io
import json
import math
import re
import struct
import zlib
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from PIL import Image, ImageOps

SCHEMA_VERSION = 1
MAGIC = b"SDR1"
CAPTION_TYPES = ("short", "long", "text", "style")
IMAGE_FORMATS = ("jpeg", "png", "webp")
_LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
_HEADER = struct.Struct("<4sI")


class RecordError(ValueError):
    """An encoded record or a record field is malformed; the message names the key and field."""


@dataclasses.dataclass(frozen=True)
class OcrBox:
    """One detected text line: ``text``, confidence ``score`` in [0, 1], ``box`` float [4, 2] (x, y) pixels."""
    text: str
    score: float
    box: tuple  # ((x0, y0), (x1, y1), (x2, y2), (x3, y3))

    @classmethod
    def from_any(cls, obj: Any) -> "OcrBox":
        """From an ``OcrBox``, a ``{"text", "score", "box"}`` dict, or any object with those attributes."""
        if isinstance(obj, Mapping):
            text, score, box = obj["text"], obj["score"], obj["box"]
        else:
            text, score, box = obj.text, obj.score, obj.box
        box = np.asarray(box, dtype=np.float64)
        if box.shape != (4, 2):
            raise RecordError(f"OCR box for {text!r} must have shape [4, 2], got {box.shape}")
        return cls(str(text), float(score), tuple((float(x), float(y)) for x, y in box))

    def to_json(self) -> dict:
        return {"text": self.text, "score": self.score, "box": [list(p) for p in self.box]}


@dataclasses.dataclass
class Record:
    """One dataset entry; see the module docstring for the meaning and units of every field."""
    key: str
    image: bytes
    image_format: str
    width: int
    height: int
    captions: Dict[str, Dict[str, str]]
    source: str = ""
    scores: Dict[str, float] = dataclasses.field(default_factory=dict)
    ocr: List[OcrBox] = dataclasses.field(default_factory=list)
    spec: Optional[dict] = None
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> "Record":
        """Checks every field (types, ranges, caption keys); raises ``RecordError`` naming the field."""
        where = f"record {self.key!r}"
        if not isinstance(self.key, str) or not self.key:
            raise RecordError(f"record key must be a non-empty string, got {self.key!r}")
        if not isinstance(self.image, (bytes, bytearray, memoryview)) or len(self.image) == 0:
            raise RecordError(f"{where}: image must be non-empty bytes")
        if self.image_format not in IMAGE_FORMATS:
            raise RecordError(f"{where}: image_format {self.image_format!r} not in {IMAGE_FORMATS}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise RecordError(f"{where}: {name} must be a positive int, got {v!r}")
        validate_captions(self.captions, where)
        if not isinstance(self.source, str):
            raise RecordError(f"{where}: source must be a string, got {type(self.source).__name__}")
        for name, v in self.scores.items():
            if not isinstance(name, str) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RecordError(f"{where}: scores[{name!r}] must be a finite number, got {v!r}")
        self.ocr = [OcrBox.from_any(b) for b in self.ocr]
        if self.spec is not None and not isinstance(self.spec, dict):
            raise RecordError(f"{where}: spec must be a dict or None, got {type(self.spec).__name__}")
        if not isinstance(self.meta, dict):
            raise RecordError(f"{where}: meta must be a dict, got {type(self.meta).__name__}")
        return self

    def caption(self, lang: str, kind: str = "short") -> Optional[str]:
        """The caption of language ``lang`` and type ``kind``, or None."""
        return self.captions.get(lang, {}).get(kind)


def validate_captions(captions: Any, where: str = "captions") -> None:
    """Checks ``{lang: {type: non-empty str}}`` with at least one caption; raises ``RecordError``."""
    if not isinstance(captions, Mapping) or not captions:
        raise RecordError(f"{where}: captions must be a non-empty {{lang: {{type: text}}}} dict, got {captions!r}")
    for lang, by_type in captions.items():
        if not isinstance(lang, str) or not _LANG_RE.match(lang):
            raise RecordError(f"{where}: caption language {lang!r} is not a language code like 'en' or 'zh'")
        if not isinstance(by_type, Mapping) or not by_type:
            raise RecordError(f"{where}: captions[{lang!r}] must be a non-empty {{type: text}} dict")
        for kind, text in by_type.items():
            if kind not in CAPTION_TYPES:
                raise RecordError(f"{where}: caption type {kind!r} (language {lang!r}) not in {CAPTION_TYPES}")
            if not isinstance(text, str) or not text.strip():
                raise RecordError(f"{where}: captions[{lang!r}][{kind!r}] must be a non-empty string")


def sniff_format(data: bytes) -> Optional[str]:
    """Image format from magic bytes: ``"jpeg"``, ``"png"``, ``"webp"`` or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def encode_record(record: Record) -> bytes:
    """Validates ``record`` and serialises it to the byte layout of the module docstring."""
    record.validate()
    image = bytes(record.image)
    header = {
        "v": SCHEMA_VERSION, "key": record.key, "format": record.image_format,
        "width": record.width, "height": record.height,
        "captions": {lang: dict(t) for lang, t in record.captions.items()},
        "source": record.source, "scores": {k: float(v) for k, v in record.scores.items()},
        "ocr": [b.to_json() for b in record.ocr], "spec": record.spec, "meta": record.meta,
        "image_len": len(image), "image_crc32": zlib.crc32(image),
    }
    return pack_framed(MAGIC, header, image, f"record {record.key!r}: spec/meta/scores")


def pack_framed(magic: bytes, header: dict, payload: bytes, what: str) -> bytes:
    """``magic`` (4 bytes) + uint32 LE header length + ``header`` as compact sorted UTF-8 JSON +
    ``payload``: the framing of every encoded record kind (this one, ``data/preference.py``'s pairs).
    ``what`` names the record in the ``RecordError`` raised when ``header`` is not JSON-serialisable."""
    try:
        blob = json.dumps(header, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise RecordError(f"{what} are not JSON-serialisable: {e}") from e
    return _HEADER.pack(magic, len(blob)) + blob + payload


def unpack_framed(data: bytes, magic: bytes = MAGIC, version: int = SCHEMA_VERSION, kind: str = "seedream record"):
    """(header dict, payload memoryview) of ``pack_framed`` bytes; ``RecordError`` when the magic is not
    ``magic`` (the message names ``kind``), the data is truncated, the header is not JSON with an
    integer ``v``, or ``v`` is newer than ``version``."""
    data = memoryview(data)
    if len(data) < _HEADER.size:
        raise RecordError(f"encoded record too short ({len(data)} bytes)")
    found, n = _HEADER.unpack_from(data)
    if found != magic:
        raise RecordError(f"not a {kind} (magic {bytes(found)!r}, expected {magic!r})")
    if _HEADER.size + n > len(data):
        raise RecordError(f"encoded record truncated: header of {n} bytes, record of {len(data)} bytes")
    try:
        header = json.loads(bytes(data[_HEADER.size:_HEADER.size + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"record header is not UTF-8 JSON: {e}") from e
    if not isinstance(header, dict) or not isinstance(header.get("v"), int):
        raise RecordError("record header has no integer version 'v'")
    if header["v"] > version:
        raise RecordError(f"{kind} {header.get('key')!r} has schema version {header['v']}, this code reads "
                          f"<= {version}: upgrade seedream_jax")
    return header, data[_HEADER.size + n:]


def decode_header(data: bytes) -> dict:
    """The JSON header of an encoded record (all fields but the image), without copying the image."""
    return unpack_framed(data)[0]


def decode_record(data: bytes) -> Record:
    """Parses an encoded record and checks its image length and CRC32; raises ``RecordError``."""
    header, image = unpack_framed(data)
    key = header.get("key")
    if len(image) != header["image_len"]:
        raise RecordError(f"record {key!r}: image is {len(image)} bytes, header says {header['image_len']}")
    image = bytes(image)
    if zlib.crc32(image) != header["image_crc32"]:
        raise RecordError(f"record {key!r}: image CRC32 mismatch (corrupt record)")
    return Record(key=key, image=image, image_format=header["format"], width=header["width"],
                  height=header["height"], captions=header["captions"], source=header["source"],
                  scores=header["scores"], ocr=[OcrBox.from_any(b) for b in header["ocr"]],
                  spec=header["spec"], meta=header["meta"])


def open_image(data: bytes) -> Image.Image:
    """PIL image of encoded bytes, fully decoded and EXIF-oriented; raises on truncated/corrupt data."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img


def to_rgb(img: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] RGB array of a PIL image; transparency is composited over white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = (arr / max(arr.max(), 1.0) * 255.0).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes) -> np.ndarray:
    """uint8 [height, width, 3] RGB pixels of encoded image bytes (EXIF orientation applied)."""
    return to_rgb(open_image(data))

