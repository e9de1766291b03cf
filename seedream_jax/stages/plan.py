"""Ahead-of-time plan of a train step: compile it on a (virtual) mesh without allocating it.

Two steps are planned: pretrain's (``plan_pretrain``) and one rlhf step (``plan_rlhf``: refl,
draft, or grpo's rollout and its updates). The train state's shapes come from ``jax.eval_shape``
and its shardings from the logical rules (``loop.state_layout``, the loop's own code), the batch is
a tree of ``jax.ShapeDtypeStruct`` with the loop's batch sharding, and
``jax.jit(loop step).lower(...).compile()`` gives XLA's own accounting: FLOPs of one step
(``cost_analysis``) and per-device memory (``memory_analysis``). Nothing is materialised, so a
10B-parameter config plans on a laptop's virtual CPU devices.

The memory and FLOPs are those of the program compiled for the backend that ran the planner:
on virtual CPU devices they estimate the TPU/GPU program (the partitioning and the arrays are
the same; fusion, layouts and temporary buffers differ). XLA's FLOPs count the body of a loop
once, whatever its trip count: right for pretrain (no loops), far under the total for rlhf,
whose sampler is a loop over its steps (``rlhf_analytic_flops`` counts every step).
"""
import copy
import dataclasses
import math
import time
from typing import Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from ml_collections import ConfigDict

from seedream_jax import config_lib
from seedream_jax.models.conditioner import tokenize_prompts
from seedream_jax.models.param_count import component_parameter_counts
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.parallel import sharding as sharding_lib
from seedream_jax.rewards import in_graph
from seedream_jax.training import loop
from seedream_jax.training import optimizer as optimizer_lib
from seedream_jax.stages import pretrain, rlhf

# Accelerator memory per chip, bytes (vendor figures, 1 GB = 1e9 bytes).
CHIP_MEMORY = {"TPU v5p": 95e9, "H100": 80e9, "H200": 141e9}
# Peak dense bf16 FLOP/s per chip (vendor figures; H100/H200 SXM without sparsity). One JAX device
# is one chip: a v5p chip's two TensorCores are one device (megacore), so v5p-N has N/2 devices.
CHIP_PEAK_BF16 = {"TPU v5p": 459e12, "H100": 989e12, "H200": 989e12}
TEXT_CACHE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@dataclasses.dataclass
class Plan:
    """What one train step costs on the mesh.

    params: {component: count} (``models.param_count``; an rlhf plan adds the reference DiT
      'ref/mmdit' when it has one, and its 'total' counts it), plus 'trainable' and 'frozen' counts
      of the train state. flops_per_device: XLA's count for the per-device program of one step
      (each loop body once); flops_analytic: the model estimate of :func:`analytic_flops` (pretrain)
      or :func:`rlhf_analytic_flops` (rlhf) for the whole global batch, every loop iteration counted.
    memory: per-device bytes {'arguments', 'outputs', 'aliased', 'temp', 'generated_code', 'total'}
      ('total' = arguments + outputs - aliased + temp + generated_code; the donated state's
      outputs alias its arguments).
    batch: images (pretrain) or prompts (rlhf) per step. rlhf: the planned rlhf settings
      (:func:`plan_rlhf`), None for pretrain.
    """
    mesh: Dict[str, int]
    devices: int
    resolution: int
    batch: int
    dtype: str
    remat_policy: str
    attention_impl: Optional[str]
    rules: str
    frozen: tuple
    params: Dict[str, int]
    flops_per_device: float
    flops_analytic: Dict[str, float]
    memory: Dict[str, int]
    backend: str
    text_cache: bool = False
    blocks: Tuple[int, int] = (0, 0)  # (double, single) blocks of the MMDiT
    extrapolation: Optional[dict] = None  # plan_extrapolated: how the full depth was reached
    rlhf: Optional[dict] = None


def _fake_tokenizer(texts, max_length):
    """Stands in for the LLM tokenizer: only the token arrays' shapes matter here."""
    return np.zeros((len(texts), max_length), np.int32), np.ones((len(texts), max_length), bool)


def abstract_batch(pipe, cfg, resolution: int, batch: int, cached_latents: bool, mesh,
                   text_cache: bool = False, text_cache_dtype: str = "float16") -> dict:
    """The pretrain batch as ``jax.ShapeDtypeStruct`` [batch, ...] with the loop's batch sharding:
    cached VAE posteriors (frozen VAE) or images, and the conditioner's token arrays or, with
    ``text_cache``, its cached outputs ``text_context`` [B, L, D], ``text_mask`` [B, L] and
    ``text_pooled`` [B, D] in the cache's float dtype (``data/text_cache.py``; the loss then
    never runs the conditioner)."""
    tokens = tokenize_prompts(["a"], _fake_tokenizer, pipe.conditioner_cfg)
    if text_cache:
        ctx, mask, pooled = jax.eval_shape(
            lambda: pipe.conditioner.init_with_output(jax.random.PRNGKey(0), **tokens)[0])
        dt = np.dtype(TEXT_CACHE_DTYPES[text_cache_dtype])
        tokens = {"text_context": np.zeros(ctx.shape, dt), "text_mask": np.zeros(mask.shape, bool),
                  "text_pooled": np.zeros(pooled.shape, dt)}
    if cached_latents:
        lat = np.zeros((1,) + pipe.latent_shape(resolution, resolution), np.float32)
        arrays = {"latent_mean": lat, "latent_logvar": lat, **tokens}
    else:
        arrays = {"image": np.zeros((1, resolution, resolution, 3), np.float32), **tokens}
    return _abstract(arrays, batch, mesh)


def _abstract(arrays: dict, batch: int, mesh) -> dict:
    """Host arrays [b, ...] -> ``jax.ShapeDtypeStruct`` [batch, ...] with the loop's batch sharding."""
    return {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype, sharding=mesh_lib.batch_sharding(mesh, v.ndim))
            for k, v in arrays.items()}


def analytic_flops(cfg, resolution: int, batch: int, params: Dict[str, int], frozen: tuple,
                   text_cache: bool = False) -> Dict[str, float]:
    """Textbook FLOPs of one step for the global batch, the '6 N T' rule per component.

    A matmul parameter costs 2 FLOPs per token forward and 4 more backward; a frozen component
    runs forward only (2 N T; its input gradients are not needed as nothing before it trains).
    MMDiT: N_mmdit over T = image tokens (H/16 x W/16) + text tokens, plus attention scores
    4 T^2 d per block forward (QK^T and AV). Text encoders: the LLM over ``llm_max_length`` and
    ByT5 over ``byt5_max_length`` tokens. The VAE encoder runs only without cached latents and is
    left out (convolutions; small next to the DiT). N counts every parameter, so embedding tables
    (lookups, not matmuls; 0.5B of a 7B LLM) and the per-stream weights of double blocks (each sees
    only its own stream's tokens) make it an upper bound. With ``text_cache`` the text encoders do
    not run (0). Returns {'mmdit', 'attention', 'text', 'total'}.
    """
    m = cfg.model
    frozen_top = {p.strip("/") for p in frozen}

    def mult(*path):  # 6 if trainable, 2 if the component is frozen
        return 2.0 if any("/".join(path[:i]) in frozen_top for i in range(1, len(path) + 1)) else 6.0

    image_tokens = (resolution // 16) ** 2
    text_tokens = int(m.llm_max_length) + (int(m.byt5_max_length) if m.byt5 is not None else 0)
    t = image_tokens + text_tokens
    width = int(m.mmdit.num_heads) * int(m.mmdit.head_dim)
    blocks = int(m.mmdit.num_double_blocks) + int(m.mmdit.num_single_blocks)
    dit_mult = mult("mmdit")
    out = {"mmdit": dit_mult * params["mmdit"] * t * batch,
           "attention": dit_mult / 2 * 4 * t * t * width * blocks * batch}
    llm = mult("conditioner", "text_encoder", "llm") * params["llm"] * int(m.llm_max_length)
    adapter = mult("conditioner", "text_encoder") * params["llm_adapter"] * int(m.llm_max_length)
    byt5 = mult("conditioner", "byt5") * params["byt5"] * int(m.byt5_max_length)
    out["text"] = 0.0 if text_cache else (llm + adapter + byt5) * batch
    out["total"] = sum(out.values())
    return out


def compiled_memory(compiled) -> Dict[str, int]:
    """XLA's buffer assignment of a compiled program in bytes: arguments, outputs, aliased, temp,
    generated_code and their total (arguments + outputs - aliased + temp + code)."""
    stats = compiled.memory_analysis()
    mem = {"arguments": int(stats.argument_size_in_bytes), "outputs": int(stats.output_size_in_bytes),
           "aliased": int(stats.alias_size_in_bytes), "temp": int(stats.temp_size_in_bytes),
           "generated_code": int(stats.generated_code_size_in_bytes)}
    mem["total"] = mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temp"] + mem["generated_code"]
    return mem


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def plan_pretrain(cfg, *, resolution: int, batch: int, mesh_spec: Dict[str, int], devices=None,
                  text_cache: bool = False) -> Plan:
    """Compile ``cfg``'s pretrain step for ``batch`` images of ``resolution`` px on ``mesh_spec``.

    ``cfg.model.{dtype, remat_policy, attention_impl}``, ``cfg.sharding.rules`` and
    ``cfg.pretrain.{frozen, optimizer, train.ema_decay}`` are used as the loop would.
    ``text_cache``: the batch carries the frozen conditioner's cached outputs instead of tokens
    (as an ArrayRecord dataset with a text cache feeds the stage), so the LLM and ByT5 do not run
    in the step; their frozen parameters stay in the train state, as the loop holds them. Needs
    every conditioner parameter frozen (``pretrain.frozen`` naming ``conditioner``), as the stage does.
    """
    stage = cfg.pretrain
    mesh, rules = _mesh_and_rules(cfg, mesh_spec, devices, batch)
    vae_cfg = config_lib.build_model_configs(cfg.model)[2]
    pipe = pretrain.make_pipeline(cfg, stage, vae_cfg, _fake_tokenizer)
    init_params, loss_fn = pretrain.model_functions(pipe, stage, resolution, resolution)
    task = loop.Task(name="plan", init_params=init_params, loss_fn=loss_fn, data=None)
    tx, layout = _state_layout(task, stage, mesh, rules)
    if text_cache and _leaf_count(layout.abstract.params.get("conditioner", {})):
        raise ValueError("a text cache feeds only a frozen conditioner: pretrain.frozen must cover 'conditioner' "
                         f"(it is {tuple(stage.frozen)})")
    cached = "vae" in {p.strip("/") for p in stage.frozen}
    inputs = abstract_batch(pipe, cfg, resolution, batch, cached, mesh, text_cache=text_cache)
    compiled = _compile_step(task, tx, stage, layout, inputs, mesh, rules)
    counts = _counts(pipe, resolution, layout)
    return _plan(cfg, stage, mesh, resolution, batch, counts, compiled, text_cache=bool(text_cache),
                 flops_analytic=analytic_flops(cfg, resolution, batch, counts, tuple(stage.frozen), text_cache))


# A reward for rlhf plans: the learned reward models are trained stages (weights on disk) that the
# scorers close over as constants; a weightless, differentiable score of the pixels stands in.
PLAN_REWARD = in_graph.GraphReward("pixel_mean", True, lambda prompts: {},
                                   lambda images, prepared: jnp.mean(images.astype(jnp.float32), axis=(1, 2, 3)))


def plan_rlhf(cfg, *, resolution: int, batch: int, mesh_spec: Dict[str, int], devices=None) -> Plan:
    """Compile one rlhf step of ``cfg.rlhf`` for ``batch`` prompts of ``resolution`` x ``resolution``
    px on ``mesh_spec``: the loop's step over ``rlhf.model_task``, i.e. one refl or draft update, or
    grpo's rollout (``group_size`` samples per prompt) and its ``inner_steps`` updates.

    The source stage's pipeline is ``cfg.model`` with ``cfg.pretrain``'s time shift (what a
    pretrain source records). ``cfg.rlhf.{method, num_steps, solver, guidance_scale, frozen,
    refl, draft, grpo, optimizer, train.ema_decay}`` are used as the stage would; grpo with a KL
    holds the reference DiT in the frozen state. The rewards of ``rlhf.rewards`` are replaced by
    ``PLAN_REWARD`` (the mean pixel): the learned reward models need trained stages, and they are
    small next to the step (a 64 px image tower and a small text tower). ``flow_weight`` must be 0.
    """
    s = copy.deepcopy(cfg.rlhf)
    if float(s.flow_weight) > 0:
        raise ValueError(f"rlhf.flow_weight={s.flow_weight}: the planner plans the rlhf step without the flow "
                         "regulariser (set it to 0)")
    s.height = s.width = resolution
    s.rewards = ConfigDict({PLAN_REWARD.name: 1.0})
    mesh, rules = _mesh_and_rules(cfg, mesh_spec, devices, batch)
    vae_cfg = config_lib.build_model_configs(cfg.model)[2]
    pipe = pretrain.make_pipeline(cfg, cfg.pretrain, vae_cfg, _fake_tokenizer)
    task = rlhf.model_task(s, pipe, [PLAN_REWARD])
    tx, layout = _state_layout(task, s, mesh, rules)
    inputs = _abstract(rlhf.prompt_arrays(pipe, [PLAN_REWARD], ["a"]), batch, mesh)
    compiled = _compile_step(task, tx, s, layout, inputs, mesh, rules)
    counts = _counts(pipe, resolution, layout)
    g = s.grpo
    settings = {"method": str(s.method), "num_steps": int(s.num_steps), "solver": str(s.solver),
                "guidance_scale": float(s.guidance_scale), "reward": PLAN_REWARD.name,
                "rewards_replaced": cfg.rlhf.rewards.to_dict(), "updates": int(task.inner_steps)}
    if s.method == "refl":
        settings["window"] = tuple(int(v) for v in s.refl.window)
    elif s.method == "draft":
        settings["k"] = int(s.draft.k)
    else:
        settings.update(group_size=int(g.group_size), eta=float(g.eta), kl_weight=float(g.kl_weight),
                        train_steps=max(1, int(float(g.train_fraction) * int(s.num_steps))))
    return _plan(cfg, s, mesh, resolution, batch, counts, compiled, rlhf=settings,
                 flops_analytic=rlhf_analytic_flops(cfg, s, resolution, batch, counts))


def rlhf_analytic_flops(cfg, stage_cfg, resolution: int, batch: int, params: Dict[str, int]) -> Dict[str, float]:
    """Textbook FLOPs of one rlhf step for ``batch`` prompts, every sampler step counted, by the
    per-token rule of :func:`analytic_flops`.

    One image through the DiT costs F = 2 N_mmdit T + 4 T^2 d per block forward, 3 F forward and
    backward (the 6 N T rule; the recomputation of remat is not counted); classifier-free guidance
    (``guidance_scale`` != 1) runs the DiT on twice the images. Per step, B = ``batch``:
      refl   'sampling' (first + last) / 2 of ``refl.window`` steps at F (the mean drawn step),
             'trained' one step at 3 F, on B images;
      draft  'sampling' num_steps - k steps at F, 'trained' k steps at 3 F, on B images;
      grpo   'sampling' the rollout's num_steps at F on B G images (G = ``group_size``), 'trained'
             ``inner_steps`` updates of S = int(train_fraction num_steps) steps at 3 F on B G
             images, 'reference' the same steps at F for the KL (0 without one).
    'text': the conditioner once per encoded prompt (B, or B G for grpo's rollout and for each of
    its updates; plus the empty prompt under guidance), forward only where frozen or without
    gradient. The VAE decode and the reward are not counted (convolutions at the image size, and a
    small model). Returns {'sampling', 'trained', 'reference', 'text', 'total'}.
    """
    s = stage_cfg
    forward = analytic_flops(cfg, resolution, 1, params, ("mmdit", "conditioner"))  # every part at 2 N T
    trained = analytic_flops(cfg, resolution, 1, params, tuple(s.frozen))  # 6 N T where trainable
    dit = forward["mmdit"] + forward["attention"]
    guided = 1 if float(s.guidance_scale) == 1.0 else 2
    n = int(s.num_steps)
    if s.method == "grpo":
        g = s.grpo
        images, updates = batch * int(g.group_size), int(g.inner_steps)
        steps = updates * max(1, int(float(g.train_fraction) * n))
        out = {"sampling": n * dit * images * guided, "trained": 3 * steps * dit * images * guided,
               "reference": steps * dit * images * guided if float(g.kl_weight) > 0 else 0.0,
               "text": (images + guided - 1) * (forward["text"] + updates * trained["text"])}
    else:
        live = 1 if s.method == "refl" else int(s.draft.k)
        dead = sum(int(v) for v in s.refl.window) / 2 if s.method == "refl" else n - live
        out = {"sampling": dead * dit * batch * guided, "trained": 3 * live * dit * batch * guided, "reference": 0.0,
               "text": (batch + guided - 1) * trained["text"]}
    out["total"] = sum(out.values())
    return out


def _mesh_and_rules(cfg, mesh_spec: Dict[str, int], devices, batch: int):
    """The mesh of ``mesh_spec`` (its batch divisible by data x fsdp) and ``cfg.sharding.rules``."""
    mesh = mesh_lib.make_mesh(mesh_spec, devices)
    if batch % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"global batch {batch} is not divisible by data x fsdp = "
                         f"{mesh.shape['data'] * mesh.shape['fsdp']} devices")
    return mesh, sharding_lib.resolve_rules(cfg.sharding.rules)


def _state_layout(task: loop.Task, stage_cfg, mesh, rules):
    """(optimizer, ``loop.state_layout``) of ``task`` as ``loop.train`` makes them from ``stage_cfg``."""
    tx = optimizer_lib.make_optimizer(stage_cfg.optimizer, int(stage_cfg.train.steps))
    use_ema = float(stage_cfg.train.ema_decay) > 0
    return tx, loop.state_layout(task, tx, use_ema, jax.random.PRNGKey(0), mesh, rules)


def _compile_step(task: loop.Task, tx, stage_cfg, layout, inputs: dict, mesh, rules):
    """The loop's jitted, donated train step of ``task`` compiled for the abstract state and batch."""
    step = loop.jit_train_step(task, tx, float(stage_cfg.train.ema_decay), layout.shardings)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # as the loop traces its step
        return step.lower(layout.abstract, inputs).compile()


def _counts(pipe, resolution: int, layout) -> Dict[str, int]:
    """Parameters per component (``component_parameter_counts``; the reference DiT 'ref/mmdit' of
    an rlhf state counted too, and in 'total'), and the state's 'trainable' and 'frozen' counts."""
    counts = component_parameter_counts(pipe.conditioner_cfg, pipe.mmdit_cfg, pipe.vae_cfg, resolution)
    reference = _leaf_count(layout.abstract.frozen.get(rlhf.REFERENCE, {}))
    if reference:
        total = counts.pop("total")
        counts.update({f"{rlhf.REFERENCE}/mmdit": reference, "total": total + reference})
    return dict(counts, trainable=_leaf_count(layout.abstract.params), frozen=_leaf_count(layout.abstract.frozen))


def _plan(cfg, stage_cfg, mesh, resolution: int, batch: int, counts, compiled, **fields) -> Plan:
    return Plan(mesh=dict(mesh.shape), devices=mesh.size, resolution=resolution, batch=batch,
                dtype=str(cfg.model.dtype), remat_policy=str(cfg.model.remat_policy),
                attention_impl=cfg.model.attention_impl, rules=str(cfg.sharding.rules),
                frozen=tuple(stage_cfg.frozen), params=counts, flops_per_device=_flops(compiled),
                memory=compiled_memory(compiled), backend=jax.default_backend(),
                blocks=(int(cfg.model.mmdit.num_double_blocks), int(cfg.model.mmdit.num_single_blocks)), **fields)


def _leaf_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# ---- fewer blocks, extrapolated: the full depth's memory and FLOPs from two shallow compiles

MEMORY_PARTS = ("arguments", "outputs", "aliased", "temp", "generated_code")
PLANNERS = {"pretrain": plan_pretrain, "rlhf": plan_rlhf}


def depth_unit(double: int, single: int) -> Tuple[int, Tuple[int, int]]:
    """(k, (d, s)): the MMDiT's ``double`` + ``single`` blocks as k units of d double + s single
    blocks (k = their greatest common divisor; the full size's 10 + 20 is 10 x (1 + 2))."""
    k = math.gcd(int(double), int(single)) or 1
    return k, (int(double) // k, int(single) // k)


def with_depth(cfg, units: int):
    """A copy of ``cfg`` whose MMDiT has ``units`` depth units (``depth_unit``) instead of its own."""
    _, (d, s) = depth_unit(cfg.model.mmdit.num_double_blocks, cfg.model.mmdit.num_single_blocks)
    out = copy.deepcopy(cfg)
    out.model.mmdit.num_double_blocks, out.model.mmdit.num_single_blocks = units * d, units * s
    return out


def linear_fit(points: Dict[int, Dict[str, float]]) -> Dict[str, Tuple[float, float]]:
    """{depth: {quantity: value}} at two depths -> {quantity: (intercept, slope per depth unit)}."""
    if len(points) != 2:
        raise ValueError(f"a linear fit needs exactly two depths, got {sorted(points)}")
    (k1, a), (k2, b) = sorted(points.items())
    if k1 == k2:
        raise ValueError("a linear fit needs two different depths")
    fit = {}
    for q in a:
        slope = (b[q] - a[q]) / (k2 - k1)
        fit[q] = (a[q] - slope * k1, slope)
    return fit


def extrapolate(fit: Dict[str, Tuple[float, float]], units: int) -> Dict[str, float]:
    """The fitted quantities at ``units`` depth units: intercept + slope x units."""
    return {q: c + m * units for q, (c, m) in fit.items()}


def _fitted(plan: Plan) -> Dict[str, float]:
    """A plan's quantities that are linear in the MMDiT's depth: the memory parts, XLA FLOPs per
    device, the parameter counts ('params/<name>') and the analytic FLOPs ('analytic/<term>')."""
    out = {k: float(plan.memory[k]) for k in MEMORY_PARTS}
    out["flops_per_device"] = float(plan.flops_per_device)
    out.update({f"params/{k}": float(v) for k, v in plan.params.items()})
    out.update({f"analytic/{k}": float(v) for k, v in plan.flops_analytic.items()})
    return out


def _memory_total(m: Dict[str, float]) -> float:
    return m["arguments"] + m["outputs"] - m["aliased"] + m["temp"] + m["generated_code"]


def plan_extrapolated(cfg, *, fit_depths: Sequence[int] = (1, 2), check_depth: Optional[int] = None,
                      stage: str = "pretrain", **plan_kwargs) -> Plan:
    """The full depth's plan (``PLANNERS[stage]``: ``plan_pretrain`` or ``plan_rlhf``, called with
    ``plan_kwargs``) from compiles of ``fit_depths`` (two depths, in units of ``depth_unit``):
    memory (each part of ``memory_analysis``), XLA FLOPs per device, the parameter counts and the
    analytic FLOPs fitted linearly in depth and extrapolated to ``cfg``'s own depth (the counts
    and analytic FLOPs are exactly linear, so they are the full model's). ``check_depth``: one
    more compile whose measured values are compared with the fit's prediction there. The returned
    plan's ``extrapolation`` holds the depths, the fit ({quantity: (intercept, per unit)}), each
    compiled depth's measured values and the check's relative errors
    {quantity: (predicted - measured) / measured}."""
    full_units, unit = depth_unit(cfg.model.mmdit.num_double_blocks, cfg.model.mmdit.num_single_blocks)
    measured, timings = {}, {}
    for units in list(fit_depths) + ([check_depth] if check_depth else []):
        t0 = time.time()
        shallow = PLANNERS[stage](with_depth(cfg, units), **plan_kwargs)
        timings[units] = time.time() - t0
        measured[units] = _fitted(shallow)
    fit = linear_fit({k: measured[k] for k in fit_depths})
    values = extrapolate(fit, full_units)
    check = None
    if check_depth:
        predicted = extrapolate(fit, check_depth)
        predicted["total"], actual_total = _memory_total(predicted), _memory_total(measured[check_depth])
        actual = dict(measured[check_depth], total=actual_total)
        check = {q: (predicted[q] - actual[q]) / actual[q] if actual[q] else 0.0 for q in ("total", "temp",
                                                                                          "flops_per_device")}
    memory = {k: int(round(values[k])) for k in MEMORY_PARTS}
    memory["total"] = int(round(_memory_total(values)))
    extrapolation = {"unit": unit, "units": full_units, "fit_depths": tuple(fit_depths), "check_depth": check_depth,
                     "fit": fit, "measured": measured, "check": check, "compile_seconds": timings}
    return dataclasses.replace(
        shallow, memory=memory, flops_per_device=values["flops_per_device"],
        params={k: int(round(values[f"params/{k}"])) for k in shallow.params},
        flops_analytic={k: values[f"analytic/{k}"] for k in shallow.flops_analytic},
        blocks=(int(cfg.model.mmdit.num_double_blocks), int(cfg.model.mmdit.num_single_blocks)),
        extrapolation=extrapolation)
