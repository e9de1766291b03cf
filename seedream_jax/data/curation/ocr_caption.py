"""OCR text detection: text boxes into ``Record.ocr`` and text-rendering captions with the quoted text.

``detect_fn(image uint8 [H, W, 3]) -> list of boxes`` with ``.text``, ``.score`` in [0, 1] and
``.box`` float [4, 2] (x, y) pixel corners; the default is ``seedream_jax.data.ocr.detect_text``
(PP-OCRv4 Chinese/English models of ``rapidocr-onnxruntime``), imported on first use. Boxes below
``min_score`` or with blank text are ignored. For a record with text, the ``text`` caption of each
of its languages among en / zh (en when it has neither) is written, following the captions'
quoting convention (English "...", Chinese “...”):

    en: <short caption>, with the text "OPEN" and "24 HOURS"
    zh: <short caption>，上面写着“营业中”和“欢迎光临”

An existing ``text`` caption is kept unless ``overwrite``. Optional drops: ``no_text`` when
``require_text`` and nothing is found; ``text_area`` when the boxes cover more than
``max_text_area`` of the image (documents, screenshots).
"""
from typing import Callable, List, Optional, Sequence

import numpy as np

from seedream_jax.data import records as records_lib
from seedream_jax.data.curation.base import Drop, Filter, pixels


def _default_detector():
    try:
        from seedream_jax.data import ocr
    except ImportError as e:
        raise ImportError("OcrCaptioner needs seedream_jax.data.ocr (rapidocr-onnxruntime) or an explicit "
                          f"detect_fn: {e}") from e
    return ocr.detect_text


def polygon_area(box: np.ndarray) -> float:
    """Area in square pixels of a polygon float [N, 2] (shoelace formula)."""
    x, y = box[:, 0], box[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def text_caption(lang: str, texts: Sequence[str], base: Optional[str]) -> str:
    """Text-rendering caption in ``lang`` ("en" or "zh") quoting ``texts`` after the ``base`` caption."""
    if lang == "zh":
        quoted = "和".join(f"“{t}”" for t in texts)
        return f"{base.rstrip('。')}，上面写着{quoted}" if base else f"一张写着{quoted}的图片"
    quoted = " and ".join(f'"{t}"' for t in texts)
    return f"{base.rstrip('.')}, with the text {quoted}" if base else f"an image with the text {quoted}"


class OcrCaptioner(Filter):
    """See the module docstring. ``max_texts``: at most this many distinct strings are quoted."""
    name = "ocr"

    def __init__(self, detect_fn: Optional[Callable] = None, min_score: float = 0.5, require_text: bool = False,
                 max_text_area: Optional[float] = None, overwrite: bool = False, max_texts: int = 8):
        super().__init__()
        self._detect_fn = detect_fn
        self.min_score, self.require_text, self.max_text_area = min_score, require_text, max_text_area
        self.overwrite, self.max_texts = overwrite, max_texts

    @property
    def detect_fn(self):
        if self._detect_fn is None:
            self._detect_fn = _default_detector()
        return self._detect_fn

    def detect(self, record) -> List[records_lib.OcrBox]:
        """The record's confident text boxes, as ``OcrBox`` in the record's pixel frame."""
        found = self.detect_fn(pixels(record))
        return [records_lib.OcrBox.from_any(b) for b in found if b.score >= self.min_score and b.text.strip()]

    def check(self, record):
        boxes = self.detect(record)
        if not boxes:
            return Drop("no_text", "no text detected") if self.require_text else record
        if self.max_text_area is not None:
            area = sum(polygon_area(np.asarray(b.box)) for b in boxes) / (record.width * record.height)
            if area > self.max_text_area:
                return Drop("text_area", f"text covers {area:.2f} of the image > {self.max_text_area}")
        texts = list(dict.fromkeys(b.text.strip() for b in boxes))[:self.max_texts]
        langs = [lang for lang in ("en", "zh") if lang in record.captions] or ["en"]
        for lang in langs:
            by_type = record.captions.setdefault(lang, {})
            if "text" in by_type and not self.overwrite:
                continue
            by_type["text"] = text_caption(lang, texts, by_type.get("short") or by_type.get("long"))
        record.ocr = boxes
        self.stats.annotated += 1
        return record
