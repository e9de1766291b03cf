"""eval/curves.py: scalars written by the loop's MetricWriter come back in step order and draw
one panel per tag (what the rlhf stage's reward_curves.png is made of)."""
import numpy as np
import pytest
from PIL import Image

from seedream_jax.eval import curves
from seedream_jax.training.writers import MetricWriter


def test_scalars_round_trip_and_plot(tmp_path):
    writer = MetricWriter(str(tmp_path / "tb"))
    for step in (2, 4, 6):
        writer.write_scalars(step, {"reward/a": step * 0.5, "reward/b": -step, "loss": 1.0})
    writer.write_scalars(4, {"reward/a": 9.0})  # a step written again (a resume) keeps the last value
    writer.close()
    series = curves.read_scalars(str(tmp_path / "tb"), ("reward/",))
    assert list(series) == ["reward/a", "reward/b"]
    assert series["reward/a"] == ([2, 4, 6], [1.0, 9.0, 3.0])
    assert series["reward/b"] == ([2, 4, 6], [-2.0, -4.0, -6.0])
    path = curves.plot_curves(series, str(tmp_path / "curves.png"), width=200, panel_height=100)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (200, 200, 3)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 100)
    assert red[:100].any() and red[100:].any()  # a line in each panel
    with pytest.raises(ValueError, match="no series"):
        curves.plot_curves({}, str(tmp_path / "none.png"))
