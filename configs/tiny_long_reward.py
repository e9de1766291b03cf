"""The alignment reward on the base that draws: configs/tiny_long.py, then the alignment reward model
trained on world pairs and fine-tuned on the base's own images, calibrated across captions.

python -m seedream_jax.main --config configs/tiny_long_reward.py --workdir runs/tiny_long

configs/tiny_long.py's stages (a workdir where they ran resumes after them), then two stages of kind
``reward``:
  reward             9000 steps on world pairs (text pairs weighted up: kind_weights 1, 3, 1, 1, 2, 5
                     for colour, shape, count, position, relation, text), its text tower started from
                     the base's LLM (``reward.model.llm`` is the run's ``model.llm`` shape)
  reward_calibrated  1500 steps from it at lr 3e-4, the world pairs plus the base's own images: 1024
                     world captions x 4 samples of ``pretrain`` ranked by the graded objective check,
                     16 ranked pairs and 16 calibration rows per batch of 32 (``stages/reward.py``)
The second is the one to register (``rewards.load_alignment('runs/tiny_long/reward_calibrated')``).
Measured with the same settings given as command-line overrides (README, "Calibrated across
captions"): 2301 s and 1284 s on 2 CPU cores; Spearman with the
eval's per-image correctness 0.480 / 0.490 (eval seeds 0 / 1) after the first, 0.583 / 0.583 after
the second.
"""
import copy
import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_long  # noqa: E402


def get_config():
    c = tiny_long.get_config()
    r = c.reward
    r.model.llm = ConfigDict(c.model.llm.to_dict())
    r.init_from = ConfigDict({"alignment/text/llm": "pretrain:conditioner/text_encoder/llm"})
    r.train.steps = 9000
    r.pairs.kind_weights = (1, 3, 1, 1, 2, 5)
    calibrated = copy.deepcopy(r)
    calibrated.init_from = ConfigDict({"alignment": "reward:alignment"})
    calibrated.train.steps = 1500
    calibrated.optimizer.lr = 3e-4
    calibrated.ranked.generated.update(source="pretrain", captions=1024, heldout_captions=128, calibration_rows=16)
    c.reward_calibrated = calibrated
    c.stages = tuple(c.stages) + ("reward", "reward_calibrated")
    return c
