"""Edge sharpness of uint8 images: the slope of the brightness across edges, in grey levels per pixel.

For an image's luma Y (ITU-R BT.601, 0.299 R + 0.587 G + 0.114 B, on the 0-255 scale) take the
forward differences dx = Y[i, j+1] - Y[i, j] and dy = Y[i+1, j] - Y[i, j] and the gradient
magnitude g = sqrt(dx^2 + dy^2) on the (H-1) x (W-1) grid where both exist. The **edge slope**

    S = sum(g^2) / sum(g)        grey levels per pixel

is the mean of g over all pixels, each weighted by its own g: flat regions (g = 0) carry no
weight, so S is the typical slope across the image's edges whatever their number. An edge of
contrast C (grey levels) that rises over w pixels has slope C / w: a one-pixel step scores C
exactly, the same step spread over a 4-pixel ramp C / 4. Blurring spreads every edge over more
pixels, which lowers S; upsampling a low-resolution image by 2x doubles each edge's rise width
in output pixels, which roughly halves it. An image with no edge at all scores 0.

Low-amplitude noise in flat regions adds many small slopes and pulls S down rather than up (it
is not mistaken for detail, as a Laplacian-variance score would be).
"""
import numpy as np

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def luma(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float64 [B, H, W] luma on the 0-255 scale."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images [B, H, W, 3], got {images.dtype} {images.shape}")
    if images.shape[1] < 2 or images.shape[2] < 2:
        raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} px have no edges to measure (need >= 2x2)")
    return images.astype(np.float64) @ LUMA_WEIGHTS


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    """Luma [B, H, W] -> forward-difference gradient magnitude [B, H-1, W-1] in grey levels per pixel."""
    dx = y[:, :-1, 1:] - y[:, :-1, :-1]
    dy = y[:, 1:, :-1] - y[:, :-1, :-1]
    return np.sqrt(dx * dx + dy * dy)


def edge_slope(images: np.ndarray) -> np.ndarray:
    """Edge slope S (module docstring) of each image: uint8 [B, H, W, 3] -> float64 [B], grey
    levels per pixel (0 for an image without edges)."""
    g = gradient_magnitude(luma(images)).reshape(len(images), -1)
    total = g.sum(axis=1)
    return np.where(total > 0, (g * g).sum(axis=1) / np.maximum(total, 1e-300), 0.0)
