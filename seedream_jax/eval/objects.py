"""Objects in an image of the synthetic world, found by colour segmentation and shape templates.

The world's palette (``synthetic.COLOURS``, ``synthetic.BACKGROUNDS``), its 3x3 grid and its
shape geometry are known, so detection needs no learned model:

1. background: the background colour nearest to the image's median colour;
2. colour segmentation: each pixel takes the nearest of the object colours and the background,
   and is kept when that is an object colour within ``MAX_COLOUR_DISTANCE`` (RGB, 0-255 units);
   anti-aliased edges, which mix two colours, fall out;
3. objects: 8-connected components of one colour covering at least ``MIN_AREA_FRACTION`` of a
   grid cell;
4. shape: the best intersection-over-union with each shape's template (drawn with the world's own
   geometry), scaled to the component's area and centred on its centroid; size: the template's
   half extent against the world's two sizes; cell: the grid cell holding the centroid.

On the world's own renderings of 64 px and more this recovers the scene spec exactly
(``tests/test_eval_objects.py``); at 32 px a small shape is 5 px across and is not.
"""
import dataclasses
import functools
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from seedream_jax.data import synthetic

MAX_COLOUR_DISTANCE = 60.0  # RGB units; about half the smallest distance between two object colours (119)
MIN_AREA_FRACTION = 0.03    # of a grid cell's area; a small star covers about 0.06 after segmentation
_SUPERSAMPLE = 4            # template anti-aliasing, as in synthetic.render_scene
_SIZE_THRESHOLD = float(np.sqrt(synthetic._SHAPE_HALF["small"] * synthetic._SHAPE_HALF["large"]))
_OBJECT_COLOURS = tuple(synthetic.COLOURS)
_OBJECT_RGB = np.array([synthetic.COLOURS[c][0] for c in _OBJECT_COLOURS], np.float32)  # [8, 3]


@dataclasses.dataclass
class DetectedObject:
    """One object: ``colour``/``shape``/``size``/``position`` are names of the world's tables
    (``position`` the grid cell holding the centroid); ``area`` in pixels; ``centroid`` (y, x)
    in pixels; ``shape_iou`` in [0, 1] the best template's overlap (how shape-like it is)."""
    colour: str
    shape: str
    size: str
    position: str
    area: int
    centroid: Tuple[float, float]
    shape_iou: float

    @property
    def cell(self) -> Tuple[int, int]:
        """(row, column) of the 3x3 grid."""
        return divmod(list(synthetic.POSITIONS).index(self.position), 3)


def estimate_background(image: np.ndarray) -> str:
    """Name of the background colour nearest to the median colour of ``image`` (uint8 [H, W, 3])."""
    median = np.median(np.asarray(image, np.float32).reshape(-1, 3), axis=0)
    names = list(synthetic.BACKGROUNDS)
    dists = [np.linalg.norm(median - np.array(synthetic.BACKGROUNDS[n][0])) for n in names]
    return names[int(np.argmin(dists))]


def colour_labels(image: np.ndarray, background: str) -> np.ndarray:
    """Per-pixel object colour: int32 [H, W], an index into ``synthetic.COLOURS`` (in its order),
    -1 where the pixel is background or no object colour is within ``MAX_COLOUR_DISTANCE``."""
    pixels = np.asarray(image, np.float32)[..., None, :]                          # [H, W, 1, 3]
    palette = np.concatenate([_OBJECT_RGB, np.array([synthetic.BACKGROUNDS[background][0]], np.float32)])
    dist = np.linalg.norm(pixels - palette, axis=-1)                              # [H, W, 9]
    nearest = np.argmin(dist, axis=-1)
    ok = (nearest < len(_OBJECT_COLOURS)) & (np.min(dist, axis=-1) <= MAX_COLOUR_DISTANCE)
    return np.where(ok, nearest, -1).astype(np.int32)


@functools.lru_cache(maxsize=None)
def _template_geometry(shape: str) -> Tuple[float, float]:
    """(area / half^2, centroid y offset / half) of a shape drawn with half extent 1."""
    half, size = 400.0, 1200
    img = Image.new("L", (size, size), 0)
    synthetic._draw_shape(ImageDraw.Draw(img), shape, size / 2, size / 2, half, 255)
    mask = np.asarray(img) > 127
    ys = np.nonzero(mask)[0]
    return float(mask.sum()) / half ** 2, float(ys.mean() - size / 2) / half


def _template_mask(shape: str, half: float, cy: float, cx: float, window: Tuple[int, int, int, int]) -> np.ndarray:
    """Mask bool [y1 - y0, x1 - x0] of ``shape`` with half extent ``half`` px whose centroid is at
    (cy, cx) px, over the pixel window (y0, y1, x0, x1): coverage >= 1/2 after supersampling.
    Continuous coordinates: pixel j spans [j, j + 1)."""
    y0, y1, x0, x1 = window
    s = _SUPERSAMPLE
    _, offset = _template_geometry(shape)
    img = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    centre_y = cy - offset * half  # the drawing centre sits above the centroid for a triangle
    synthetic._draw_shape(ImageDraw.Draw(img), shape, (cx - x0) * s, (centre_y - y0) * s, half * s, 255)
    return np.asarray(img.reduce(s)) >= 128


def classify_shape(mask: np.ndarray) -> Tuple[str, float, float]:
    """Best-matching shape of the component ``mask`` (bool [H, W]).

    Returns (shape name, IoU in [0, 1], half extent in px of the matched template).
    """
    ys, xs = np.nonzero(mask)
    area = float(len(ys))
    # Pixel (i, j) covers [j, j+1) x [i, i+1): its centre is at (i + 0.5, j + 0.5).
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    best = ("circle", -1.0, 0.0)
    for shape in synthetic.SHAPES:
        k, _ = _template_geometry(shape)
        half = float(np.sqrt(area / k))
        r = int(np.ceil(1.3 * half)) + 2
        window = (max(0, int(cy) - r), min(mask.shape[0], int(cy) + r + 1),
                  max(0, int(cx) - r), min(mask.shape[1], int(cx) + r + 1))
        template = _template_mask(shape, half, cy, cx, window)
        inter = float(np.logical_and(template, mask[window[0]:window[1], window[2]:window[3]]).sum())
        iou = inter / (float(template.sum()) + area - inter)
        if iou > best[1]:
            best = (shape, iou, half)
    return best


def detect_objects(image: np.ndarray) -> List[DetectedObject]:
    """Objects in ``image`` (uint8 [H, W, 3]), largest first."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"detect_objects expects an RGB image [H, W, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    cell_h, cell_w = h / 3.0, w / 3.0
    min_area = MIN_AREA_FRACTION * cell_h * cell_w
    labels = colour_labels(image, estimate_background(image))
    found = []
    for index, colour in enumerate(_OBJECT_COLOURS):
        components, n = ndimage.label(labels == index, structure=np.ones((3, 3), bool))
        for k in range(1, n + 1):
            mask = components == k
            area = int(mask.sum())
            if area < min_area:
                continue
            shape, iou, half = classify_shape(mask)
            ys, xs = np.nonzero(mask)
            cy, cx = float(ys.mean()) + 0.5, float(xs.mean()) + 0.5
            row, col = min(2, int(cy / cell_h)), min(2, int(cx / cell_w))
            size = "large" if half / min(cell_h, cell_w) > _SIZE_THRESHOLD else "small"
            found.append(DetectedObject(colour, shape, size, list(synthetic.POSITIONS)[row * 3 + col],
                                        area, (cy, cx), round(iou, 4)))
    return sorted(found, key=lambda o: -o.area)
