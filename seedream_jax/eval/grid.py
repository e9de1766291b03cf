"""Image grids with the prompt written under each image (CJK-capable font)."""
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from seedream_jax.data import fonts


def _wrap(text: str, width_px: int, font) -> list:
    """Greedy wrap by rendered width (works for CJK, which has no spaces)."""
    lines, line = [], ""
    for ch in text:
        if font.getlength(line + ch) > width_px and line:
            lines.append(line)
            line = ch.lstrip()
        else:
            line += ch
    return lines + ([line] if line else [])


def image_grid(images: Sequence[np.ndarray], captions: Optional[Sequence[str]] = None, *, columns: int = 4,
               scale: int = 1, font_size: int = 12, max_caption_lines: int = 4, pad: int = 4) -> np.ndarray:
    """Tile uint8 images [H, W, 3] into a grid; captions (zh or en) are written under each.

    Images are upscaled by ``scale`` (nearest) so that small samples stay legible.
    Returns uint8 [rows * cell_h, columns * cell_w, 3].
    """
    images = [np.asarray(im, np.uint8) for im in images]
    h = max(im.shape[0] for im in images) * scale
    w = max(im.shape[1] for im in images) * scale
    font = ImageFont.truetype(fonts.cjk_font_path(), font_size) if captions else None
    cap_h = (font_size + 2) * max_caption_lines + pad if captions else 0
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + cap_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        x0, y0 = pad + c * (w + pad), pad + r * (h + cap_h + pad)
        pil = Image.fromarray(im)
        if scale != 1:
            pil = pil.resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST)
        canvas.paste(pil, (x0, y0))
        if captions:
            lines = _wrap(captions[i], w, font)[:max_caption_lines]
            for j, line in enumerate(lines):
                draw.text((x0, y0 + h + 2 + j * (font_size + 2)), line, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
