"""Does a glyph-aligned ByT5 help the DiT draw words? The tiny default on a world where every scene
carries a word, trained twice from scratch with the same budget: once with the conditioner's ByT5
at its random init (what configs/tiny.py does), once with it initialised from the glyph_align
stage (Glyph-ByT5), both trained with the DiT.

python -m seedream_jax.main --config configs/tiny_glyph.py --workdir runs/tiny_glyph

Stages: data, tokenizer and VAE as in configs/tiny.py (the ordinary world), data_text (2,000
scenes of one object and one rendered word, English or Chinese, in ``data/text``), glyph_align
(3000 steps, the section's default), then for each arm a DiT of ``TEXT_STEPS`` steps on data_text and the
objective eval: pretrain_random / eval_random and pretrain_aligned / eval_aligned (reports under
``eval/<stage>_step<N>/``; the text categories' Ra, Rh and exact per language are the comparison).
Everything but the ByT5's init (models, seeds, data order, optimiser) is the same in both arms.
``python benchmarks/attribute_gain.py --config configs/tiny_glyph.py --workdir <run> --checkpoint
pretrain_random --checkpoint pretrain_aligned --kind text`` reads how much each DiT uses the quoted
word before whole words are legible. Measured in benchmarks/RESULTS.md (d9).
"""
import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402  (configs/tiny.py, whatever the working directory)

from seedream_jax import config_lib  # noqa: E402

TEXT_STEPS = 3000
ARMS = {"random": {}, "aligned": {"conditioner/byt5": "glyph_align:glyph/byt5"}}


def get_config():
    c = tiny.get_config()
    text_world = config_lib.world_variant(c.data, "data/text", dict(object_count_weights=(1.0, 0.0, 0.0, 0.0),
                                                                   text_probability=1.0, group_probability=0.0))
    c.data_text = ConfigDict(dict(kind="data", data=text_world))
    c.stages = ("data", "tokenizer", "vae", "data_text", "glyph_align")
    for arm, byt5_init in ARMS.items():
        stage = ConfigDict(dict(c.pretrain.to_dict(), kind="pretrain", data=text_world))
        stage.train.steps = TEXT_STEPS
        stage.init_from = ConfigDict(dict(vae="vae", **byt5_init))
        c[f"pretrain_{arm}"] = stage
        c[f"eval_{arm}"] = ConfigDict(dict(c.eval.to_dict(), kind="eval", checkpoint=f"pretrain_{arm}"))
        c.stages += (f"pretrain_{arm}", f"eval_{arm}")
    return c
