"""The losses of the RLHF stage as pure functions of a velocity model (``stages/rlhf.py`` wires them).

Convention (``sampling/schedules``): x_t = (1 - t) x0 + t eps, v = eps - x0, sampling runs t = 1 -> 0
on ``schedules.sampling_times(num_steps, shift)``. ``velocity_fn(params, x [B, ...], t [B], cond)``
is the sampler's ``VelocityFn``; ``cond``/``uncond`` are its conditioning pytrees (leading B; uncond
may have batch 1) and classifier-free guidance is ``SamplerConfig.guidance_scale``.

Direct reward fine-tuning (images differentiable in the parameters, then a reward of the pixels):
  ``refl_latents``   ReFL (ImageReward, Xu et al. 2023): ``stop_step`` sampler steps without gradient,
                     then one gradient step predicting x0 = x_t - t v(x_t, t).
  ``draft_latents``  DRaFT-K (Clark et al. 2023): the sampler with gradient through its last K steps.
  ``reward_loss``    relu(margin - r) * weight (ReFL's form) or -r * weight.
Policy gradient (Flow-GRPO, Liu et al. 2025; DanceGRPO, Xue et al. 2025):
  ``group_advantages``   (r - mean_group) / (std_group + eps), clipped.
  ``clipped_policy_loss``  PPO's clipped surrogate on per-sample log-probabilities.
  ``mean_kl``            KL of two Gaussians of one std: ||mean - mean_ref||^2 / (2 std^2).
  ``select_steps``       a random subset of the denoising steps to train on.
  ``grpo_loss``          all of it over stored SDE trajectories.
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from seedream_jax.sampling import sampler as sampler_lib
from seedream_jax.sampling import schedules, solvers


def predict_x0(x_t, t, v):
    """x0 = x_t - t v: the data the flow points at from x_t [B, ...] at time t (scalar or [B])."""
    t = jnp.asarray(t, jnp.float32)
    t = t.reshape(t.shape + (1,) * (x_t.ndim - t.ndim)) if t.ndim else t
    return x_t - t * v


def refl_latents(velocity_fn, params, noise, cond, uncond, cfg: sampler_lib.SamplerConfig, stop_step):
    """ReFL's x0 prediction [B, ...] from ``noise`` [B, ...].

    ``stop_step`` (int, may be traced) ODE steps of ``cfg``'s grid run without gradient (a
    ``fori_loop``: a traced count costs only the steps taken), then one guided velocity at
    t = times[stop_step] with gradient wrt params, cond and uncond predicts x0 = x_t - t v.
    stop_step = 0 predicts from pure noise; num_steps - 1 from the last state before t = 0.
    """
    times = schedules.sampling_times(cfg.num_steps, cfg.shift)
    step = solvers.SOLVERS[cfg.solver]
    frozen = jax.lax.stop_gradient((params, cond, uncond))
    v_frozen = sampler_lib.guided_velocity(velocity_fn, frozen[0], frozen[1], frozen[2], cfg.guidance_scale)
    x = jax.lax.fori_loop(0, stop_step, lambda i, x: step(v_frozen, x, times[i], times[i + 1]).astype(jnp.float32),
                          noise.astype(jnp.float32))
    x, t = jax.lax.stop_gradient(x), times[stop_step]
    v = sampler_lib.guided_velocity(velocity_fn, params, cond, uncond, cfg.guidance_scale)(x, t)
    return predict_x0(x, t, v.astype(jnp.float32))


def draft_latents(velocity_fn, params, noise, cond, uncond, cfg: sampler_lib.SamplerConfig, k: int):
    """DRaFT-K's sample x0 [B, ...]: the whole sampler, gradient through its last ``k`` steps
    (``sampler.sample_trajectory(grad_last_k=k)``, each of them rematerialised)."""
    return sampler_lib.sample_trajectory(velocity_fn, params, noise, cond, uncond, cfg, grad_last_k=k)[0]


def reward_loss(reward, *, kind: str = "relu", margin: float = 2.0, weight: float = 1.0):
    """Mean over the batch of ``relu(margin - reward) * weight`` (kind 'relu', ReFL) or
    ``-reward * weight`` (kind 'neg'); ``reward`` [B]."""
    reward = reward.astype(jnp.float32)
    if kind == "relu":
        return jnp.mean(jax.nn.relu(margin - reward)) * weight
    if kind == "neg":
        return -jnp.mean(reward) * weight
    raise ValueError(f"reward loss kind must be 'relu' or 'neg', got {kind!r}")


def group_advantages(rewards, group_size: int, *, eps: float = 1e-4, clip: float = 0.0):
    """Group-normalised advantages [B * G] of rewards [B * G] ordered group by group (row b*G + g is
    image g of prompt b): (r - mean of its group) / (std of its group + eps), the population std
    (Flow-GRPO's per-prompt statistics); then clipped to [-clip, clip] when ``clip`` > 0."""
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    adv = (r - jnp.mean(r, axis=1, keepdims=True)) / (jnp.std(r, axis=1, keepdims=True) + eps)
    adv = adv.reshape(-1)
    return jnp.clip(adv, -clip, clip) if clip > 0 else adv


def clipped_policy_loss(logp, old_logp, advantages, clip_range: float) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """PPO's clipped surrogate: mean_b max(-A r, -A clip(r, 1 - c, 1 + c)), r = exp(logp - old_logp).

    All inputs [B]. Returns (loss, {'ratio', 'clip_fraction', 'approx_kl'}): the mean ratio, the
    fraction of samples with |r - 1| > c, and 0.5 mean (logp - old_logp)^2.
    """
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = jnp.mean(jnp.maximum(unclipped, clipped))
    clipped_share = jnp.mean((jnp.abs(ratio - 1.0) > clip_range).astype(jnp.float32))
    return loss, {"ratio": jnp.mean(ratio), "clip_fraction": clipped_share,
                  "approx_kl": 0.5 * jnp.mean(jnp.square(log_ratio))}


def mean_kl(mean, mean_ref, std, *, per_element: bool = False):
    """KL [B] between N(mean, std^2 I) and N(mean_ref, std^2 I): ||mean - mean_ref||^2 / (2 std^2),
    summed over the non-batch axes (averaged over them with ``per_element``, Flow-GRPO's scale)."""
    sq = jnp.square(mean.astype(jnp.float32) - mean_ref.astype(jnp.float32)).reshape(mean.shape[0], -1)
    sq = jnp.mean(sq, axis=1) if per_element else jnp.sum(sq, axis=1)
    return sq / (2.0 * jnp.square(std))


def select_steps(rng, num_steps: int, count: int):
    """``count`` distinct step indices of [0, num_steps), uniformly at random, ascending: int32 [count]."""
    if not 1 <= count <= num_steps:
        raise ValueError(f"train on 1..{num_steps} denoising steps, got {count}")
    return jnp.sort(jax.random.permutation(rng, num_steps)[:count]).astype(jnp.int32)


def grpo_loss(velocity_fn, params, ref_params, trajectory, old_logps, advantages, cond, uncond,
              cfg: sampler_lib.SamplerConfig, steps, *, clip_range: float, kl_weight: float,
              per_element: bool = True) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Flow-GRPO's loss over stored SDE transitions, averaged over the denoising ``steps``.

    trajectory: [B, N + 1, ...] rollout states (state i enters step i); old_logps: [B, N], the
    rollout's log-probabilities (``sampler.sample_trajectory``, summed over the latent);
    advantages: [B]; steps: int32 [S], the steps trained on (``select_steps``). For each step i the
    policy's Gaussian (``solvers.sde_mean_std`` of the guided velocity at t_i) scores the stored
    x_{i+1}: loss_i = ``clipped_policy_loss`` + kl_weight * mean_b ``mean_kl`` to the reference
    (``ref_params``, without gradient; skipped when kl_weight is 0). ``per_element`` divides
    log-probabilities by the latent's size (Flow-GRPO's convention, so that ``clip_range`` is per
    element). Each step is rematerialised, so memory does not grow with S.
    Returns (loss, metrics: 'policy_loss', 'kl', 'ratio', 'clip_fraction', 'approx_kl').
    """
    times = schedules.sampling_times(cfg.num_steps, cfg.shift)
    size = trajectory[0, 0].size
    scale = 1.0 / size if per_element else 1.0
    v_policy = sampler_lib.guided_velocity(velocity_fn, params, cond, uncond, cfg.guidance_scale)
    if kl_weight:
        ref = jax.lax.stop_gradient((ref_params, cond, uncond))
        v_ref = sampler_lib.guided_velocity(velocity_fn, ref[0], ref[1], ref[2], cfg.guidance_scale)

    def one_step(i):
        x, x_next = trajectory[:, i], trajectory[:, i + 1]
        t_cur, t_next = times[i], times[i + 1]
        mean, std = solvers.sde_mean_std(v_policy(x, t_cur).astype(jnp.float32), x, t_cur, t_next, cfg.eta)
        logp = solvers.gaussian_logprob(jax.lax.stop_gradient(x_next), mean, std) * scale
        policy, metrics = clipped_policy_loss(logp, old_logps[:, i] * scale, advantages, clip_range)
        kl = jnp.zeros(())
        if kl_weight:
            mean_ref, _ = solvers.sde_mean_std(v_ref(x, t_cur).astype(jnp.float32), x, t_cur, t_next, cfg.eta)
            kl = jnp.mean(mean_kl(mean, jax.lax.stop_gradient(mean_ref), std, per_element=per_element))
        return policy + kl_weight * kl, {**metrics, "policy_loss": policy, "kl": kl}

    _, (losses, metrics) = jax.lax.scan(lambda c, i: (c, jax.checkpoint(one_step, prevent_cse=False)(i)), None, steps)
    return jnp.mean(losses), {k: jnp.mean(v) for k, v in metrics.items()}
