"""Stage kind ``rlhf``: reward fine-tuning of the DiT (ReFL, DRaFT-K, Flow-GRPO / DanceGRPO).

Starts from a trained stage through ``rlhf.init_from`` (by default every component of
``<workdir>/pretrain``; a CT or SFT stage alike): the pipeline (model configs, time shift,
tokenizer) is the one the ``mmdit`` source recorded in its stage.json, so the result samples and
evaluates like its source (``sample.checkpoint = 'rlhf'``, ``eval.checkpoint = 'rlhf'``). What
trains is everything outside ``rlhf.frozen`` (by default the DiT); the loop keeps the EMA.

Prompts (``data/prompt_data.py``): the world's captions or a prompts file, ``train.batch_size`` per
step. Rewards (``rewards/in_graph.py``): the weighted sum of ``rlhf.rewards`` ({name: weight}),
each logged every step as ``reward/<name>`` (a NaN reward stops the run at that step naming it:
the loop's non-finite guard). Methods (``training/rlhf_losses.py``):
  refl   noise -> ODE steps without gradient to a uniform step of ``refl.window`` -> one guided
         velocity with gradient -> x0 = x_t - t v -> VAE decode -> rewards -> ``reward_loss``;
  draft  the ODE sampler with gradient through its last ``draft.k`` steps -> decode -> rewards;
  grpo   a rollout per batch (``Task.rollout``, no gradient): ``grpo.group_size`` SDE samples
         (noise level ``grpo.eta``) per prompt with CFG, their trajectories and per-step
         log-probabilities, rewards and group-normalised advantages; then ``grpo.inner_steps``
         updates of Flow-GRPO's clipped loss on ``int(train_fraction * num_steps)`` random steps
         with the KL to the frozen reference DiT ``frozen['ref']['mmdit']`` (the mmdit source;
         it reads the current text conditioning, so with a trained conditioner the KL measures
         the DiT's drift only).
``flow_weight`` > 0 adds the flow-matching loss of the pretrain stage (``pretrain.model_functions``)
on the stage's image data (``rlhf.data``, else ``cfg.data``) as a regulariser.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax import rewards as rewards_api
from seedream_jax.checkpoint.init_from import parse_sources
from seedream_jax.checkpoint.stage_dir import StageDescription, open_stage
from seedream_jax.data import prompt_data
from seedream_jax.eval import curves
from seedream_jax.eval.grid import image_grid
from seedream_jax.models.conditioner import tokenize_prompts
from seedream_jax.models.partition import merge_params
from seedream_jax.rewards import in_graph
from seedream_jax.sampling import sampler as sampler_lib
from seedream_jax.stages import common, pretrain
from seedream_jax.stages.sample import stage_pipeline
from seedream_jax.training import loop, rlhf_losses

METHODS = ("refl", "draft", "grpo")
REFERENCE = "ref"  # frozen[REFERENCE]['mmdit']: GRPO's reference DiT
UNCOND, FLOW = "uncond/", "flow/"  # batch keys: the empty prompt's tokens, the regulariser's images


def source_stage(stage_cfg, workdir: str):
    """The opened stage the DiT starts from (``init_from['mmdit']``)."""
    sources = parse_sources(stage_cfg.init_from, workdir)
    if "mmdit" not in sources:
        raise ValueError(f"rlhf.init_from must name the stage the DiT starts from ('mmdit'), got {dict(sources)}")
    return open_stage(sources["mmdit"][0])


def load_rewards(stage_cfg, workdir: str) -> list:
    """The ``GraphReward`` of each name of ``rlhf.rewards``, its model loaded from ``reward_stages``
    when named there; refl and draft accept only rewards differentiable in the graph."""
    s = stage_cfg
    if not s.rewards:
        raise ValueError("rlhf.rewards is empty: name at least one reward, e.g. {'alignment': 1.0}")
    for name, stage in s.reward_stages.items():
        if name in s.rewards and stage:
            try:
                rewards_api.load_stage(common.resolve(workdir, stage), name=name)
            except ValueError as e:
                raise ValueError(f"rlhf.reward_stages.{name}: {e}") from e
    out = [in_graph.graph_reward(name) for name in s.rewards]
    if s.method != "grpo":
        bad = [r.name for r in out if not r.differentiable]
        if bad:
            raise ValueError(f"rlhf.method={s.method!r} backpropagates through the rewards, but {bad} "
                             "cannot be differentiated in the graph; use method 'grpo' for them")
    return out


def prompt_arrays(pipe, graph_rewards, prompts) -> dict:
    """The host arrays of a batch of ``prompts`` (B strings): their token arrays [B, L], the empty
    prompt's under ``UNCOND`` + key, and every reward's prepared inputs (``in_graph.prepare_all``)."""
    tokens = tokenize_prompts(prompts, pipe.tokenizer, pipe.conditioner_cfg)
    empty = tokenize_prompts([""] * len(prompts), pipe.tokenizer, pipe.conditioner_cfg)
    return {**tokens, **{UNCOND + k: v for k, v in empty.items()}, **in_graph.prepare_all(graph_rewards, prompts)}


def model_task(stage_cfg, pipe, graph_rewards) -> loop.Task:
    """The Task of ``rlhf.method`` (see the module docstring) from the stage's settings, its pipeline
    and its rewards alone: no data, init sources or evaluation (``build_task`` adds those from the
    workdir; ``stages/plan.py`` compiles this Task abstractly).

    init_params: the pipeline's components for images of ``rlhf.height`` x ``rlhf.width``, split by
    ``rlhf.frozen``, plus for grpo with a KL the frozen reference DiT ``frozen['ref']['mmdit']``.
    The batch: ``prompt_arrays`` of B prompts (with ``flow_weight`` > 0 also the regulariser's
    image batch under ``FLOW`` + key). ``graph_rewards``: the ``GraphReward`` of each name of
    ``rlhf.rewards``.
    """
    s = stage_cfg
    if s.method not in METHODS:
        raise ValueError(f"rlhf.method must be one of {METHODS}, got {s.method!r}")
    grpo, g = s.method == "grpo", s.grpo
    height, width = int(s.height), int(s.width)
    latent_shape = pipe.latent_shape(height, width)
    n_steps = int(s.num_steps)
    sampler_cfg = sampler_lib.SamplerConfig(num_steps=n_steps, solver=str(s.solver) if not grpo else "euler",
                                            guidance_scale=float(s.guidance_scale),
                                            eta=float(g.eta) if grpo else 0.0, shift=pipe.mu(height, width))
    weights = {name: float(w) for name, w in s.rewards.items()}
    use_ref = grpo and float(g.kl_weight) > 0
    base_init, flow_loss = pretrain.model_functions(pipe, s, height, width)
    flow_weight = float(s.flow_weight)
    token_keys = list(tokenize_prompts(["a"], pipe.tokenizer, pipe.conditioner_cfg))
    lo, hi = (int(v) for v in s.refl.window)
    if s.method == "refl" and not 0 <= lo <= hi < n_steps:
        raise ValueError(f"rlhf.refl.window {tuple(s.refl.window)} must satisfy 0 <= first <= last < "
                         f"num_steps={n_steps}")
    group = int(g.group_size) if grpo else 1
    train_count = max(1, int(float(g.train_fraction) * n_steps))

    def init_params(rng):
        trainable, frozen = base_init(rng)
        if use_ref:  # same boxes (logical axes) as the DiT, so the same shardings
            frozen = merge_params(frozen, {REFERENCE: {"mmdit": merge_params(trainable, frozen)["mmdit"]}})
        return trainable, frozen

    def conditioning(p, batch):
        cond = pipe.encode(p, {k: batch[k] for k in token_keys})
        uncond = (pipe.encode(p, {k: batch[UNCOND + k][:1] for k in token_keys})
                  if float(s.guidance_scale) != 1.0 else None)
        return cond, uncond

    def rollout(params, frozen, batch, rng):
        """B prompts -> B * G SDE samples: their trajectories [BG, N + 1, ...], log-probabilities
        [BG, N], rewards and advantages [BG]; the per-prompt arrays repeated G times."""
        p = merge_params(params, frozen)
        per_prompt = {k: jnp.repeat(v, group, axis=0) for k, v in batch.items() if not k.startswith((UNCOND, FLOW))}
        cond, uncond = conditioning(p, {**batch, **per_prompt})
        noise_rng, sde_rng = jax.random.split(rng)
        b = batch[token_keys[0]].shape[0]
        noise = (jnp.repeat(jax.random.normal(noise_rng, (b,) + latent_shape), group, axis=0) if g.same_noise
                 else jax.random.normal(noise_rng, (b * group,) + latent_shape))
        z0, trajectory, logps = sampler_lib.sample_trajectory(pipe.velocity, p, noise, cond, uncond, sampler_cfg,
                                                              rng=sde_rng, return_trajectory=True)
        total, per = in_graph.score_all(graph_rewards, weights, pipe.decode_latents(p, z0), per_prompt)
        advantages = rlhf_losses.group_advantages(total, group, eps=float(g.adv_eps), clip=float(g.adv_clip))
        out = {**batch, **per_prompt, "trajectory": jnp.moveaxis(trajectory, 0, 1), "old_logps": logps.T,
               "advantages": advantages, "reward/total": total, **{f"reward/{n}": r for n, r in per.items()}}
        return jax.lax.stop_gradient(out)

    def reward_latents(p, batch, rng):
        cond, uncond = conditioning(p, batch)
        noise_rng, k_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, (batch[token_keys[0]].shape[0],) + latent_shape)
        if s.method == "refl":
            stop = jax.random.randint(k_rng, (), lo, hi + 1)
            return rlhf_losses.refl_latents(pipe.velocity, p, noise, cond, uncond, sampler_cfg, stop)
        return rlhf_losses.draft_latents(pipe.velocity, p, noise, cond, uncond, sampler_cfg, int(s.draft.k))

    def loss_fn(params, frozen, batch, rng):
        p = merge_params(params, frozen)
        main_rng, flow_rng = jax.random.split(rng)
        if grpo:
            cond, uncond = conditioning(p, batch)
            ref = {**p, "mmdit": p[REFERENCE]["mmdit"]} if use_ref else None
            steps = rlhf_losses.select_steps(main_rng, n_steps, train_count)
            loss, metrics = rlhf_losses.grpo_loss(
                pipe.velocity, p, ref, batch["trajectory"], batch["old_logps"], batch["advantages"], cond, uncond,
                sampler_cfg, steps, clip_range=float(g.clip_range), kl_weight=float(g.kl_weight) if use_ref else 0.0,
                per_element=bool(g.per_element))
            rewards = {k: v for k, v in batch.items() if k.startswith("reward/")}
            metrics["advantage_abs"] = jnp.mean(jnp.abs(batch["advantages"]))
        else:
            images = pipe.decode_latents(p, reward_latents(p, batch, main_rng))
            total, per = in_graph.score_all(graph_rewards, weights, images, batch)
            loss = rlhf_losses.reward_loss(total, kind=str(s.reward_loss), margin=float(s.reward_margin),
                                           weight=float(s.reward_weight))
            rewards = {"reward/total": total, **{f"reward/{n}": r for n, r in per.items()}}
            metrics = {"reward_loss": loss}
        metrics.update({k: jnp.mean(v) for k, v in rewards.items()})
        if flow_weight > 0:
            flow_batch = {k[len(FLOW):]: v for k, v in batch.items() if k.startswith(FLOW)}
            fm, _ = flow_loss(params, frozen, flow_batch, flow_rng)
            loss, metrics["flow_loss"] = loss + flow_weight * fm, fm
        return loss, metrics

    return loop.Task(name="rlhf", init_params=init_params, loss_fn=loss_fn, data=None,
                     rollout=rollout if grpo else None, inner_steps=int(g.inner_steps) if grpo else 1)


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The Task of ``model_task`` for the source stage's pipeline and the loaded rewards, with its
    prompts (and the flow regulariser's images), init sources and evaluation."""
    s = stage_cfg
    if s.method not in METHODS:
        raise ValueError(f"rlhf.method must be one of {METHODS}, got {s.method!r}")
    pipe = stage_pipeline(source_stage(s, workdir), attention_impl=cfg.model.attention_impl)
    height, width = int(s.height), int(s.width)
    graph_rewards = load_rewards(s, workdir)
    task = model_task(s, pipe, graph_rewards)
    sources = parse_sources(s.init_from, workdir)
    use_ref = s.method == "grpo" and float(s.grpo.kl_weight) > 0
    init_sources = {**sources, **({f"{REFERENCE}/mmdit": sources["mmdit"]} if use_ref else {})}
    images = (pretrain.image_data(cfg, workdir, s, pipe, sources["vae"][0] if "vae" in sources else None)
              if float(s.flow_weight) > 0 else None)
    rows = prompt_data.prompt_rows(s.prompts, workdir, int(s.train.batch_size), pipe.tokenizer,
                                   pipe.conditioner_cfg.llm_max_length, tuple(s.prompt_kind_repeats))
    data = prompt_data.PromptBatches(rows, lambda prompts: prompt_arrays(pipe, graph_rewards, prompts), images, FLOW)
    prompts = list(s.eval_prompts)

    def evaluate(state, step):
        p = merge_params(state.ema_params or state.params, state.frozen)
        pics = pipe(p, prompts, height=height, width=width, num_steps=int(s.eval_steps), solver=str(s.solver),
                    guidance_scale=float(s.guidance_scale))
        scalars = {f"eval/reward/{n}": float(np.mean(np.asarray(rewards_api.score(n, pics, prompts))))
                   for n in s.rewards}
        return loop.Measurements(scalars=scalars, images={"samples": image_grid(list(pics), prompts,
                                                                               columns=min(4, len(prompts)), scale=2)})

    return dataclasses.replace(task, data=data, init_sources=init_sources, evaluate=evaluate if prompts else None)


def finish(cfg, stage_cfg, workdir: str, stage_dir: str, result) -> dict:
    """Draws every reward's curve over training (``reward/<name>`` per step and the periodic
    ``eval/reward/<name>``, from the stage's TensorBoard events) to ``reward_curves.png``."""
    series = curves.read_scalars(os.path.join(stage_dir, "tensorboard"), ("reward/", "eval/reward/"))
    if not series:
        return {}
    return {"reward_curves": curves.plot_curves(series, os.path.join(stage_dir, "reward_curves.png"))}


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """The source stage's components, time shift and tokenizer (the reference copy is not a component)."""
    stage = source_stage(stage_cfg, workdir)
    parts = {}
    for name in ("conditioner", "mmdit", "vae"):
        module, config = stage.component(name)
        parts[name] = (type(module), config)
    return StageDescription(components=parts, schedule=stage.meta["schedule"], tokenizer=stage.tokenizer())
