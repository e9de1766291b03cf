"""The tiny architecture trained longer, then evaluated: what it can learn on a CPU.

python -m seedream_jax.main --config configs/tiny_long.py --workdir runs/tiny_long

Same models as configs/tiny.py, trained on 8000 scenes instead of 2000 (about 11 epochs instead
of 7) with a VAE trained 2.5x longer and 5500 DiT steps instead of 900, then the ``eval`` stage.

The VAE matters first: every image the DiT makes is decoded by it, so the eval of the VAE stage
(a round trip of the suite's ground truth) is the ceiling of everything after it. A 400-step VAE
shifts colours (red to orange, purple to grey): its round trip scores 0.46 on colour; 800 steps
(the tiny default) reach 1.0 on colour, count, position and relation; 1600 steps also
read about a quarter of the words back (shape stays near 0.7: small stars and triangles blur
into blobs at 64 px).

Budget on an otherwise idle 2-core CPU, from the tiny run's measured rates (VAE 4.9 steps/s,
DiT 2.6 steps/s at batch 16, an eval pass about 2-3 minutes): data ~0.5 min, VAE ~7 min, DiT
~37 min, sample + eval ~3 min: about 48 minutes.
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
