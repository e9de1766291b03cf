"""AOT planner (tools/plan.py): the tiny pretrain and rlhf steps compiled on 8 virtual devices, nothing allocated."""
import argparse
import copy
import os
import sys

import numpy as np
import pytest

from seedream_jax import config_lib
from seedream_jax.models.param_count import component_parameter_counts
from seedream_jax.stages import plan as plan_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import plan as plan_cli  # noqa: E402  (tools/plan.py)

RESOLUTION, BATCH = 32, 8


@pytest.fixture(scope="module")
def tiny_plan():
    cfg = config_lib.base_config("tiny")
    # One layer of each stack keeps the compile short; the planner's arithmetic is the same.
    cfg.model.llm.num_hidden_layers = cfg.model.byt5.num_layers = 1
    cfg.model.mmdit.num_double_blocks = cfg.model.mmdit.num_single_blocks = 1
    cfg.pretrain.frozen = ("vae", "conditioner")  # frozen parts run forward only: a smaller program
    return cfg, plan_lib.plan_pretrain(cfg, resolution=RESOLUTION, batch=BATCH,
                                       mesh_spec={"data": 2, "fsdp": 4, "tensor": 1})


def test_parameters_match_param_count(tiny_plan):
    cfg, plan = tiny_plan
    want = component_parameter_counts(*config_lib.build_model_configs(cfg.model), resolution=RESOLUTION)
    assert {k: plan.params[k] for k in want} == want
    assert plan.params["trainable"] + plan.params["frozen"] == want["total"]
    assert plan.params["trainable"] == want["mmdit"]


def test_memory_brackets_the_sharded_train_state(tiny_plan):
    _, plan = tiny_plan
    assert plan.mesh == {"data": 2, "fsdp": 4, "tensor": 1} and plan.devices == 8
    # fp32 params + AdamW mu, nu + EMA for trainable, params alone for frozen; each device holds
    # between a 1/4 slice (every leaf split over fsdp=4) and all of it (every leaf replicated).
    state = 4 * (4 * plan.params["trainable"] + plan.params["frozen"])
    m = plan.memory
    assert state / 4 <= m["arguments"] <= state + 1e6, m
    assert m["aliased"] > 0.9 * (m["arguments"] - 1e6)  # the state is donated
    assert m["temp"] > 0 and m["total"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temp"] + m["generated_code"]


def test_flops_agree_with_the_analytic_estimate(tiny_plan):
    _, plan = tiny_plan
    assert plan.flops_per_device > 0
    ratio = plan.flops_per_device * plan.devices / plan.flops_analytic["total"]
    assert 0.5 < ratio < 2.0, ratio
    a = plan.flops_analytic
    assert a["total"] == pytest.approx(a["mmdit"] + a["attention"] + a["text"])
    image_tokens = (RESOLUTION // 16) ** 2
    text_tokens = 48 + 16  # tiny: llm_max_length + byt5_max_length
    assert a["mmdit"] == 6 * plan.params["mmdit"] * (image_tokens + text_tokens) * BATCH


def test_report_names_mesh_memory_and_verdicts(tiny_plan):
    _, plan = tiny_plan
    text = plan_cli.format_plan(plan)
    for needle in ("mesh: {'data': 2, 'fsdp': 4, 'tensor': 1} = 8 devices", "XLA cost_analysis", "analytic",
                   "temp", "TPU v5p     95 GB: fits", "H100", "H200", "estimate of the accelerator"):
        assert needle in text, (needle, text)
    mmdit_line = next(line for line in text.splitlines() if line.strip().startswith("mmdit"))
    assert mmdit_line.split()[-1] == plan_cli._count(plan.params["mmdit"])


def test_bad_arguments_fail_clearly(monkeypatch):
    for var in ("XLA_FLAGS", "JAX_PLATFORMS"):  # main() sets them; restore afterwards
        monkeypatch.setenv(var, os.environ.get(var, ""))
    assert plan_cli.parse_mesh("data=1,fsdp=64,tensor=1") == {"data": 1, "fsdp": 64, "tensor": 1}
    with pytest.raises(argparse.ArgumentTypeError, match="'fsdp' is not axis=size"):
        plan_cli.parse_mesh("data=1,fsdp")
    with pytest.raises(SystemExit, match="not divisible by data x fsdp = 8"):
        plan_cli.main(["--size", "tiny", "--devices", "8", "--resolution", "32", "--batch", "12"])
    with pytest.raises(ValueError, match="mesh config .* does not divide 8 devices"):
        plan_lib.plan_pretrain(config_lib.base_config("tiny"), resolution=RESOLUTION, batch=BATCH,
                               mesh_spec={"data": 3, "fsdp": -1})


def test_analytic_flops_count_frozen_parts_forward_only():
    cfg = config_lib.base_config("tiny")
    params = {"mmdit": 100, "llm": 10, "llm_adapter": 0, "byt5": 1}
    trained = plan_lib.analytic_flops(cfg, 64, 1, params, ("vae",))
    frozen = plan_lib.analytic_flops(cfg, 64, 1, params, ("vae", "conditioner/text_encoder/llm", "conditioner/byt5"))
    assert trained["text"] == 6 * (10 * 48 + 1 * 16)
    assert frozen["text"] == 2 * (10 * 48 + 1 * 16)
    assert np.isclose(trained["mmdit"], frozen["mmdit"])


# ---- one rlhf step (plan_rlhf): refl, DRaFT at K = 1 and 4, GRPO with its rollout and reference DiT

def _rlhf_cfg(method: str, k: int = 1):
    cfg = config_lib.base_config("tiny")
    cfg.model.llm.num_hidden_layers = cfg.model.byt5.num_layers = 1
    cfg.model.mmdit.num_double_blocks = cfg.model.mmdit.num_single_blocks = 1
    cfg.rlhf.method, cfg.rlhf.num_steps, cfg.rlhf.draft.k = method, 4, k
    cfg.rlhf.refl.window = (1, 2)
    cfg.rlhf.grpo.group_size = 2  # 2 updates (inner_steps) on 3 of the 4 steps, KL to the reference
    return cfg


@pytest.fixture(scope="module")
def rlhf_plans():
    """{name: (cfg, Plan)}: four compiles of about 20 s each."""
    out = {}
    for name, method, k in (("refl", "refl", 1), ("draft1", "draft", 1), ("draft4", "draft", 4), ("grpo", "grpo", 1)):
        cfg = _rlhf_cfg(method, k)
        out[name] = cfg, plan_lib.plan_rlhf(cfg, resolution=RESOLUTION, batch=BATCH,
                                            mesh_spec={"data": 2, "fsdp": 4, "tensor": 1})
    return out


def _loops_once(section):
    """``section`` with every loop of its step run once: what XLA's cost_analysis counts (a loop
    body once, whatever its trip count)."""
    s = copy.deepcopy(section)
    if s.method == "refl":  # one no-gradient step (the fori_loop's body), then the gradient step
        s.num_steps, s.refl.window = 2, (1, 1)
    elif s.method == "draft":  # the no-gradient scan's body (when there is one), one step with gradient
        s.num_steps, s.draft.k = 1 + (s.num_steps > s.draft.k), 1
    else:  # one rollout step, one update on one step
        s.num_steps, s.grpo.inner_steps, s.grpo.train_fraction = 1, 1, 1.0
    return s


@pytest.mark.parametrize("name", ["refl", "draft1", "draft4", "grpo"])
def test_rlhf_step_compiles_and_counts_every_sampler_step(rlhf_plans, name):
    cfg, plan = rlhf_plans[name]
    assert plan.rlhf["method"] == cfg.rlhf.method and plan.rlhf["reward"] == "pixel_mean"
    m = plan.memory
    assert plan.flops_per_device > 0 and m["temp"] > 0 and m["arguments"] > 0
    assert m["total"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temp"] + m["generated_code"]
    assert plan.params["trainable"] == plan.params["mmdit"]  # rlhf.frozen: vae, conditioner
    a = plan.flops_analytic
    assert a["total"] == pytest.approx(a["sampling"] + a["trained"] + a["reference"] + a["text"]) and a["trained"] > 0
    # XLA counts each loop body once: its count is the analytic one of the step with every loop run
    # once (the VAE decode and the reward, which the analytic count leaves out, are in XLA's)
    once = plan_lib.rlhf_analytic_flops(cfg, _loops_once(cfg.rlhf), RESOLUTION, BATCH, plan.params)["total"]
    ratio = plan.flops_per_device * plan.devices / once
    assert 0.6 < ratio < 1.2, ratio
    assert a["total"] > 1.1 * once  # every sampler step counted (refl: its mean 1.5 steps before the gradient)


def test_rlhf_grpo_holds_the_reference_dit_frozen(rlhf_plans):
    _, grpo = rlhf_plans["grpo"]
    _, draft = rlhf_plans["draft1"]
    p = grpo.params
    assert p["ref/mmdit"] == p["mmdit"] and "ref/mmdit" not in draft.params
    frozen = p["llm"] + p["llm_adapter"] + p["byt5"] + p["conditioner_layers"] + p["vae"]
    assert draft.params["frozen"] == frozen and p["frozen"] == frozen + p["ref/mmdit"]
    assert p["total"] == p["trainable"] + p["frozen"] == draft.params["total"] + p["ref/mmdit"]
    # the reference's fp32 copy is in the state, split over fsdp = 4: at least a quarter of it per device
    assert grpo.memory["arguments"] - draft.memory["arguments"] >= 4 * p["ref/mmdit"] / 4
    assert grpo.flops_analytic["reference"] > 0 and draft.flops_analytic["reference"] == 0
    text = plan_cli.format_plan(grpo)
    for needle in ("rlhf step, method grpo: rollout of 8 prompts x 2 = 16 SDE samples", "KL 0.004 to the frozen "
                   "reference DiT", "ref/mmdit", "pixel_mean", "each loop body counted once", "TPU v5p"):
        assert needle in text, (needle, text)


def test_rlhf_draft_memory_is_flat_in_k(rlhf_plans):
    """The window's steps are rematerialised: K = 4 keeps no more than K = 1 (without remat the tiny
    step's temp grows 3.3x from K = 1 to 4), while its gradient FLOPs grow 4x."""
    _, one = rlhf_plans["draft1"]
    _, four = rlhf_plans["draft4"]
    assert four.memory["total"] <= 1.1 * one.memory["total"], (one.memory, four.memory)
    assert four.flops_analytic["trained"] == pytest.approx(4 * one.flops_analytic["trained"])


def test_rlhf_bad_arguments_fail_clearly(monkeypatch):
    for var in ("XLA_FLAGS", "JAX_PLATFORMS"):  # main() sets them; restore afterwards
        monkeypatch.setenv(var, os.environ.get(var, ""))
    with pytest.raises(SystemExit, match="need --stage rlhf"):
        plan_cli.main(["--size", "tiny", "--devices", "8", "--draft-k", "4"])
    with pytest.raises(SystemExit, match="plan the pretrain step"):
        plan_cli.main(["--size", "tiny", "--devices", "8", "--stage", "rlhf", "--text-cache"])
    cfg = _rlhf_cfg("draft")
    cfg.rlhf.flow_weight = 0.1
    with pytest.raises(ValueError, match="without the flow regulariser"):
        plan_lib.plan_rlhf(cfg, resolution=RESOLUTION, batch=BATCH, mesh_spec={"data": 2, "fsdp": 4, "tensor": 1})
