"""The tiny default trained longer, with the layout curriculum, then sampled and evaluated: what it
learns on a CPU in about an hour.

python -m seedream_jax.main --config configs/tiny_long.py --workdir runs/tiny_long

The models, tokenizer, 800-step 2x VAE and scene mix of configs/tiny.py (a 2x VAE read in 4x4
patches, text ids at 0, sin-cos absolute positions for image tokens, adaLN-Zero, the warmed-up EMA,
a constant learning rate after warmup), on 20,000 scenes instead of 2,000, and 10,000 DiT steps
instead of 2,200: first configs/tiny_layout.py's layout curriculum (pretrain_layout: 3000 steps on
2,000 single-object scenes with long captions, ``data/layout``), then 7000 steps of the ordinary
mix from there (pretrain). The larger world costs the pretrain stage about 3 minutes at its start
(the frozen VAE encodes every scene once) and keeps 7000 steps at batch 16 to under 6 passes over
the data.

Measured end to end on a 2-core CPU (benchmarks/RESULTS.md (d8)): 36m30s (43m35s on an earlier
day, the same figures); colour 1.000 and position 1.000 in both languages on seen and held-out
specs, shape 0.333, count 0.375, relation 0.219, binding, groups and text 0. The same 10,000 steps on the ordinary mix alone ((d6)): colour
1.00, position 0.06, the rest within one seed's noise of these.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402  (configs/tiny.py, whatever the working directory)
import tiny_layout  # noqa: E402

LAYOUT_SCENES = 2000


def get_config():
    c = tiny.get_config()
    c.stages = ("data", "tokenizer", "vae", "pretrain", "sample", "eval")
    c.data.num_images = 20000
    c.pretrain.train.checkpoint_every = 1000
    c = tiny_layout.add_layout_curriculum(c, steps=tiny_layout.LAYOUT_STEPS, num_images=LAYOUT_SCENES)
    c.pretrain.train.steps = 10000 - tiny_layout.LAYOUT_STEPS
    return c
