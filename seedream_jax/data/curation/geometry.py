"""Resolution and aspect-ratio filters; they read ``width`` / ``height`` only (no decoding)."""
from typing import Optional

from seedream_jax.data.curation.base import Drop, Filter


class ResolutionFilter(Filter):
    """Drops ``too_small`` (shorter side < ``min_side`` or pixels < ``min_pixels``) and ``too_large``
    (longer side > ``max_side`` or pixels > ``max_pixels``) records; sizes in pixels, None = no bound."""
    name = "resolution"

    def __init__(self, min_side: Optional[int] = None, min_pixels: Optional[int] = None,
                 max_side: Optional[int] = None, max_pixels: Optional[int] = None):
        super().__init__()
        self.min_side, self.min_pixels, self.max_side, self.max_pixels = min_side, min_pixels, max_side, max_pixels

    def check(self, record):
        w, h = record.width, record.height
        if self.min_side is not None and min(w, h) < self.min_side:
            return Drop("too_small", f"{w}x{h}: shorter side < {self.min_side}")
        if self.min_pixels is not None and w * h < self.min_pixels:
            return Drop("too_small", f"{w}x{h}: {w * h} pixels < {self.min_pixels}")
        if self.max_side is not None and max(w, h) > self.max_side:
            return Drop("too_large", f"{w}x{h}: longer side > {self.max_side}")
        if self.max_pixels is not None and w * h > self.max_pixels:
            return Drop("too_large", f"{w}x{h}: {w * h} pixels > {self.max_pixels}")
        return record


class AspectFilter(Filter):
    """Drops ``bad_aspect`` records whose width / height lies outside [1 / max_aspect, max_aspect]
    (or the explicit [min_ratio, max_ratio] when given)."""
    name = "aspect"

    def __init__(self, max_aspect: float = 4.0, min_ratio: Optional[float] = None, max_ratio: Optional[float] = None):
        super().__init__()
        self.min_ratio = min_ratio if min_ratio is not None else 1.0 / max_aspect
        self.max_ratio = max_ratio if max_ratio is not None else max_aspect

    def check(self, record):
        ratio = record.width / record.height
        if not self.min_ratio <= ratio <= self.max_ratio:
            return Drop("bad_aspect", f"{record.width}x{record.height}: w/h {ratio:.3f} outside "
                                      f"[{self.min_ratio:.3f}, {self.max_ratio:.3f}]")
        return record
