"""AOT planner (tools/plan.py): the tiny pretrain step compiled on 8 virtual devices, nothing allocated."""
import argparse
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
