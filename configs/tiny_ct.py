"""The tiny chain with continued training (aesthetic adapter) and SFT with generated negatives.

python -m seedream_jax.main --config configs/tiny_ct.py --workdir runs/chain

configs/tiny_chain.py's stages (data, tokenizer, vae, eval_vae, pretrain, sample, eval_pretrain),
then: data_styled (the world as PNG records with a style in half of them, data/styled), ct (300
steps from pretrain with the style adapter; tags from each record's style), sample_ct (the grid with
``palette=pastel, lighting=warm``), eval_ct (the objective eval without tags), sft (100 steps from ct
on 256 styled records plus the ct model's own images for the same prompts, a quarter of each batch,
under the tag source=generated), sample_sft (tags and negative-tag guidance 1.0), eval_sft. A
workdir where the chain already ran resumes after its last finished stage.
"""
import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_chain  # noqa: E402

from seedream_jax import config_lib  # noqa: E402

GRID_TAGS = {"palette": "pastel", "lighting": "warm"}


def add_ct(c: ConfigDict) -> ConfigDict:
    """``c`` (a chain config) with the styled world, ct, sft, their samples and evals."""
    c.data_styled = ConfigDict(dict(kind="data", style_probability=0.5,
                                    data=config_lib.data_section(**dict(c.data.to_dict(), format="arrayrecord",
                                                                        path="data/styled"))))
    styled = config_lib.data_section(**dict(c.data.to_dict(), format="arrayrecord", path="data/styled",
                                            bucket_max_ratio=1.0, random_crop=False))
    c.ct.data = styled
    c.ct.time_mean = c.pretrain.time_mean
    c.ct.eval_prompts = tuple(c.pretrain.eval_prompts)[:4]
    c.ct.eval_style_tags = GRID_TAGS
    c.sft.data = styled
    c.sft.time_mean = c.pretrain.time_mean
    c.sft.eval_prompts = c.ct.eval_prompts
    c.sft.eval_style_tags = GRID_TAGS
    for stage, tags, negative in (("ct", GRID_TAGS, 0.0), ("sft", GRID_TAGS, 1.0)):
        c[f"sample_{stage}"] = ConfigDict(dict(c.sample.to_dict(), kind="sample", checkpoint=stage,
                                               output=f"samples_{stage}", style_tags=tags, negative_scale=negative))
        c[f"eval_{stage}"] = ConfigDict(dict(c.eval.to_dict(), kind="eval", checkpoint=stage))
    c.stages = tuple(c.stages) + ("data_styled", "ct", "sample_ct", "eval_ct", "sft", "sample_sft", "eval_sft")
    return c


def get_config():
    return add_ct(tiny_chain.get_config())
