"""The planner's depth extrapolation and its pod table (tools/plan.py --depths, --table), on the tiny size.

The full size is planned by compiling the MMDiT at two depths and extrapolating memory and FLOPs
linearly to its 10 + 20 blocks; here the same arithmetic is checked against a real compile of a
deeper tiny model, and the table's verdicts against plans that do and do not fit.
"""
import dataclasses
import os
import sys

import jax
import pytest

from seedream_jax import config_lib
from seedream_jax.stages import plan as plan_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import plan as plan_cli  # noqa: E402  (tools/plan.py)

RESOLUTION, DEVICES = 32, 4


def _tiny_cfg(units: int):
    cfg = config_lib.base_config("tiny")
    cfg.model.llm.num_hidden_layers = cfg.model.byt5.num_layers = 1
    cfg.model.mmdit.num_double_blocks, cfg.model.mmdit.num_single_blocks = units, 2 * units  # 1 + 2 per unit
    cfg.model.remat_policy = "none"  # the planner's arithmetic is the same; a shorter compile
    cfg.pretrain.frozen = ("vae", "conditioner")
    return cfg


def _kwargs():
    return dict(resolution=RESOLUTION, batch=2 * DEVICES, mesh_spec={"data": 1, "fsdp": DEVICES, "tensor": 1},
                devices=jax.devices()[:DEVICES], text_cache=True)


def test_depth_units_and_linear_fit_arithmetic():
    assert plan_lib.depth_unit(10, 20) == (10, (1, 2))  # the full size: 10 units of 1 double + 2 single
    assert plan_lib.depth_unit(6, 6) == (6, (1, 1))
    cfg = plan_lib.with_depth(config_lib.base_config("full"), 2)
    assert (cfg.model.mmdit.num_double_blocks, cfg.model.mmdit.num_single_blocks) == (2, 4)
    assert config_lib.base_config("full").model.mmdit.num_double_blocks == 10  # a copy, not the preset
    # y = 3 + 5 k: measured at k = 2 and 4, predicted at 10
    fit = plan_lib.linear_fit({4: {"temp": 23.0}, 2: {"temp": 13.0}})
    assert fit["temp"] == pytest.approx((3.0, 5.0))
    assert plan_lib.extrapolate(fit, 10)["temp"] == pytest.approx(53.0)
    with pytest.raises(ValueError, match="two depths"):
        plan_lib.linear_fit({1: {"temp": 1.0}})


@pytest.fixture(scope="module")
def deep_and_extrapolated():
    """A 3-unit tiny model planned from compiles at 1 and 2 units, checked against a compile at 3
    (the full depth itself here, so the check is the extrapolation's error)."""
    cfg = _tiny_cfg(3)
    return plan_lib.plan_extrapolated(cfg, fit_depths=(1, 2), check_depth=3, **_kwargs())


def test_extrapolation_matches_a_real_compile_of_the_deeper_model(deep_and_extrapolated):
    extrapolated = deep_and_extrapolated
    e = extrapolated.extrapolation
    assert e["units"] == 3 and e["unit"] == (1, 2) and e["fit_depths"] == (1, 2) and e["check_depth"] == 3
    measured = e["measured"][3]  # the real compile of the 3 + 6 block model
    assert extrapolated.blocks == (3, 6)
    want = config_lib.build_model_configs(_tiny_cfg(3).model)
    from seedream_jax.models.param_count import component_parameter_counts
    counts = component_parameter_counts(*want, resolution=RESOLUTION)
    assert extrapolated.params["mmdit"] == counts["mmdit"]  # the full depth's, not the shallow compile's
    assert extrapolated.params["trainable"] == counts["mmdit"]
    assert extrapolated.params["trainable"] + extrapolated.params["frozen"] == counts["total"]
    assert extrapolated.flops_per_device == pytest.approx(measured["flops_per_device"], rel=0.02)
    for key in ("arguments", "outputs", "aliased"):  # the sharded state: exactly linear in depth
        assert extrapolated.memory[key] == pytest.approx(measured[key], rel=1e-3), key
    assert abs(e["check"]["total"]) < 0.15 and abs(e["check"]["flops_per_device"]) < 0.02, e["check"]
    # the fit goes through both compiled depths
    for k in (1, 2):
        assert plan_lib.extrapolate(e["fit"], k)["temp"] == pytest.approx(e["measured"][k]["temp"])
    text = plan_cli.format_plan(extrapolated)
    assert "extrapolated linearly to 3 units = 3+6 blocks" in text and "text from the text cache" in text


def test_text_cache_needs_a_frozen_conditioner():
    cfg = _tiny_cfg(1)
    cfg.pretrain.frozen = ("vae",)
    with pytest.raises(ValueError, match="frozen conditioner"):
        plan_lib.plan_pretrain(cfg, **_kwargs())


def test_table_verdicts_fit_and_do_not_fit(deep_and_extrapolated):
    plan = deep_and_extrapolated
    assert plan.text_cache and plan.flops_analytic["text"] == 0  # the conditioner does not run
    small = dataclasses.replace(plan, memory=dict(plan.memory, total=10e9))    # 10 GB: fits an 80 GB H100
    tight = dataclasses.replace(plan, memory=dict(plan.memory, total=75e9))    # 6% headroom: tight
    huge = dataclasses.replace(plan, memory=dict(plan.memory, total=150e9))    # over 80 GB: does not fit
    targets = (("tiny pod", "H100", DEVICES),)
    rows = {name: plan_cli.table_rows({(RESOLUTION, DEVICES): p}, 0.4, targets)[0]
            for name, p in (("small", small), ("tight", tight), ("huge", huge))}
    assert rows["small"]["verdict"] == "fits" and rows["small"]["headroom"] == pytest.approx(1 - 10 / 80)
    assert rows["tight"]["verdict"] == "tight"
    assert rows["huge"]["verdict"] == "does NOT fit" and rows["huge"]["headroom"] < 0
    # step time = XLA FLOPs per chip / (MFU x the chip's peak bf16 FLOP/s), FLOPs per step = per chip x chips
    r = rows["small"]
    assert r["seconds"] == pytest.approx(plan.flops_per_device / (0.4 * 989e12))
    assert r["flops"] == pytest.approx(plan.flops_per_device * DEVICES)
    assert r["batch"] == plan.batch and r["per_device_batch"] == plan.batch // DEVICES
    table = plan_cli.format_table([rows["small"], rows["huge"]], 0.4).splitlines()
    assert table[2].endswith("fits") and table[3].endswith("does NOT fit")
