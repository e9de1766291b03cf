"""eval/sharpness.py: exact slopes of synthetic edges, monotone under blur, and a world rendering
scores above its 2x bicubic upsampling from half resolution."""
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from seedream_jax.data import synthetic
from seedream_jax.eval import sharpness


def grey(values: np.ndarray) -> np.ndarray:
    """Grey levels [B, H, W] -> uint8 RGB [B, H, W, 3] (luma == the level exactly)."""
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=-1)


def test_step_ramp_and_flat_images_have_their_exact_slopes():
    step = np.zeros((16, 16))
    step[:, 8:] = 200                                   # one-pixel step of contrast 200
    ramp = np.zeros((16, 16))
    ramp[:, 6:10] = [40, 80, 120, 160]                  # 0 -> 200 over 5 steps of 40
    ramp[:, 10:] = 200
    diagonal = np.where(np.add.outer(np.arange(16), np.arange(16)) >= 16, 100, 0)
    s = sharpness.edge_slope(grey(np.stack([step, ramp, np.full((16, 16), 77), diagonal])))
    # The diagonal step: each pixel before it has both differences 100, a slope of 100 sqrt 2.
    np.testing.assert_allclose(s, [200.0, 40.0, 0.0, 100 * np.sqrt(2)], rtol=0, atol=1e-12)


def test_blur_lowers_the_slope_monotonically():
    scenes = [synthetic.scene_at(synthetic.SyntheticWorldConfig(num_images=3, seed=1), i) for i in range(3)]
    sharp = np.stack([synthetic.render_scene(s, 128) for s in scenes])
    sigmas = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
    blurred = [np.clip(np.round(ndimage.gaussian_filter(sharp.astype(np.float64), (0, s, s, 0))), 0, 255)
               .astype(np.uint8) for s in sigmas]
    scores = np.stack([sharpness.edge_slope(sharp)] + [sharpness.edge_slope(b) for b in blurred])  # [7, 3]
    print("edge slope (grey levels / px) by blur sigma 0..4:", np.round(scores.mean(1), 2).tolist())
    assert (np.diff(scores, axis=0) < 0).all(), scores
    assert (scores[0] > 3 * scores[-1]).all()


def test_sharp_rendering_beats_its_bicubic_upsampling_from_half_resolution():
    scenes = [synthetic.scene_at(synthetic.SyntheticWorldConfig(num_images=4, seed=2), i) for i in range(4)]
    native = np.stack([synthetic.render_scene(s, 128) for s in scenes])
    upsampled = np.stack([np.asarray(Image.fromarray(synthetic.render_scene(s, 64)).resize((128, 128),
                                                                                           Image.BICUBIC))
                          for s in scenes])
    a, b = sharpness.edge_slope(native), sharpness.edge_slope(upsampled)
    print(f"edge slope: 128 px rendering {np.round(a, 1).tolist()}, 64 px + bicubic 2x {np.round(b, 1).tolist()}")
    assert (a > 1.8 * b).all()


def test_bad_input_is_refused_with_its_shape():
    with pytest.raises(ValueError, match="uint8 RGB images"):
        sharpness.edge_slope(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(8, 8, 3\)"):
        sharpness.edge_slope(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="1x8 px"):
        sharpness.edge_slope(np.zeros((1, 1, 8, 3), np.uint8))
