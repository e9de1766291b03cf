"""benchmarks/position_plateau.py: the three contexts carry what they say, the moved scene differs
where the object is, and a short run yields well-formed rows whose first gain is exactly 0 (a fresh
adaLN-Zero MMDiT ignores every prompt). The real figures come from the benchmark (RESULTS (d7))."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import position_plateau as pp  # noqa: E402
from seedream_jax.data import synthetic as S  # noqa: E402
from test_text_use import pipeline_with_encoder  # noqa: E402


@pytest.fixture(scope="module")
def pipe_params():
    return pipeline_with_encoder()


def test_moved_keeps_everything_but_the_cell():
    rng = np.random.default_rng(0)
    scenes, langs = pp.single_object_world(rng, 20)
    assert set(langs) <= {"en", "zh"} and all(len(s.objects) == 1 for s in scenes)
    for s in scenes:
        m = pp.moved(s, rng)
        a, b = s.objects[0], m.objects[0]
        assert (a.shape, a.colour, a.size, s.background) == (b.shape, b.colour, b.size, m.background)
        assert a.position != b.position


def test_contexts_oracle_codes_the_cell_and_tokens_follow_the_token_ids(pipe_params):
    pipe, params = pipe_params
    obj = lambda pos: S.Scene("beige", [S.ShapeObject("circle", "red", "large", pos)])
    scenes, langs = [obj("top-left"), obj("top-left"), obj("bottom-right")], np.array(["en", "zh", "en"])
    cond = pp.contexts(pipe, params, scenes, langs, "conditioner")
    oracle = pp.contexts(pipe, params, scenes, langs, "oracle")
    np.testing.assert_array_equal(oracle[0][:, 1:], cond[0][:, 1:])  # only token 0 is replaced ...
    np.testing.assert_array_equal(oracle[0][0, 0], oracle[0][1, 0])  # ... by the cell's code, whatever the language
    assert not np.allclose(oracle[0][0, 0], oracle[0][2, 0])
    tokens = pp.contexts(pipe, params, [scenes[0]] * 2, np.array(["en", "en"]), "tokens")
    np.testing.assert_array_equal(tokens[0][0], tokens[0][1])
    assert np.all(tokens[0][~tokens[1]] == 0) and not np.allclose(tokens[0][0], cond[0][0])
    with pytest.raises(ValueError, match="context"):
        pp.contexts(pipe, params, scenes, langs, "words")


def test_a_short_run_yields_rows_and_starts_at_zero_gain(pipe_params):
    pipe, params = pipe_params
    data = pp.prepare(pipe, params, "oracle", scenes=16, held_out=4, size=16)
    assert data["latents"].shape[0] == 20 and data["cells"].shape == (4,) + data["latents"].shape[1:3]
    assert data["cells"].any(axis=(1, 2)).all()  # every held-out pair differs somewhere
    rows = list(pp.plateau(pipe.mmdit_cfg, data, steps=4, every=2))
    assert [r[0] for r in rows] == [0, 2, 4]
    assert rows[0][1] == [0.0] * len(pp.TIMES) and np.isnan(rows[0][2])
    assert all(len(g) == len(pp.TIMES) and np.isfinite(g).all() and np.isfinite(loss) for _, g, loss in rows[1:])
