"""The tiny default with a layout curriculum: the DiT first learns where things go on a world of
single objects with long captions, then trains on the ordinary scene mix.

python -m seedream_jax.main --config configs/tiny_layout.py --workdir runs/tiny_layout

Why (benchmarks/RESULTS.md (d7)): trained on the ordinary mix (half the captions short, most scenes
with two or more objects) the tiny DiT had not started to read position words after 10,000 steps.
It sits on a plateau: it must find the position word among the context tokens and tie it to the
image tokens' absolute positions at once. On a world where every caption names the one object's
cell it leaves the plateau between 2000 and 3000 steps and then places objects in the prompted
cell in both languages.

Stages: data (the ordinary world), data_layout (2,000 single-object scenes, no rendered words,
long captions only, in ``data/layout``), tokenizer and VAE (trained on the ordinary world, as in
configs/tiny.py), pretrain_layout (3000 DiT steps on data_layout), pretrain (its DiT and conditioner
from pretrain_layout's last checkpoint, its VAE from the vae stage, through ``init_from``; 1000 more
steps on the ordinary mix), sample, eval. The models and every other setting are configs/tiny.py's.

Measured end to end on a 2-core CPU (benchmarks/RESULTS.md (d7)): 19m46s; position 1.000 in both
languages on seen and held-out specs, colour 0.875, shape 0.188, count 0.275, relation 0.031.
"""
import os
import sys
from typing import Optional

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402  (configs/tiny.py, whatever the working directory)

from seedream_jax import config_lib  # noqa: E402

LAYOUT_STEPS = 3000


def add_layout_curriculum(c: ConfigDict, steps: int = LAYOUT_STEPS, num_images: Optional[int] = None) -> ConfigDict:
    """``c`` with data_layout (``num_images`` single-object scenes; default: as many as ``c.data``)
    and pretrain_layout (``steps`` DiT steps on them) before its pretrain stage, which then starts
    from pretrain_layout's DiT and conditioner."""
    layout = config_lib.world_variant(c.data, "data/layout", dict(object_count_weights=(1.0, 0.0, 0.0, 0.0),
                                                                text_probability=0.0, group_probability=0.0),
                                      num_images=num_images or c.data.num_images, caption_type_probs=(0.0, 1.0))
    c.data_layout = ConfigDict(dict(kind="data", data=layout))
    c.pretrain_layout = ConfigDict(dict(c.pretrain.to_dict(), kind="pretrain", data=layout))
    c.pretrain_layout.train.steps = steps
    c.pretrain.init_from = ConfigDict(dict(vae="vae", mmdit="pretrain_layout", conditioner="pretrain_layout"))
    stages = list(c.stages)
    stages.insert(stages.index("data") + 1, "data_layout")
    stages.insert(stages.index("pretrain"), "pretrain_layout")
    c.stages = tuple(stages)
    return c


def get_config():
    c = add_layout_curriculum(tiny.get_config())
    c.pretrain.train.steps = 1000
    return c
