"""Training curves as a PNG, without matplotlib: scalars read back from a stage's TensorBoard
events and drawn with PIL, one panel per tag (e.g. the rlhf stage's ``reward/<name>``)."""
import glob
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

Series = Dict[str, Tuple[List[int], List[float]]]


def read_scalars(logdir: str, prefixes: Sequence[str]) -> Series:
    """{tag: (steps, values)} of every scalar in the event files of ``logdir`` whose tag starts
    with one of ``prefixes``, in step order (a step written twice, e.g. after a resume, keeps its
    last value)."""
    found: Dict[str, Dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if not value.tag.startswith(tuple(prefixes)):
                    continue
                kind = value.WhichOneof("value")  # the loader turns simple_value into a scalar tensor
                if kind == "simple_value":
                    found.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
                elif kind == "tensor" and value.metadata.plugin_data.plugin_name == "scalars":
                    found.setdefault(value.tag, {})[int(event.step)] = float(tensor_util.make_ndarray(value.tensor))
    return {tag: (sorted(points), [points[s] for s in sorted(points)]) for tag, points in sorted(found.items())}


def plot_curves(series: Series, path: str, *, width: int = 360, panel_height: int = 120) -> str:
    """Draw each tag of ``series`` as a line in its own panel (stacked; title, step range and
    value range written on the panel), save the PNG at ``path`` and return ``path``."""
    if not series:
        raise ValueError("plot_curves: no series to draw")
    margin, title_h = 8, 14
    image = Image.new("RGB", (width, panel_height * len(series)), "white")
    draw = ImageDraw.Draw(image)
    for i, (tag, (steps, values)) in enumerate(series.items()):
        top = i * panel_height
        x0, x1, y0, y1 = margin, width - margin, top + title_h + 4, top + panel_height - margin - 10
        draw.rectangle([x0, y0, x1, y1], outline=(180, 180, 180))
        v = np.asarray(values, np.float64)
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        draw.text((x0, top + 2), f"{tag}  [{lo:.4g}, {hi:.4g}]", fill=(0, 0, 0))
        draw.text((x0, y1 + 1), f"step {steps[0]}..{steps[-1]}", fill=(90, 90, 90))
        s = np.asarray(steps, np.float64)
        xs = x0 + (s - s[0]) / max(s[-1] - s[0], 1.0) * (x1 - x0)
        ys = y1 - (np.clip(v, lo, hi) - lo) / max(hi - lo, 1e-12) * (y1 - y0)
        points = [(float(x), float(y)) for x, y, ok in zip(xs, ys, np.isfinite(v)) if ok]
        if len(points) > 1:
            draw.line(points, fill=(200, 40, 40), width=2)
        elif points:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=(200, 40, 40))
    image.save(path)
    return path
