"""Text detection and recognition in images: a thin wrapper around the ``rapidocr-onnxruntime`` wheel.

The wheel ships PP-OCRv4 detection and recognition models (Chinese and English) and the PP-OCR
text-angle classifier as ONNX files and runs them with onnxruntime on the CPU; nothing is
downloaded. The engine loads once per process (``load_engine``, about 0.2 s) and reads a 64 px
image in about 0.15-0.3 s on two idle cores.

Small images are upscaled (bicubic, integer factor) to at least ``MIN_SIDE`` pixels on the
shorter side before reading, which the recogniser needs for glyphs of 10-20 px; the detector
then runs at that size (the wheel's default would enlarge every image to 736 px, 3-4x slower
here and no more accurate on the synthetic world). Boxes are returned in the pixel coordinates
of the image passed in.
"""
import dataclasses
import functools
import math
from typing import List

import numpy as np
from PIL import Image

MIN_SIDE = 320  # px: shorter sides below this are upscaled by an integer factor to at least this


@dataclasses.dataclass
class TextBox:
    """One line of recognised text: ``text``, recognition ``score`` in [0, 1], and ``box`` float32
    [4, 2], the (x, y) pixel corners clockwise from the top left, in input-image coordinates."""
    text: str
    score: float
    box: np.ndarray


@functools.lru_cache(maxsize=1)
def load_engine():
    """The process-wide RapidOCR engine (PP-OCRv4 det + rec, angle classifier); loaded once.
    The detector enlarges images only up to ``MIN_SIDE`` on the shorter side."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
        raise ImportError("OCR needs the rapidocr-onnxruntime wheel: pip install rapidocr-onnxruntime") from e
    return RapidOCR(det_limit_side_len=MIN_SIDE, det_limit_type="min")


def detect_text(image: np.ndarray) -> List[TextBox]:
    """Read the text in ``image`` (uint8 [H, W, 3], RGB) -> one TextBox per detected line, in
    reading order (top to bottom, left to right); [] when there is none."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"detect_text expects uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    factor = max(1, math.ceil(MIN_SIDE / min(h, w)))
    if factor > 1:
        image = np.asarray(Image.fromarray(image).resize((w * factor, h * factor), Image.BICUBIC))
    # RapidOCR takes ndarrays as OpenCV BGR.
    result, _ = load_engine()(np.ascontiguousarray(image[..., ::-1]))
    if not result:
        return []
    return [TextBox(text=str(text), score=float(score), box=np.asarray(box, np.float32).reshape(4, 2) / factor)
            for box, text, score in result]
