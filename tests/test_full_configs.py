"""The full-size configs: every stage's global batch splits over the mesh's batch axes."""
import importlib
import os
import sys

import pytest
from ml_collections import ConfigDict

from seedream_jax import config_lib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))


def _train_batches(c):
    return {name: int(s.train.batch_size) for name, s in c.items()
            if isinstance(s, ConfigDict) and isinstance(s.get("train"), ConfigDict)}


@pytest.mark.parametrize("name, devices", [("full_v5p64", 32), ("full_h100x8", 8)])
def test_every_stage_batch_splits_over_the_full_configs_mesh(name, devices):
    c = importlib.import_module(name).get_config()
    assert c.mesh.data * c.mesh.fsdp == devices
    batches = _train_batches(c)
    assert {"pretrain", "rlhf", "ct", "sft", "refiner", "vae"} <= set(batches)
    assert {k: b for k, b in batches.items() if b % devices} == {}
    assert batches["pretrain"] == 4 * devices  # the planned 4 images per chip
    assert batches["rlhf"] == 32


def test_split_batches_over_rounds_up_and_keeps_multiples():
    c = config_lib.base_config("tiny")
    before = _train_batches(c)
    after = _train_batches(config_lib.split_batches_over(c, 32))
    assert before["rlhf"] == 8 and after["rlhf"] == 32
    assert before["reward"] == after["reward"] == 32
    assert all(b % 32 == 0 and 0 <= b - before[k] < 32 for k, b in after.items())
