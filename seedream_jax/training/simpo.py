"""SimPO: reference-free, length-normalised preference optimisation of a causal LM (the prompt rewriter).

Meng, Xia and Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
(arXiv:2405.14734, NeurIPS 2024). The reward of a response y to a prompt x is its average token
log-likelihood scaled by beta, and the loss asks the chosen response y_w to beat the rejected y_l by
a target margin gamma (the SimPO objective):

    r(x, y) = beta / |y| * log p(y | x)
    L = -log sigmoid(r(x, y_w) - r(x, y_l) - gamma)

No reference model is needed. Defaults: beta = 2.0 and gamma = 1.0 (gamma / beta = 0.5). The
authors' README (github.com/princeton-nlp/SimPO, "Hyperparameter tuning") used beta 2.0 or 2.5 in
the paper and recommends ``gamma_beta_ratio`` 0.5 as the starting point; their Llama3-Base recipe is
exactly beta 2.0, gamma/beta 0.5 (``training_configs/llama-3-8b-base-simpo.yaml``). Their trainer
computes the same loss as ``-logsigmoid(beta * (avg_logp_w - avg_logp_l - gamma_beta_ratio))``.

The inputs are summed log-probabilities and token counts of the responses, so the loss composes with
``models.causal_lm.token_logprobs`` and a response mask through ``models.causal_lm.sequence_logprob``.
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from seedream_jax.training.reward_losses import bradley_terry

DEFAULT_BETA = 2.0
DEFAULT_GAMMA = 1.0  # 0.5 * DEFAULT_BETA


def simpo_rewards(logp: jax.Array, length: jax.Array, beta: float = DEFAULT_BETA) -> jax.Array:
    """beta / |y| * log p(y | x) [B] from summed log-probs [B] and token counts [B]; a row of no
    tokens counts as length 1 (its summed log-prob is 0, so its reward is 0)."""
    return beta * logp.astype(jnp.float32) / jnp.maximum(length.astype(jnp.float32), 1.0)


def simpo_loss(chosen_logp: jax.Array, chosen_length: jax.Array, rejected_logp: jax.Array,
               rejected_length: jax.Array, *, beta: float = DEFAULT_BETA,
               gamma: float = DEFAULT_GAMMA) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """The SimPO loss over a batch of (chosen, rejected) responses, and its metrics.

    chosen_logp, rejected_logp: summed log p(y | x) [B] (natural log); chosen_length,
    rejected_length: token counts [B]. Returns (loss: the batch mean of
    -log sigmoid(r_w - r_l - gamma), float32 scalar, metrics: ``chosen_reward`` and
    ``rejected_reward`` (batch means of r), ``reward_margin`` (mean of r_w - r_l, before gamma),
    ``accuracy`` (fraction of rows with r_w > r_l)).
    """
    chosen = simpo_rewards(chosen_logp, chosen_length, beta)
    rejected = simpo_rewards(rejected_logp, rejected_length, beta)
    loss = bradley_terry(chosen - gamma, rejected)
    return loss, {"chosen_reward": jnp.mean(chosen), "rejected_reward": jnp.mean(rejected),
                  "reward_margin": jnp.mean(chosen - rejected),
                  "accuracy": jnp.mean((chosen > rejected).astype(jnp.float32))}
