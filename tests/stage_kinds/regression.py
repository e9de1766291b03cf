"""A stage kind defined outside the package: the loop's toy regression as a training stage.

``configs`` name it by module path (``c.<name>.kind = 'stage_kinds.regression'`` with ``tests/`` on
the Python path); ``seedream_jax/main.py`` runs it without knowing it. The whole stage is
``build_task`` (plus ``describe`` so that its directory says what it holds).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for toy_task

from seedream_jax.checkpoint.stage_dir import StageDescription  # noqa: E402
from toy_task import toy_task  # noqa: E402


def build_task(cfg, stage_cfg, workdir):
    return toy_task(int(stage_cfg.train.seed))


def describe(cfg, stage_cfg, workdir, stage_dir, finished=None):
    return StageDescription(components={})
