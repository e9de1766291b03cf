"""Image degradations for the aesthetic/structure reward: a clean world rendering made worse in one way.

Every degradation is a pure NumPy function ``(image, scene, rng) -> image``: ``image`` uint8
[S, S, 3] (any S; square or not), ``scene`` the ``synthetic.Scene`` it shows (only the kinds that
need the spec read it), ``rng`` a ``np.random.Generator`` that draws every parameter, so the output
is a function of (image, scene, rng state). The result is uint8 of the same shape. Lengths are
fractions of the image's shorter side ``S`` (so a degradation looks alike at every size; the pixel
figures below are at S = 64); grey levels are on the 0-255 scale. ``DEGRADATIONS`` lists them in
order:

  blur          Gaussian blur, sigma ~ U(0.016, 0.04) S (1.0-2.6 px), reflected at the borders.
  noise         Gaussian pixel noise, independent per pixel and channel, sigma ~ U(8, 20) grey levels.
  jpeg          a PIL JPEG round trip at quality ~ U{5..15} (4:2:0 chroma): blocks, ringing, colour bleed.
  colour_cast   one offset added to every pixel, per channel: a random direction of length
                ~ U(30, 60) grey levels, redrawn while it would carry the scene's background to
                within 20 of a world background colour (so the cast never looks like another scene).
  low_contrast  pixels pulled toward the image's mean grey m: m + a (x - m), a ~ U(0.3, 0.55).
  broken_shape  every object of the scene cut: inside a mask the pixels become those of the same
                scene rendered without that object (so the background, style and the other objects
                show through). The mask is, drawn uniformly: a band through the object (width
                U(0.5, 0.8) of its half extent, any angle, through a point within 0.3 half extents
                of its centre), a wedge from its centre (70-130 degrees), or a clip (the half plane
                beyond a line U(-0.2, 0.3) half extents from the centre, any direction); each mask
                is kept inside the object's grid cell, so no cut reaches another object.
  clutter       U{8..16} strokes and specks in colours of the world's palette visible on the
                scene's background: a stroke is a line of length U(0.05, 0.14) S and width
                U(0.016, 0.03) S (1-2 px), a speck a disc of radius U(0.012, 0.03) S; one in three is a speck.

Masks and strokes are drawn at 4x and box-filtered down, as ``synthetic.render_scene`` draws, so
their edges are anti-aliased like the world's own.
"""
import collections
import io
from typing import Callable, Dict

import numpy as np
from PIL import Image, ImageDraw

from seedream_jax.data import synthetic
from seedream_jax.data.synthetic import Scene

Degradation = Callable[[np.ndarray, Scene, np.random.Generator], np.ndarray]
_SUPERSAMPLE = 4


def _side(image: np.ndarray) -> int:
    return min(image.shape[0], image.shape[1])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 [H, W, 3] blurred by a separable Gaussian of ``sigma`` px (borders reflected) -> float32."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    x = image.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return x


def blur(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(gaussian_blur(image, rng.uniform(0.016, 0.04) * _side(image)))


def noise(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(8.0, 20.0)
    return _to_uint8(image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32))


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 [H, W, 3] through a PIL JPEG encode/decode at ``quality`` (1-95, 4:2:0 chroma)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def jpeg(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    return jpeg_roundtrip(image, int(rng.integers(5, 16)))


def colour_cast(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    backgrounds = np.array([rgb for rgb, _ in synthetic.BACKGROUNDS.values()], np.float32)
    own = np.array(synthetic.BACKGROUNDS[scene.background][0], np.float32)
    for _ in range(100):
        direction = rng.normal(size=3)
        offset = direction / np.linalg.norm(direction) * rng.uniform(30.0, 60.0)
        cast = np.clip(own + offset, 0, 255)
        if np.min(np.linalg.norm(backgrounds - cast, axis=1)) >= 20.0:
            break
    return _to_uint8(image.astype(np.float32) + offset.astype(np.float32))


def low_contrast(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    mean = float(x.mean())
    return _to_uint8(mean + rng.uniform(0.3, 0.55) * (x - mean))


def _mask(height: int, width: int, draw_fn) -> np.ndarray:
    """A soft mask float32 [H, W] in [0, 1]: ``draw_fn(draw, scale)`` fills white at 4x (coordinates
    in pixels of the final size are multiplied by ``scale``), box-filtered down."""
    s = _SUPERSAMPLE
    img = Image.new("L", (width * s, height * s), 0)
    draw_fn(ImageDraw.Draw(img), s)
    return np.asarray(img.reduce(s), np.float32) / 255.0


def _cut(draw: ImageDraw.ImageDraw, s: int, cx: float, cy: float, half: float, rng: np.random.Generator) -> None:
    """One cut of an object centred at (cx, cy) px with half extent ``half`` px, drawn at scale ``s``."""
    angle = rng.uniform(0.0, 2 * np.pi)
    u = np.array([np.cos(angle), np.sin(angle)])   # along the cut
    v = np.array([-u[1], u[0]])                     # across it
    centre = np.array([cx, cy])
    reach = 3.0 * half
    kind = int(rng.integers(3))
    if kind == 0:    # band through the object
        p = centre + rng.uniform(-0.3, 0.3) * half * v
        w = 0.5 * rng.uniform(0.5, 0.8) * half
        corners = [p - reach * u - w * v, p + reach * u - w * v, p + reach * u + w * v, p - reach * u + w * v]
    elif kind == 1:  # wedge from the centre
        span = np.deg2rad(rng.uniform(70.0, 130.0))
        rays = [angle + span * t for t in np.linspace(0.0, 1.0, 9)]
        corners = [centre] + [centre + reach * np.array([np.cos(a), np.sin(a)]) for a in rays]
    else:            # clip: everything beyond a line near the centre
        p = centre + rng.uniform(-0.2, 0.3) * half * v
        corners = [p - reach * u, p + reach * u, p + reach * u + reach * v, p - reach * u + reach * v]
    draw.polygon([(float(x) * s, float(y) * s) for x, y in corners], fill=255)


def _cell_window(obj, height: int, width: int) -> np.ndarray:
    """float32 [H, W]: 1 on the pixels whose centres lie in ``obj``'s grid cell (which holds the
    whole object), so the cuts of different objects never overlap."""
    row, col = obj.cell
    ys, xs = (np.arange(height) + 0.5) * 3 / height, (np.arange(width) + 0.5) * 3 / width
    return ((np.floor(ys) == row)[:, None] & (np.floor(xs) == col)[None, :]).astype(np.float32)


def broken_shape(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    for i, obj in enumerate(scene.objects):
        others = Scene(scene.background, [o for j, o in enumerate(scene.objects) if j != i], scene.text, scene.style)
        without = synthetic.render_scene(others, (h, w)).astype(np.float32)
        cx, cy, half = synthetic.object_geometry(obj, h, w)
        mask = _mask(h, w, lambda draw, s: _cut(draw, s, cx, cy, half, rng)) * _cell_window(obj, h, w)
        out = out * (1.0 - mask[..., None]) + without * mask[..., None]
    return _to_uint8(out)


def clutter(image: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    side, s = _side(image), _SUPERSAMPLE
    colours = synthetic.visible_colours(scene.background)
    canvas = Image.fromarray(image).resize((w * s, h * s), Image.NEAREST)  # box-filtered back: untouched pixels stay
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(8, 17))):
        rgb = synthetic.COLOURS[colours[int(rng.integers(len(colours)))]][0]
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 1 / 3:
            r = rng.uniform(0.012, 0.03) * side
            draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=rgb)
        else:
            length, a = rng.uniform(0.05, 0.14) * side, rng.uniform(0, 2 * np.pi)
            width = max(1, round(rng.uniform(0.016, 0.03) * side * s))
            draw.line([x * s, y * s, (x + length * np.cos(a)) * s, (y + length * np.sin(a)) * s], fill=rgb,
                      width=width)
    return np.asarray(canvas.reduce(s))


DEGRADATIONS: Dict[str, Degradation] = collections.OrderedDict(
    blur=blur, noise=noise, jpeg=jpeg, colour_cast=colour_cast, low_contrast=low_contrast,
    broken_shape=broken_shape, clutter=clutter)
KINDS = tuple(DEGRADATIONS)


def degrade(image: np.ndarray, scene: Scene, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``DEGRADATIONS[kind](image, scene, rng)``; checks the kind and the image (uint8 [H, W, 3])."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {KINDS}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"degrade: expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    return DEGRADATIONS[kind](image, scene, rng)
