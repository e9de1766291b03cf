"""Ahead-of-time plan of the pretrain step: compile it on a (virtual) mesh without allocating it.

The train state's shapes come from ``jax.eval_shape`` and its shardings from the logical rules
(``loop.state_layout``, the loop's own code), the batch is a tree of ``jax.ShapeDtypeStruct`` with
the loop's batch sharding, and ``jax.jit(loop step).lower(...).compile()`` gives XLA's own
accounting: FLOPs of one step (``cost_analysis``) and per-device memory (``memory_analysis``).
Nothing is materialised, so a 10B-parameter config plans on a laptop's virtual CPU devices.

The memory and FLOPs are those of the program compiled for the backend that ran the planner:
on virtual CPU devices they estimate the TPU/GPU program (the partitioning and the arrays are
the same; fusion, layouts and temporary buffers differ).
"""
import dataclasses
from typing import Dict, Optional

import flax.linen as nn
import jax
import numpy as np

from seedream_jax import config_lib
from seedream_jax.models.conditioner import tokenize_prompts
from seedream_jax.models.param_count import component_parameter_counts
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.parallel import sharding as sharding_lib
from seedream_jax.training import loop
from seedream_jax.training import optimizer as optimizer_lib
from seedream_jax.stages import pretrain

# Accelerator memory per chip, bytes (vendor figures, 1 GB = 1e9 bytes).
CHIP_MEMORY = {"TPU v5p": 95e9, "H100": 80e9, "H200": 141e9}


@dataclasses.dataclass
class Plan:
    """What one pretrain step costs on the mesh.

    params: {component: count} (``models.param_count``), plus 'trainable' and 'frozen' counts
      of the train state. flops_per_device: XLA's count for the per-device program of one step;
      flops_analytic: the model estimate of :func:`analytic_flops` for the whole global batch.
    memory: per-device bytes {'arguments', 'outputs', 'aliased', 'temp', 'generated_code', 'total'}
      ('total' = arguments + outputs - aliased + temp + generated_code; the donated state's
      outputs alias its arguments).
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


def _fake_tokenizer(texts, max_length):
    """Stands in for the LLM tokenizer: only the token arrays' shapes matter here."""
    return np.zeros((len(texts), max_length), np.int32), np.ones((len(texts), max_length), bool)


def abstract_batch(pipe, cfg, resolution: int, batch: int, cached_latents: bool, mesh) -> dict:
    """The pretrain batch as ``jax.ShapeDtypeStruct`` [batch, ...] with the loop's batch sharding:
    token arrays of the conditioner, and cached VAE posteriors (frozen VAE) or images."""
    tokens = tokenize_prompts(["a"], _fake_tokenizer, pipe.conditioner_cfg)
    if cached_latents:
        lat = np.zeros((1,) + pipe.latent_shape(resolution, resolution), np.float32)
        arrays = {"latent_mean": lat, "latent_logvar": lat, **tokens}
    else:
        arrays = {"image": np.zeros((1, resolution, resolution, 3), np.float32), **tokens}
    return {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype, sharding=mesh_lib.batch_sharding(mesh, v.ndim))
            for k, v in arrays.items()}


def analytic_flops(cfg, resolution: int, batch: int, params: Dict[str, int], frozen: tuple) -> Dict[str, float]:
    """Textbook FLOPs of one step for the global batch, the '6 N T' rule per component.

    A matmul parameter costs 2 FLOPs per token forward and 4 more backward; a frozen component
    runs forward only (2 N T; its input gradients are not needed as nothing before it trains).
    MMDiT: N_mmdit over T = image tokens (H/16 x W/16) + text tokens, plus attention scores
    4 T^2 d per block forward (QK^T and AV). Text encoders: the LLM over ``llm_max_length`` and
    ByT5 over ``byt5_max_length`` tokens. The VAE encoder runs only without cached latents and is
    left out (convolutions; small next to the DiT). N counts every parameter, so embedding tables
    (lookups, not matmuls; 0.5B of a 7B LLM) and the per-stream weights of double blocks (each sees
    only its own stream's tokens) make it an upper bound. Returns {'mmdit', 'attention', 'text', 'total'}.
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
    out["text"] = (llm + adapter + byt5) * batch
    out["total"] = sum(out.values())
    return out


def _memory(compiled) -> Dict[str, int]:
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


def plan_pretrain(cfg, *, resolution: int, batch: int, mesh_spec: Dict[str, int], devices=None) -> Plan:
    """Compile ``cfg``'s pretrain step for ``batch`` images of ``resolution`` px on ``mesh_spec``.

    ``cfg.model.{dtype, remat_policy, attention_impl}``, ``cfg.sharding.rules`` and
    ``cfg.pretrain.{frozen, optimizer, train.ema_decay}`` are used as the loop would.
    """
    stage = cfg.pretrain
    mesh = mesh_lib.make_mesh(mesh_spec, devices)
    if batch % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"global batch {batch} is not divisible by data x fsdp = "
                         f"{mesh.shape['data'] * mesh.shape['fsdp']} devices")
    rules = sharding_lib.resolve_rules(cfg.sharding.rules)
    vae_cfg = config_lib.build_model_configs(cfg.model)[2]
    pipe = pretrain.make_pipeline(cfg, stage, vae_cfg, _fake_tokenizer)
    init_params, loss_fn = pretrain.model_functions(pipe, stage, resolution, resolution)
    task = loop.Task(name="plan", init_params=init_params, loss_fn=loss_fn, data=None)
    tx = optimizer_lib.make_optimizer(stage.optimizer, int(stage.train.steps))
    ema_decay = float(stage.train.ema_decay)
    layout = loop.state_layout(task, tx, ema_decay > 0, jax.random.PRNGKey(0), mesh, rules)
    cached = "vae" in {p.strip("/") for p in stage.frozen}
    inputs = abstract_batch(pipe, cfg, resolution, batch, cached, mesh)
    step = loop.jit_train_step(task, tx, ema_decay, layout.shardings)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # as the loop traces its step
        compiled = step.lower(layout.abstract, inputs).compile()
    counts = component_parameter_counts(pipe.conditioner_cfg, pipe.mmdit_cfg, vae_cfg, resolution)
    size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
    counts = dict(counts, trainable=size(layout.abstract.params), frozen=size(layout.abstract.frozen))
    return Plan(mesh=dict(mesh.shape), devices=mesh.size, resolution=resolution, batch=batch,
                dtype=str(cfg.model.dtype), remat_policy=str(cfg.model.remat_policy),
                attention_impl=cfg.model.attention_impl, rules=str(cfg.sharding.rules),
                frozen=tuple(stage.frozen), params=counts, flops_per_device=_flops(compiled),
                flops_analytic=analytic_flops(cfg, resolution, batch, counts, tuple(stage.frozen)),
                memory=_memory(compiled), backend=jax.default_backend())
