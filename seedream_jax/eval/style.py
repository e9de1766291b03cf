"""Style attributes of an image of the synthetic world, read back by image statistics.

The world draws four style attributes (``synthetic.STYLES``): palette, lighting, texture and
composition. Each is decided here by a deterministic statistic with a threshold halfway between
what the world's renderer produces for the competing values. With the scene (``scenes``: the
spec the image was drawn from, or sampled for; its ``style`` is ignored) the scorer knows the
background colour, where every shape, shadow and word lies and the shapes' colours:

- masks: coverage in [0, 1] of the shapes, of the shapes shifted as their drop shadows would be,
  and of the word, drawn with the world's own geometry; *background* pixels are those that none
  of them touches (grown by one pixel) and that lie inside the frame's ring;
- lighting: on background pixels, ``w = mean log(obs_R / bg_R) - mean log(obs_B / bg_B)`` is
  log(1.06 / 0.86) = +0.21 under warm light, log(0.88 / 1.08) = -0.20 under cool, about 0
  otherwise (a striped beige background moves it by -0.03): warm above +0.1, cool below -0.1;
  else the slope of ``log(luminance / bg luminance)`` against the squared radius
  ``rho = (y^2 + x^2) / 2`` (image coordinates in [-1, 1]) is about ``-0.5`` under the vignette
  (which multiplies by ``1 - 0.4 rho``) and 0 otherwise: vignette below -0.2, else flat. The
  chosen lighting gives a multiplier field ``L [H, W, 3]`` used below;
- texture: on background pixels whose four neighbours are background too, the median absolute
  Laplacian residual of the luminance (``lum - mean of the 4 neighbours``, divided by ``L``) is
  about 4 grey levels under grain (+-10 uniform per pixel) and under 0.5 otherwise: grain above
  1.5; else the first harmonic of the luminance along ``column - row`` at the stripes' period
  (``min(H, W) / 4`` px; phase-free) relative to the stripes' lift (12% of ``255 - bg``): about
  0.6 for stripes (a square wave's 2/pi), 0 otherwise: stripes above 0.3;
- palette: over each shape's interior pixels (full coverage) the median of
  ``obs - clip(colour(palette) * L)`` per channel (a median commutes with the clipping at 255,
  so grain does not bias it), summed in absolute value over channels and shapes, for each of the
  palette's recolourings (plain; pastel: 45% toward white; muted: 40% toward grey): the least;
- composition: the median of ``obs / (bg * L)`` over the outer ring (the frame's width,
  4% of the shorter side) is 0.55 on a frame and 1 without: framed below 0.77; else the drop
  shadow's darkening ``d`` (0.4 under the world's shadows, 0 without), fitted by least squares
  from ``obs = (sum_k c_k colour_k + (1 - sum_k c_k) bg - d s bg) L`` over the pixels the visible
  shadow covers by ``s > 0`` (``c_k`` the shapes' coverage, colours under the palette read
  above; partly covered edge pixels included: at 64 px a small shape's shadow is offset by
  under a pixel): shadow above 0.2, else plain.

Without scenes (``scenes=None``) a scene-free fallback reads what needs no spec: texture (the
same statistics over pixels near the image's median colour), lighting only as vignette or not
(warm light over light grey looks like beige, so warm/cool need the background), the frame
(the outer ring against the ring just inside it); palette and shadow come back as ``None``.

On the world's own renders (random scenes and styles, 64 and 128 px) every attribute is read
with accuracy >= 0.95 (``tests/test_style_scorer.py``; figures in benchmarks/RESULTS.md).
"""
import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from seedream_jax.data import synthetic

ATTRIBUTES = tuple(synthetic.STYLES)  # palette, lighting, texture, composition
_SS = 4  # supersampling of the masks, as in synthetic.render_scene

WARM_THRESHOLD = 0.1        # |log(R/B) shift| above which the light is warm (+) or cool (-)
VIGNETTE_SLOPE = -0.2       # d log(lum) / d rho below which the light is a vignette
GRAIN_THRESHOLD = 1.5       # median |Laplacian residual| (grey levels) above which there is grain
STRIPE_THRESHOLD = 0.3      # stripe harmonic / stripe lift above which the background is striped
FRAME_THRESHOLD = 0.77      # outer ring / background below which the picture is framed
SHADOW_THRESHOLD = 0.2      # fitted shadow darkening above which the shapes cast shadows

SceneLike = Union[synthetic.Scene, Mapping]


def _as_scene(scene: SceneLike) -> synthetic.Scene:
    """A spec without its style (the scorer must not read the answer)."""
    if isinstance(scene, Mapping):
        scene = synthetic.Scene.from_dict(dict(scene))
    return dataclasses.replace(scene, style=None)


def _coverage(draw_fn, h: int, w: int) -> np.ndarray:
    """float32 [H, W] in [0, 1]: what ``draw_fn(draw, H * SS, W * SS)`` fills, box-filtered down."""
    img = Image.new("L", (w * _SS, h * _SS), 0)
    draw_fn(ImageDraw.Draw(img), h * _SS, w * _SS)
    return np.asarray(img.reduce(_SS), np.float32) / 255.0


def _shape_masks(scene: synthetic.Scene, h: int, w: int):
    """(per-shape coverage [K, H, W], coverage [H, W] of the visible part of the drop shadows (the
    shapes drawn over them), word coverage [H, W])."""
    shapes = []
    for obj in scene.objects:
        def one(draw, hh, ww, obj=obj):
            cx, cy, half = synthetic.object_geometry(obj, hh, ww)
            synthetic._draw_shape(draw, obj.shape, cx, cy, half, 255)
        shapes.append(_coverage(one, h, w))

    def shadows(draw, hh, ww):  # as render_scene draws them: each shape over the shadows
        for obj in scene.objects:
            cx, cy, half = synthetic.object_geometry(obj, hh, ww)
            off = half * 0.18
            synthetic._draw_shape(draw, obj.shape, cx + off, cy + off, half, 255)
            synthetic._draw_shape(draw, obj.shape, cx, cy, half, 0)
    shadow = _coverage(shadows, h, w)
    if scene.text is not None:
        word = _coverage(lambda draw, hh, ww: synthetic._draw_text(draw, scene.text, ww, hh, 255), h, w)
    else:
        word = np.zeros((h, w), np.float32)
    return np.stack(shapes), shadow, word


def _grow(mask: np.ndarray, r: int = 1) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        g = out.copy()
        g[1:] |= out[:-1]
        g[:-1] |= out[1:]
        g[:, 1:] |= out[:, :-1]
        g[:, :-1] |= out[:, 1:]
        out = g
    return out


def _frame_width(h: int, w: int) -> float:
    """The frame's width in px, as ``synthetic._draw_backdrop`` draws it."""
    return max(1, round(min(h, w) * _SS * 0.04)) / _SS


def _rho(h: int, w: int) -> np.ndarray:
    """``(y^2 + x^2) / 2`` over the image, coordinates in [-1, 1] as the world's vignette uses."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return ((yy ** 2 + xx ** 2) / 2.0).astype(np.float32)


def _light_field(lighting: str, h: int, w: int) -> np.ndarray:
    """float32 [H, W, 3]: the world's lighting multiplier for ``lighting``."""
    if lighting in synthetic._LIGHT:
        return np.broadcast_to(np.asarray(synthetic._LIGHT[lighting], np.float32), (h, w, 3))
    if lighting == "vignette":
        return np.repeat((1.0 - synthetic._VIGNETTE * _rho(h, w))[..., None], 3, axis=-1)
    return np.ones((h, w, 3), np.float32)


def _luminance(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _laplacian_residual(lum: np.ndarray) -> np.ndarray:
    """[H-2, W-2]: each interior pixel minus the mean of its 4 neighbours."""
    return lum[1:-1, 1:-1] - 0.25 * (lum[:-2, 1:-1] + lum[2:, 1:-1] + lum[1:-1, :-2] + lum[1:-1, 2:])


def _stripe_harmonic(values: np.ndarray, mask: np.ndarray) -> float:
    """Amplitude of the first harmonic of ``values`` [H, W] over ``mask`` along ``column - row``
    at the stripes' period (``min(H, W) / 4`` px), phase-free; linear trends in x and y removed."""
    h, w = values.shape
    ys, xs = np.nonzero(mask)
    if len(ys) < 16:
        return 0.0
    v = values[ys, xs].astype(np.float64)
    design = np.stack([np.ones_like(v), ys, xs], axis=1).astype(np.float64)
    v = v - design @ np.linalg.lstsq(design, v, rcond=None)[0]
    period = 2.0 * max(4, min(h, w) * _SS // 8) / _SS
    phase = 2.0 * np.pi * (xs - ys) / period
    basis = np.stack([np.cos(phase), np.sin(phase)], axis=1)
    coef = np.linalg.lstsq(basis, v, rcond=None)[0]
    return float(np.hypot(*coef))


@dataclasses.dataclass
class StyleReading:
    """One image's verdict: ``style`` attribute -> value name (None: not readable without a
    scene) and the statistics it was decided from."""
    style: Dict[str, Optional[str]]
    stats: Dict[str, float]


def read_style(image: np.ndarray, scene: Optional[SceneLike] = None, margin: int = 1) -> StyleReading:
    """The style of one image (uint8 [H, W, 3]); see the module docstring. ``margin``: pixels by
    which the spec's shapes, shadows and word are grown before the background is taken, and
    shapes shrunk (minus one) before their colour is read (more tolerance for a model's samples,
    whose shapes are not exactly where the spec puts them)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"read_style expects an RGB image [H, W, 3], got shape {image.shape}")
    if scene is None:
        return _read_scene_free(image)
    scene = _as_scene(scene)
    h, w = image.shape[:2]
    obs = image.astype(np.float32)
    bg = np.asarray(synthetic.BACKGROUNDS[scene.background][0], np.float32)
    shapes, shadow, word = _shape_masks(scene, h, w)
    touched = (shapes.max(axis=0) > 0) | (shadow > 0) | (word > 0)
    ring = int(np.ceil(_frame_width(h, w)))
    inner = np.zeros((h, w), bool)
    inner[ring + 1:h - ring - 1, ring + 1:w - ring - 1] = True
    background = inner & ~_grow(touched, margin)
    if background.sum() < 32:
        raise ValueError(f"read_style: too few background pixels ({int(background.sum())}) at {h}x{w}")
    stats = {}
    # lighting
    log_ratio = np.log(np.maximum(obs[background], 1.0) / bg)                       # [N, 3]
    stats["warmth"] = float(log_ratio[:, 0].mean() - log_ratio[:, 2].mean())
    lum_ratio = np.log(np.maximum(_luminance(obs[background]), 1.0) / bg.mean())
    rho = _rho(h, w)[background]
    design = np.stack([np.ones_like(rho), rho], axis=1)
    stats["vignette_slope"] = float(np.linalg.lstsq(design, lum_ratio, rcond=None)[0][1])
    if stats["warmth"] > WARM_THRESHOLD:
        lighting = "warm"
    elif stats["warmth"] < -WARM_THRESHOLD:
        lighting = "cool"
    else:
        lighting = "vignette" if stats["vignette_slope"] < VIGNETTE_SLOPE else "flat"
    light = _light_field(lighting, h, w)
    # texture
    lum = _luminance(obs / light)
    smooth = background.copy()
    smooth[1:-1, 1:-1] &= background[:-2, 1:-1] & background[2:, 1:-1] & background[1:-1, :-2] & background[1:-1, 2:]
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = False, False, False, False
    stats["grain"] = float(np.median(np.abs(_laplacian_residual(lum)[smooth[1:-1, 1:-1]]))) if smooth.any() else 0.0
    lift = float(np.mean((255.0 - bg) * synthetic._STRIPE))
    stats["stripes"] = _stripe_harmonic(lum, background) / lift
    if stats["grain"] > GRAIN_THRESHOLD:
        texture = "grain"
    else:
        texture = "stripes" if stats["stripes"] > STRIPE_THRESHOLD else "none"
    # palette
    errors = {}
    for palette in synthetic.STYLES["palette"]:
        style = synthetic.Style(palette=palette)
        total, weight = 0.0, 0
        for obj, cov in zip(scene.objects, shapes):
            interior = ~_grow(cov < 0.999, max(0, margin - 1))
            if not interior.any():
                interior = cov >= 0.9
            if not interior.any():
                continue
            colour = np.asarray(synthetic._recolour(synthetic.COLOURS[obj.colour][0], style), np.float32)
            predicted = np.clip(np.round(colour * light[interior]), 0, 255)
            total += float(np.abs(np.median(obs[interior] - predicted, axis=0)).sum()) * int(interior.sum())
            weight += int(interior.sum())
        errors[palette] = total / max(weight, 1)
        stats[f"palette_error_{palette}"] = errors[palette]
    palette = min(errors, key=errors.get)
    # composition
    expected = bg * light                                                           # [H, W, 3]
    rel = _luminance(obs) / _luminance(expected)
    edge = np.zeros((h, w), bool)
    band = max(1, int(np.floor(_frame_width(h, w))))
    edge[:band], edge[-band:], edge[:, :band], edge[:, -band:] = True, True, True, True
    edge &= ~_grow(touched, margin)
    stats["frame"] = float(np.median(rel[edge])) if edge.any() else 1.0
    # without shadows a pixel is its shapes' colours (the palette read above) over the background,
    # mixed by coverage; a shadow replaces the background part it covers by (1 - d) times it
    cover = shapes.sum(axis=0)[..., None]
    style = synthetic.Style(palette=palette)
    colours = np.asarray([synthetic._recolour(synthetic.COLOURS[o.colour][0], style) for o in scene.objects],
                         np.float32)
    fit = (shadow > 0) & (word == 0)
    unshadowed = (np.einsum("khw,kc->hwc", shapes, colours) + (1.0 - cover) * bg) * light
    darkening = shadow[..., None] * bg * light                                        # per unit of d
    a, b = darkening[fit], (unshadowed - obs)[fit]
    stats["shadow"] = float(np.sum(a * b) / np.sum(a * a)) if a.size else 0.0
    if stats["frame"] < FRAME_THRESHOLD:
        composition = "framed"
    else:
        composition = "shadow" if stats["shadow"] > SHADOW_THRESHOLD else "plain"
    return StyleReading({"palette": palette, "lighting": lighting, "texture": texture,
                         "composition": composition}, stats)


def _read_scene_free(image: np.ndarray) -> StyleReading:
    """Texture, vignette-or-not and frame without a spec: background = pixels (and their
    4 neighbours) within 60 RGB units of the median colour of the image inside the frame's ring."""
    h, w = image.shape[:2]
    obs = image.astype(np.float32)
    ring = int(np.ceil(_frame_width(h, w)))
    inner = np.zeros((h, w), bool)
    inner[ring + 1:h - ring - 1, ring + 1:w - ring - 1] = True
    centre = np.median(obs[inner], axis=0)
    near = np.linalg.norm(obs - centre, axis=-1) < 60.0
    background = inner & near
    background[1:-1, 1:-1] &= near[:-2, 1:-1] & near[2:, 1:-1] & near[1:-1, :-2] & near[1:-1, 2:]
    stats = {}
    lum = _luminance(obs)
    lum_ratio = np.log(np.maximum(lum[background], 1.0) / max(float(centre.mean()), 1.0))
    rho = _rho(h, w)[background]
    design = np.stack([np.ones_like(rho), rho], axis=1)
    stats["vignette_slope"] = float(np.linalg.lstsq(design, lum_ratio, rcond=None)[0][1])
    vignette = stats["vignette_slope"] < VIGNETTE_SLOPE
    light = _light_field("vignette" if vignette else "flat", h, w)[..., 0]
    lum = lum / light
    smooth = background.copy()
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = False, False, False, False
    stats["grain"] = float(np.median(np.abs(_laplacian_residual(lum)[smooth[1:-1, 1:-1]]))) if smooth.any() else 0.0
    lift = float(np.mean((255.0 - centre) * synthetic._STRIPE))
    stats["stripes"] = _stripe_harmonic(lum, background) / max(lift, 1.0)
    texture = "grain" if stats["grain"] > GRAIN_THRESHOLD else (
        "stripes" if stats["stripes"] > STRIPE_THRESHOLD else "none")
    band = max(1, int(np.floor(_frame_width(h, w))))
    outer = np.zeros((h, w), bool)
    outer[:band], outer[-band:], outer[:, :band], outer[:, -band:] = True, True, True, True
    nxt = np.zeros((h, w), bool)
    nxt[:2 * band + 2], nxt[-2 * band - 2:], nxt[:, :2 * band + 2], nxt[:, -2 * band - 2:] = True, True, True, True
    nxt &= ~outer
    nxt[:ring + 1], nxt[-ring - 1:], nxt[:, :ring + 1], nxt[:, -ring - 1:] = False, False, False, False
    stats["frame"] = float(np.median(lum[outer]) / max(np.median(lum[nxt]), 1.0))
    return StyleReading({"palette": None, "lighting": "vignette" if vignette else None, "texture": texture,
                         "composition": "framed" if stats["frame"] < FRAME_THRESHOLD else None}, stats)


def score_style(images, scenes: Optional[Sequence[SceneLike]] = None, margin: int = 1
                ) -> Dict[str, List[Optional[str]]]:
    """Predicted style of each image (uint8 [B, H, W, 3]): attribute -> [B] value names of
    ``synthetic.STYLES[attribute]``, from the scenes (``Scene`` or spec dicts, aligned with the
    images; their styles are not read) or, with ``scenes=None``, the scene-free fallback (None
    where an attribute needs the scene; lighting and composition say only vignette / framed)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"score_style expects uint8 images [B, H, W, 3], got {images.dtype} {images.shape}")
    if scenes is not None and len(scenes) != len(images):
        raise ValueError(f"score_style: {len(images)} images but {len(scenes)} scenes")
    readings = [read_style(img, None if scenes is None else scenes[i], margin) for i, img in enumerate(images)]
    return {a: [r.style[a] for r in readings] for a in ATTRIBUTES}


def _style_value(style, attribute: str) -> str:
    return style[attribute] if isinstance(style, Mapping) else getattr(style, attribute)


def style_accuracy(predicted: Mapping[str, Sequence[Optional[str]]], styles: Sequence) -> Dict[str, float]:
    """Per attribute, the fraction of images whose predicted value equals the truth (``styles``:
    ``synthetic.Style`` or dicts, aligned; None counts as plain ``Style()``); attributes missing
    from ``predicted`` are left out."""
    out = {}
    for a in ATTRIBUTES:
        if a not in predicted:
            continue
        pred = list(predicted[a])
        if len(pred) != len(styles):
            raise ValueError(f"style_accuracy: {len(pred)} predictions of {a} for {len(styles)} styles")
        truth = [_style_value(s if s is not None else synthetic.Style(), a) for s in styles]
        out[a] = float(np.mean([p == t for p, t in zip(pred, truth)])) if truth else float("nan")
    return out
