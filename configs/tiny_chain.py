"""The chain: every stage there is, in order, each training stage starting from the previous
one's checkpoint through ``init_from``, with the objective eval after each training stage.

python -m seedream_jax.main --config configs/tiny_chain.py --workdir runs/chain

data -> tokenizer -> vae -> eval_vae (the VAE round trip of the suite's ground truth: the ceiling
of every later stage) -> pretrain (its VAE from the vae stage) -> sample -> eval_pretrain.
The models and step counts are configs/tiny.py's. ``summary.json`` gains ``eval_table`` (one row
per eval stage: category accuracies, en / zh, seen / held-out, exact text), printed as a Markdown
table at the end: the closed-world version of the Seedream report's stage-by-stage figure.
SIGTERM in any stage, then the same command, resumes in that stage and goes on. A post-training
stage joins as ``<name>`` (its ``init_from`` naming the stage before it, e.g.
``{'mmdit': 'pretrain'}``) followed by ``eval_<name>``.
"""
import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402  (configs/tiny.py, whatever the working directory)

TRAINING_STAGES = ("vae", "pretrain")


def add_chain(c: ConfigDict) -> ConfigDict:
    """``c`` with the chain's stages: after each training stage an ``eval_<stage>`` section (the
    ``eval`` section's settings, ``kind='eval'``, ``checkpoint=<stage>``), after pretrain the sample grid."""
    c.stages = ("data", "tokenizer", "vae", "eval_vae", "pretrain", "sample", "eval_pretrain")
    c.pretrain.init_from = ConfigDict(dict(vae="vae"))
    for stage in TRAINING_STAGES:
        c[f"eval_{stage}"] = ConfigDict(dict(c.eval.to_dict(), kind="eval", checkpoint=stage))
    return c


def get_config():
    return add_chain(tiny.get_config())
