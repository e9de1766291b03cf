"""The tiny default trained longer on a larger world, then sampled and evaluated: what it learns
on a CPU in about an hour.

python -m seedream_jax.main --config configs/tiny_long.py --workdir runs/tiny_long

The models, tokenizer, 800-step 2x VAE and scene mix of configs/tiny.py (a 2x VAE read in 4x4
patches, text ids at 0, sin-cos absolute positions for image tokens, adaLN-Zero, the warmed-up EMA,
a constant learning rate after warmup), on 20,000 scenes instead of 2,000 and with 10,000 DiT steps
instead of 2,200. The larger world costs the pretrain stage about 3 minutes at its start (the frozen
VAE encodes every scene once) and keeps 10,000 steps at batch 16 to 8 passes over the data.

Measured 2026-12-06 (benchmarks/RESULTS.md (d6), the same run evaluated at 3000, 6000 and 10,000
steps; constant learning rate + exact resume, so the resumed run is this config's run): see the
table there and the README's "What the tiny default reaches".
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402  (configs/tiny.py, whatever the working directory)


def get_config():
    c = tiny.get_config()
    c.stages = ("data", "tokenizer", "vae", "pretrain", "sample", "eval")
    c.data.num_images = 20000
    c.pretrain.train.steps = 10000
    c.pretrain.train.checkpoint_every = 1000
    return c
