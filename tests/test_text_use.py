"""eval/text_use.py: the text gain and the attribute gain are exactly 0 for a DiT that ignores its
prompt (a fresh adaLN-Zero MMDiT) and non-zero for one whose output depends on the prompt."""
import jax
import numpy as np
import pytest

from seedream_jax.eval.suite import build_suite
from seedream_jax.eval.text_use import attribute_gain, suite_batch, text_use
from test_generate import random_params, tiny_pipeline


def pipeline_with_encoder():
    """test_generate's tiny pipeline with random VAE weights that include the encoder."""
    pipe, params = tiny_pipeline()
    vae = random_params(lambda rng: {"vae": pipe.vae.init(rng, jax.numpy.zeros((1, 16, 16, 3)))})["vae"]
    return pipe, dict(params, vae=vae)


@pytest.fixture(scope="module")
def batch():
    items = [i for i in build_suite() if i.kind == "single"][:3]
    return suite_batch(items, 16)


def test_suite_batch_renders_each_item_once_per_language(batch):
    images, captions = batch
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.float32
    assert -1.0 <= images.min() and images.max() <= 1.0
    assert np.array_equal(images[0], images[1]) and captions[0] != captions[1]  # en, zh of one scene


def test_text_gain_is_zero_without_text_use_and_nonzero_with_it(batch):
    pipe, params = pipeline_with_encoder()
    images, captions = batch
    used = text_use(pipe, params, images, captions, times=(0.5, 0.9), roll=1)
    assert set(used) == {"0.50", "0.90"}
    for row in used.values():
        assert row["text_gain"] == pytest.approx(row["shuffled"] - row["matched"])
        assert abs(row["text_gain"]) > 1e-6 and abs(row["empty_gain"]) > 1e-6
    zero_out = dict(params, mmdit=jax.tree_util.tree_map(
        lambda x: x * 0, params["mmdit"]))  # every gate and the output projection at 0: v = 0 for any prompt
    ignored = text_use(pipe, zero_out, images, captions, times=(0.5,), roll=1)["0.50"]
    assert ignored["text_gain"] == 0.0 and ignored["empty_gain"] == 0.0 and ignored["matched"] > 0
    with pytest.raises(ValueError, match="roll"):
        text_use(pipe, params, images, captions, roll=6)


def test_attribute_gain_is_zero_without_text_use_and_counts_the_pairs_where_a_kind_applies():
    pipe, params = pipeline_with_encoder()
    scenes = [i.scene for i in build_suite() if i.kind == "single"][:3]
    used = attribute_gain(pipe, params, scenes, 16, kinds=("colour", "position"), times=(0.9,))
    assert used["colour"]["pairs"] == 3 and used["position"]["pairs"] == 3
    assert abs(used["colour"]["0.90"]["gain"]) > 1e-7 and used["colour"]["0.90"]["matched"] > 0
    zero_out = dict(params, mmdit=jax.tree_util.tree_map(lambda x: x * 0, params["mmdit"]))
    ignored = attribute_gain(pipe, zero_out, scenes, 16, kinds=("colour",), times=(0.9,))["colour"]["0.90"]
    assert ignored["gain"] == 0.0 and ignored["matched"] > 0
