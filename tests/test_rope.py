"""RoPE: relative-position property, Seedream's centred scaled ids, text id placement, diffusers parity."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seedream_jax.models import rope


def _scores(ids_q, ids_k, q, k, axes_dims=(4, 6, 6)):
    cq, sq = rope.rope_frequencies(jnp.asarray(ids_q), axes_dims, 10000.0)
    ck, sk = rope.rope_frequencies(jnp.asarray(ids_k), axes_dims, 10000.0)
    rq = rope.apply_rope(q, cq, sq)
    rk = rope.apply_rope(k, ck, sk)
    return jnp.einsum("bqhd,bkhd->bhqk", rq, rk)


def test_scores_depend_only_on_position_differences():
    r = np.random.default_rng(0)
    q, k = jnp.asarray(r.normal(size=(1, 5, 2, 16)), jnp.float32), jnp.asarray(r.normal(size=(1, 7, 2, 16)), jnp.float32)
    ids_q, ids_k = r.normal(size=(5, 3)) * 4, r.normal(size=(7, 3)) * 4
    shift = np.array([1.5, -3.25, 7.0])
    a = _scores(ids_q, ids_k, q, k)
    b = _scores(ids_q + shift, ids_k + shift, q, k)
    np.testing.assert_allclose(a, b, atol=2e-5)
    c = _scores(ids_q + shift, ids_k, q, k)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-2  # a relative shift does change them


def test_matches_diffusers_flux_pos_embed():
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed
    ids = np.concatenate([rope.text_position_ids(4, 6, 8), rope.image_position_ids(6, 8, base_grid=4)])
    x = np.random.default_rng(1).normal(size=(1, len(ids), 2, 16)).astype(np.float32)
    cos, sin = rope.rope_frequencies(jnp.asarray(ids), (4, 6, 6), 10000.0)
    ours = rope.apply_rope(jnp.asarray(x), cos, sin)
    ref = apply_rotary_emb(torch.from_numpy(x), FluxPosEmbed(10000, [4, 6, 6])(torch.from_numpy(ids)), sequence_dim=1)
    assert float(np.max(np.abs(np.asarray(ours) - ref.numpy()))) < 1e-5


@pytest.mark.parametrize("rule", ["scaled", "centered"])
def test_centre_ids_identical_across_resolutions(rule):
    """256 / 512 / 1024 px with a VAE factor 8 and 2x2 patches: grids 16 / 32 / 64; base grid 32."""
    centres = []
    for g in (16, 32, 64):
        ids = rope.image_position_ids(g, g, rule=rule, base_grid=32).reshape(g, g, 3)
        centres.append(ids[g // 2 - 2:g // 2 + 2, g // 2 - 2:g // 2 + 2])
    for c in centres[1:]:
        np.testing.assert_array_equal(c, centres[0])
    np.testing.assert_array_equal(centres[0][1, 1, 1:], [-0.5, -0.5])


def test_scaled_rule_compresses_only_beyond_the_base_window():
    base = rope.image_position_ids(32, 32, rule="scaled", base_grid=32)
    big = rope.image_position_ids(64, 64, rule="scaled", base_grid=32).reshape(64, 64, 3)
    np.testing.assert_array_equal(big[16:48, 16:48].reshape(-1, 3), base)  # inner window = base ids
    assert float(np.abs(big[..., 1:]).max()) == pytest.approx(16 + 15.5 * 0.5)
    interp = rope.image_position_ids(64, 64, rule="interpolate", base_grid=32)
    assert float(np.abs(interp[:, 1:]).max()) == pytest.approx(15.75)
    with pytest.raises(ValueError, match="unknown RoPE scaling rule"):
        rope.image_position_ids(4, 4, rule="nope")


def test_text_ids_sit_beyond_the_image_on_the_diagonal():
    img = rope.image_position_ids(8, 12, base_grid=8)
    txt = rope.text_position_ids(5, 8, 12, base_grid=8)
    assert np.all(txt[:, 1] == txt[:, 2]) and np.all(np.diff(txt[:, 1]) == 1)
    assert txt[0, 1] > np.abs(img[:, 1:]).max()
    assert not np.any(rope.text_position_ids(3, 8, 12, scheme="zeros"))
