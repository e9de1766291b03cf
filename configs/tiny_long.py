"""The tiny architecture trained longer, then evaluated: what it can learn on a CPU.

python -m seedream_jax.main --config configs/tiny_long.py --workdir runs/tiny_long

Same models as configs/tiny.py (a 2x VAE read in 4x4 patches, text ids at 0, adaLN-Zero, the
warmed-up EMA), trained on 8000 scenes instead of 2000 with a VAE trained 2.5x longer and
5500 DiT steps instead of 900, then the ``eval`` stage.

The VAE matters first: every image the DiT makes is decoded by it, so the eval of the VAE stage
(a round trip of the suite's ground truth, ``--config.eval.checkpoint=vae``) is the ceiling of
everything after it (benchmarks/RESULTS.md section (d) gives it for the 800-step VAE).

Budget: at the DiT rate measured for configs/tiny.py in this round (1.5-1.7 steps/s at batch 16
on 2 busy cores) the 5500 DiT steps alone take about 55-60 minutes; this config has not been
run end to end with this round's models, so no eval figures are claimed for it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402  (configs/tiny.py, whatever the working directory)


def get_config():
    c = tiny.get_config()
    c.stages = ("data", "tokenizer", "vae", "pretrain", "sample", "eval")
    c.data.num_images = 8000
    c.vae.train.steps = 2000
    c.vae.optimizer.warmup_steps = 100
    c.pretrain.train.steps = 5500
    c.pretrain.train.checkpoint_every = 1000
    c.pretrain.optimizer.warmup_steps = 200
    return c
