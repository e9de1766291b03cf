"""SimPO loss (training/simpo.py) against numbers computed by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedream_jax.models import causal_lm
from seedream_jax.training import simpo

# Three (chosen, rejected) pairs: summed log p and token counts.
CHOSEN_LOGP, CHOSEN_LEN = [-6.0, -2.0, -4.5], [3, 2, 5]
REJECTED_LOGP, REJECTED_LEN = [-12.0, -1.0, -3.0], [4, 1, 6]


def test_loss_and_metrics_equal_a_hand_computation():
    # beta = 2, gamma = 1, z = r_w - r_l - gamma, loss = -log sigmoid(z) = log(1 + e^-z):
    #   r_w = 2 * -6 / 3 = -4.0,    r_l = 2 * -12 / 4 = -6.0,  z = 1.0,   loss = log(1 + e^-1)
    #   r_w = 2 * -2 / 2 = -2.0,    r_l = 2 * -1 / 1 = -2.0,   z = -1.0,  loss = log(1 + e^1)
    #   r_w = 2 * -4.5 / 5 = -1.8,  r_l = 2 * -3 / 6 = -1.0,   z = -1.8,  loss = log(1 + e^1.8)
    per_row = [0.31326168751822286, 1.3132616875182228, 1.952977610526074]
    assert per_row == pytest.approx([math.log1p(math.exp(-1.0)), math.log1p(math.e), math.log1p(math.exp(1.8))])
    loss, m = simpo.simpo_loss(jnp.array(CHOSEN_LOGP), jnp.array(CHOSEN_LEN), jnp.array(REJECTED_LOGP),
                               jnp.array(REJECTED_LEN))
    assert float(loss) == pytest.approx(1.1931669951875066, abs=1e-6)           # mean of per_row
    assert float(m["chosen_reward"]) == pytest.approx(-2.6, abs=1e-6)           # (-4 - 2 - 1.8) / 3
    assert float(m["rejected_reward"]) == pytest.approx(-3.0, abs=1e-6)         # (-6 - 2 - 1) / 3
    assert float(m["reward_margin"]) == pytest.approx(0.4, abs=1e-6)            # (2 + 0 - 0.8) / 3
    assert float(m["accuracy"]) == pytest.approx(1 / 3)  # only row 1 has r_w > r_l (row 2's tie is no win)


def test_beta_and_gamma_are_used():
    # beta = 1, gamma = 0, row 1 alone: r_w = -2, r_l = -3, loss = log(1 + e^-1)
    loss, m = simpo.simpo_loss(jnp.array([-6.0]), jnp.array([3]), jnp.array([-12.0]), jnp.array([4]), beta=1.0,
                               gamma=0.0)
    assert float(loss) == pytest.approx(0.31326168751822286, abs=1e-6)
    assert float(m["reward_margin"]) == pytest.approx(1.0, abs=1e-6)
    assert simpo.DEFAULT_BETA == 2.0 and simpo.DEFAULT_GAMMA == 1.0


def test_composes_with_token_logprobs_and_a_mask():
    # token log-probs [B=2, T=5]; the mask marks each response's tokens (prompt and padding are 0).
    token_logps = jnp.array([[-9.0, -1.0, -2.0, -3.0, -7.0],
                             [-5.0, -5.0, -0.5, -1.5, -4.0]])
    mask = jnp.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    logp, length = causal_lm.sequence_logprob(token_logps, mask)
    np.testing.assert_allclose(np.asarray(logp), [-6.0, -6.0])
    np.testing.assert_array_equal(np.asarray(length), [3.0, 3.0])
    # the loss is jittable and differentiable through the summed log-probs
    grad = jax.grad(lambda t: simpo.simpo_loss(*causal_lm.sequence_logprob(t, mask), jnp.array([-12.0, -1.0]),
                                               jnp.array([4, 1]))[0])(token_logps)
    assert np.all(np.asarray(grad)[np.asarray(mask) == 0] == 0) and np.all(np.asarray(grad)[np.asarray(mask) == 1] < 0)


def test_length_normalisation_and_an_empty_row():
    # the same per-token log-likelihood over twice the tokens gives the same reward
    r = simpo.simpo_rewards(jnp.array([-3.0, -6.0, 0.0]), jnp.array([2, 4, 0]))
    np.testing.assert_allclose(np.asarray(r), [-3.0, -3.0, 0.0])
