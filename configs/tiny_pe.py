"""The tiny default with prompt engineering: the rewriter trained by SFT, then by SimPO on image rewards.

python -m seedream_jax.main --config configs/tiny_pe.py --workdir runs/pe

configs/tiny.py's stages (data, tokenizer, vae, pretrain, sample, eval), then:
  aesthetic  the aesthetic/structure reward (stages/aesthetic.py), pe_pref's reward
  pe_sft     the rewriter (a 4-layer causal LM on the run's tokenizer) on 50,000 world pairs, user
             prompt -> detailed prompt, both directions, en and zh (data/rewrite_pairs.py); every
             rewrite is a long layout caption (``rewrite_style_probability`` 0: the image model's
             world has no style captions); content preservation of held-out rewrites in
             pe_sft/rewrites.md
  pe_pref    4 sampled rewrites of 128 world prompts per language, each drawn by the pretrain
             model and scored by the aesthetic reward (a rewrite that loses content ranks last);
             SimPO on best/worst; the reward of rewrites before/after in pe_pref/preference_report.md
  sample_pe  the sample grid with prompts rewritten by pe_pref (grid captions show the rewrite)
  eval_pe    the objective eval on the suite's short prompts, raw and rewritten side by side
The reward is the aesthetic model, not the objective check: on this base the objective check is
0 for almost every image, so every rewrite of a prompt would tie.
"""
import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402

PE_STAGES = ("aesthetic", "pe_sft", "pe_pref", "sample_pe", "eval_pe")


def add_pe(c: ConfigDict) -> ConfigDict:
    """``c`` with the rewriter's stages, its sample grid and its eval."""
    c.pe_sft.data.rewrite_style_probability = 0.0  # layouts: count 0.383 -> 0.942 on tiny_long (RESULTS (i))
    c.pe_pref.rewards = ConfigDict(dict(aesthetic=1.0))
    c.pe_pref.reward_stages = ConfigDict(dict(aesthetic="aesthetic"))
    c.sample_pe = ConfigDict(dict(c.sample.to_dict(), kind="sample", rewrite=True, rewriter="pe_pref",
                                  output="samples_pe"))
    c.eval_pe = ConfigDict(dict(c.eval.to_dict(), kind="eval", rewrite=True, rewriter="pe_pref",
                                prompt_caption="short"))
    c.stages = tuple(c.stages) + PE_STAGES
    return c


def get_config():
    return add_pe(tiny.get_config())
