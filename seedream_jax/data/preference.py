"""Preference data for users: the file format people write, and the pair record ingestion stores.

The format
----------
A preference file is a JSONL file (one JSON object a line) or a Parquet file with these columns:

==========  ===============================  ===========================================================
column      type                             meaning
==========  ===============================  ===========================================================
prompt      str, non-empty                   the prompt both images answer (any language; ``zh`` when it
                                             has a CJK ideograph, else ``en``, unless ``--lang``)
image_a     str path | bytes | struct        the first image: a path relative to the file's folder (or
                                             to ``--image_root``; absolute paths work too; a URL is
                                             skipped as ``remote_url``, nothing is downloaded), or, in
                                             Parquet, the encoded bytes or a Hugging Face ``Image``
                                             struct ``{"bytes", "path"}`` (bytes win, as for images)
image_b     same                             the second image
preferred   ``"a"`` | ``"b"``                which image is preferred; ``"A"`` / ``"B"`` too; any other
                                             value is an unknown label
reason      str, optional                    why (free text, kept in the record)
key         str, optional                    id of the pair (default ``<file name>:<row index>``)
source      str, optional                    corpus / origin id (default ``--source``, else the file name)
==========  ===============================  ===========================================================

Every other JSON-serialisable column is kept in the pair's ``meta``. Images are JPEG, PNG or WebP
and pass the image checks of ingestion (decodable, ``min_side``, ``max_aspect``, ``max_pixels``).
One line of a JSONL file::

    {"prompt": "a red circle above a blue square", "image_a": "img/0001_a.png",
     "image_b": "img/0001_b.png", "preferred": "B", "reason": "the circle in A is green"}

``python tools/ingest.py --input pairs.jsonl --out data/prefs`` ingests it (form ``preference``,
told from the columns; ``--format preference`` forces it). A bad row is skipped and counted by
reason, as for images (``data/ingest.py``): ``bad_manifest_row`` (a line that is not JSON or not an
object), ``bad_utf8``, ``missing_field`` (prompt, image_a, image_b or preferred absent, null or
empty), ``unknown_label``, ``bad_sidecar`` (a prompt or reason that is not text), ``remote_url``,
``missing_file``, ``undecodable`` and the other image reasons, ``same_image`` (A and B are the
same bytes). ``python tools/make_synthetic.py --format pairs`` writes world pairs in this format
(``data/world_preference.py``), and the ``image_pairs`` data source (``data/sources.py``) serves
a pair dataset as {"prompt": [str] * b, "chosen", "rejected": uint8 [b, S, S, 3]}.

The pair record
---------------
A pair dataset is an ArrayRecord dataset (``data/arrayrecord_io.py``) whose entries are pair
records (version ``SCHEMA_VERSION`` = 1), framed like image records (``records.pack_framed``)::

    b"SDP1"        4 bytes, magic
    header_len     uint32 little-endian
    header         UTF-8 JSON {"v", "key", "prompt", "reason", "source", "meta", "chosen_len"}
    chosen         chosen_len bytes: an encoded ``records.Record`` of the preferred image
    rejected       the rest: an encoded ``records.Record`` of the other image

Each image record holds the image bytes exactly as given (after the checks), its format and size,
the prompt as its caption (``{lang: {type: prompt}}``), the pair's source, and
``meta["column"]``: the column it came from (``image_a`` / ``image_b``). The pair's ``meta``
holds ``preferred`` (``"a"`` / ``"b"``, normalised) and the row's extra columns.
"""
import dataclasses
from typing import Any, Dict, Optional

from seedream_jax.data import records

SCHEMA_VERSION = 1
MAGIC = b"SDP1"
REQUIRED_COLUMNS = ("prompt", "image_a", "image_b", "preferred")
IMAGE_COLUMNS = ("image_a", "image_b")
LABELS = ("a", "b")
# Columns with a meaning of their own (the others go to meta).
COLUMNS = REQUIRED_COLUMNS + ("reason", "key", "source")


def parse_label(value: Any) -> Optional[str]:
    """``"a"`` or ``"b"`` for a ``preferred`` value of a / A / b / B (spaces around ignored), else None."""
    if not isinstance(value, str):
        return None
    label = value.strip().lower()
    return label if label in LABELS else None


@dataclasses.dataclass
class PairRecord:
    """One preference pair: ``prompt``, the ``chosen`` (preferred) and ``rejected`` image records,
    the annotator's ``reason`` (may be empty), ``source`` id and ``meta`` (see the module docstring)."""
    key: str
    prompt: str
    chosen: records.Record
    rejected: records.Record
    reason: str = ""
    source: str = ""
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> "PairRecord":
        """Checks the pair's own fields (the image records are checked when encoded); ``RecordError``."""
        if not isinstance(self.key, str) or not self.key:
            raise records.RecordError(f"pair key must be a non-empty string, got {self.key!r}")
        where = f"pair {self.key!r}"
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise records.RecordError(f"{where}: prompt must be a non-empty string")
        for name in ("reason", "source"):
            if not isinstance(getattr(self, name), str):
                raise records.RecordError(f"{where}: {name} must be a string, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.meta, dict):
            raise records.RecordError(f"{where}: meta must be a dict, got {type(self.meta).__name__}")
        return self


def encode_pair(pair: PairRecord) -> bytes:
    """Validates ``pair`` and serialises it to the pair record layout of the module docstring."""
    pair.validate()
    chosen, rejected = records.encode_record(pair.chosen), records.encode_record(pair.rejected)
    header = {"v": SCHEMA_VERSION, "key": pair.key, "prompt": pair.prompt, "reason": pair.reason,
              "source": pair.source, "meta": pair.meta, "chosen_len": len(chosen)}
    return records.pack_framed(MAGIC, header, chosen + rejected, f"pair {pair.key!r}: meta")


def _unpack(data: bytes):
    header, payload = records.unpack_framed(data, MAGIC, SCHEMA_VERSION, "seedream pair record")
    n = header.get("chosen_len")
    if not isinstance(n, int) or not 0 < n < len(payload):
        raise records.RecordError(f"pair {header.get('key')!r}: chosen_len {n!r} does not fit its "
                                  f"{len(payload)} bytes of images")
    return header, payload


def decode_pair_header(data: bytes) -> dict:
    """The JSON header of an encoded pair record (key, prompt, reason, source, meta), images untouched."""
    return _unpack(data)[0]


def decode_pair(data: bytes) -> PairRecord:
    """Parses an encoded pair record, checking both image records (length, CRC32); ``RecordError``."""
    header, payload = _unpack(data)
    n = header["chosen_len"]
    return PairRecord(key=header["key"], prompt=header["prompt"], chosen=records.decode_record(payload[:n]),
                      rejected=records.decode_record(payload[n:]), reason=header["reason"],
                      source=header["source"], meta=header["meta"])
