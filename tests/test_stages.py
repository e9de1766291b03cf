"""The stage framework: kinds by name, self-describing stage directories, the one reader."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from seedream_jax import config_lib
from seedream_jax.checkpoint.source_records import STAGE_FILE
from seedream_jax.checkpoint.stage_dir import open_stage, select_weights
from seedream_jax.models import components
from seedream_jax.models.conditioner import ConditionerConfig
from seedream_jax.stages import builtin_kinds, load_kind, stage_kind

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CONFIG = '''
from seedream_jax import config_lib
from ml_collections import ConfigDict

def get_config():
    c = config_lib.base_config("tiny")
    c.stages = ("fit_a", "fit_b")
    for name, seed in (("fit_a", 0), ("fit_b", 1)):
        c[name] = ConfigDict(dict(kind="stage_kinds.regression", train=config_lib.train_section(
            steps=6, batch_size=32, seed=seed, checkpoint_every=3, log_every=3),
            optimizer=config_lib.optimizer_section(lr=3e-3, warmup_steps=1)))
    return c
'''


def test_a_kind_from_a_test_module_runs_twice_through_main_without_edits(tmp_path):
    cfg_path = tmp_path / "regression.py"
    cfg_path.write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, HERE]), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "seedream_jax.main", "--config", str(cfg_path),
                          "--workdir", str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [summary[n]["kind"] for n in ("fit_a", "fit_b")] == ["stage_kinds.regression"] * 2
    assert summary["fit_a"]["steps"] == summary["fit_b"]["steps"] == 6
    a, b = (open_stage(str(tmp_path / "run" / n)) for n in ("fit_a", "fit_b"))
    assert (a.meta["name"], a.kind, a.step) == ("fit_a", "stage_kinds.regression", 6)
    pa, pb = a.params("raw")["toy"]["fc1"]["kernel"], b.params("raw")["toy"]["fc1"]["kernel"]
    assert not np.array_equal(pa, pb)  # two runs of one kind, each with its own section (seed)


def test_unknown_kind_fails_naming_the_known_ones():
    cfg = ConfigDict(dict(stages=("x",), x=ConfigDict(dict(kind="distil"))))
    assert stage_kind(cfg, "x") == "distil"
    with pytest.raises(ValueError, match=r"unknown stage kind 'distil'; known kinds: \['aesthetic', 'ct', 'data', 'eval', 'glyph_align', 'pe_pref', 'pe_sft', "
                       r"'pretrain', 'refiner'"):
        load_kind("distil")
    assert {"data", "tokenizer", "vae", "pretrain", "rlhf", "ct", "sft", "pe_sft", "pe_pref", "refiner", "sample",
            "eval"} <= set(builtin_kinds())
    assert stage_kind(config_lib.base_config("tiny"), "pretrain") == "pretrain"


def test_component_configs_round_trip_through_json():
    conditioner, mmdit, vae = config_lib.build_model_configs(config_lib.base_config("tiny").model)
    for cls, cfg in ((None, conditioner), (None, mmdit), (None, vae)):
        back = components.config_from_dict(type(cfg), json.loads(json.dumps(components.config_to_dict(cfg))))
        assert back == cfg
    assert isinstance(back.block_out_channels, tuple)
    with pytest.raises(ValueError, match="unknown field"):
        components.config_from_dict(ConditionerConfig, {**components.config_to_dict(conditioner), "width": 3})


def test_select_weights_is_ema_else_raw_merged_with_frozen():
    raw, ema, frozen = {"a": {"w": 1}}, {"a": {"w": 2}}, {"b": {"w": 3}}
    assert select_weights({"params": raw, "ema_params": ema, "frozen": frozen}) == {"a": {"w": 2}, "b": {"w": 3}}
    assert select_weights({"params": raw, "ema_params": {}, "frozen": frozen}) == {"a": {"w": 1}, "b": {"w": 3}}
    assert select_weights({"params": raw, "ema_params": ema, "frozen": {}}, use_ema=False) == raw


def test_a_directory_without_stage_json_fails_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=STAGE_FILE):
        open_stage(str(tmp_path))
