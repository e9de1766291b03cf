"""The prompt-rewriter stages: pe_sft (SFT on rewrite pairs) and pe_pref (SimPO on image-ranked rewrites)."""
import json
import os

import numpy as np
import pytest
from ml_collections import ConfigDict

from conftest import micro_config, write_random_pretrain_stage
from seedream_jax import config_lib
from seedream_jax import rewards as rewards_api
from seedream_jax.sampling import rewriter as rewriter_lib
from seedream_jax.stages import common, runner

SIZE = 16
PAIRS = [{"prompt": "a large red circle", "rewrite": "On a white background: a large red circle at the top left."},
         {"prompt": "一个小的蓝色正方形", "rewrite": "黑色背景上，中间有一个小的蓝色正方形。"}]


def _config():
    c = micro_config(SIZE, num_images=32)
    for section in (c.pe_sft, c.pe_pref):
        section.model.llm = ConfigDict(config_lib._llm(vocab=512, hidden=32, inter=64, layers=2, heads=2, kv=1,
                                                       theta=1e4))
        section.update(dict(max_length=48, max_prompt_length=16, max_new_tokens=36))
    c.pe_sft.update(dict(data=config_lib.data_section(format="text", path="pairs.jsonl"),
                         eval=ConfigDict(dict(num_prompts=2, batch_size=4))))
    c.pe_sft.train.update(dict(steps=120, batch_size=8, log_every=40, checkpoint_every=120, ema_decay=0.0))
    c.pe_sft.optimizer.update(dict(lr=1e-2, warmup_steps=5, final_lr_fraction=1.0))
    c.pe_pref.update(dict(size=SIZE, num_steps=2, batch_size=4, num_rewrites=3, temperature=1.5, top_p=1.0,
                          prompts=ConfigDict(dict(seed=1, num_prompts=8, languages=("en", "zh"))),
                          rewards=ConfigDict(dict(test_brightness=1.0)),
                          eval=ConfigDict(dict(num_prompts=2, batch_size=4))))
    c.pe_pref.train.update(dict(steps=10, batch_size=8, log_every=5, checkpoint_every=10))
    c.pe_pref.optimizer.update(dict(lr=5e-3, warmup_steps=1))
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with the world, a tokenizer, a random 'pretrain' stage and a JSONL of two pairs
    (four times each, plus one bad row)."""
    from seedream_jax.stages import data as data_stage, tokenizer as tokenizer_stage
    wd = str(tmp_path_factory.mktemp("pe"))
    cfg = _config()
    data_stage.run(cfg, cfg.data, wd)
    tokenizer_stage.run(cfg, None, wd)
    write_random_pretrain_stage(cfg, wd, SIZE)
    with open(os.path.join(wd, "pairs.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(p, ensure_ascii=False) for p in PAIRS * 4) + '\n{"prompt": ""}\n')
    return wd


def test_pair_tokens_mark_exactly_the_rewrite_and_its_eos(workdir):
    cfg = _config()
    tok = common.open_tokenizer(cfg.tokenizer.format, os.path.join(workdir, cfg.tokenizer.path))
    prompts, rewrites = [p["prompt"] for p in PAIRS], [p["rewrite"] for p in PAIRS]
    t = rewriter_lib.pair_tokens(tok, prompts, rewrites, 48)
    for i, (p, r) in enumerate(zip(tok.encode(prompts), tok.encode(rewrites))):
        assert t.ids[i, :len(p)].tolist() == p and t.ids[i, len(p)] == tok.eos_id
        assert t.ids[i, 1:][t.targets[i]].tolist() == r + [tok.eos_id]
        assert t.mask[i].sum() == len(p) + len(r) + 2
    assert t.truncated == 0
    short = rewriter_lib.pair_tokens(tok, prompts, rewrites, 12)
    assert short.truncated == 2 and short.mask.all()
    ids, lengths, cut = rewriter_lib.prompt_tokens(tok, prompts, 16)
    assert cut == 0 and [ids[i, n - 1] for i, n in enumerate(lengths)] == [tok.eos_id] * 2


def test_pe_sft_learns_its_pairs_and_the_stage_serves_them(workdir):
    cfg = _config()
    out = runner.run_stage(cfg, "pe_sft", workdir)
    losses = out["final_metrics"]
    assert losses["nll_per_token"] < 0.05, losses
    stage_dir = os.path.join(workdir, "pe_sft")
    with open(os.path.join(stage_dir, "stage.json"), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["kind"] == "pe_sft" and meta["settings"] == {"max_prompt_length": 16, "max_new_tokens": 36}
    rewriter = common.open_rewriter(stage_dir)
    assert rewriter([p["prompt"] for p in PAIRS]) == [p["rewrite"] for p in PAIRS]
    assert rewriter.unfinished == 0
    assert set(out["preservation"]) == {"en", "zh"}
    assert os.path.exists(os.path.join(stage_dir, "rewrites.md"))


def test_pe_pref_builds_a_ranked_set_once_and_simpo_moves_the_margin(workdir):
    rewards_api.register("test_brightness", lambda images, prompts: np.asarray(images, np.float64).mean(axis=(1, 2, 3)),
                         differentiable=False, replace=True)
    if not os.path.exists(os.path.join(workdir, "pe_sft", "stage.json")):
        runner.run_stage(_config(), "pe_sft", workdir)
    cfg = _config()
    from seedream_jax.stages import pe_pref
    first = pe_pref.preference_set(cfg, cfg.pe_pref, workdir)
    assert first["candidates"] == 3 * 16 and len(first["prompt"]) + first["ties"] == 16
    path = os.path.join(workdir, cfg.pe_pref.output)
    stamp = os.path.getmtime(path)
    assert pe_pref.preference_set(cfg, cfg.pe_pref, workdir) == first and os.path.getmtime(path) == stamp
    out = runner.run_stage(cfg, "pe_pref", workdir)
    assert out["final_metrics"]["reward_margin"] > 0 and out["final_metrics"]["accuracy"] == 1.0
    assert {"reward_before", "reward_after", "reward_raw"} <= set(out)
    assert os.path.exists(os.path.join(workdir, "pe_pref", "preference_report.md"))


def test_sample_and_eval_draw_from_the_rewrites(workdir):
    if not os.path.exists(os.path.join(workdir, "pe_sft", "stage.json")):
        runner.run_stage(_config(), "pe_sft", workdir)
    cfg = _config()
    rewriter = common.open_rewriter(os.path.join(workdir, "pe_sft"))
    prompts = [p["prompt"] for p in PAIRS]
    cfg.sample_pe = ConfigDict(dict(cfg.sample.to_dict(), kind="sample", prompts=tuple(prompts), rewrite=True,
                                    rewriter="pe_sft", output="samples_pe", height=SIZE, width=SIZE, num_steps=2,
                                    batch_size=2))
    out = runner.run_stage(cfg, "sample_pe", workdir)
    lines = open(os.path.join(out["output_dir"], "prompts.txt"), encoding="utf-8").read().splitlines()
    assert [line.split("\t")[1:] for line in lines] == [[p, r] for p, r in zip(prompts, rewriter(prompts))]
    cfg.eval_pe = ConfigDict(dict(cfg.eval.to_dict(), kind="eval", rewrite=True, rewriter="pe_sft",
                                  prompt_caption="short", max_items_per_group=1, height=SIZE, width=SIZE,
                                  num_steps=2, batch_size=8))
    summary = runner.run_stage(cfg, "eval_pe", workdir)
    assert summary["evaluated"].endswith("_short_rewritten_by_pe_sft")
    rows = [json.loads(line) for line in open(os.path.join(summary["eval_dir"], "rewrites.jsonl"), encoding="utf-8")]
    assert [r["drawn"] for r in rows] == rewriter([r["prompt"] for r in rows])
    raw = json.load(open(os.path.join(summary["eval_dir"], "raw", "report.json"), encoding="utf-8"))
    assert all(img["prompt"] == next(i for i in raw["items"] if i["id"] == img["id"])["prompts"][img["language"]]
               for img in raw["images"])
    assert {"raw_category_accuracy", "follows_own_prompt", "rewrites_keeping_content"} <= set(summary)
    assert "| category | raw prompts | rewritten | change |" in open(summary["report"], encoding="utf-8").read()


def test_the_pe_configs_rank_rewrites_by_rewards_their_runs_have():
    """configs/tiny_pe.py ranks by the aesthetic stage it trains; configs/tiny_long_pe.py, on the base
    that draws, by the registered graded objective score, and trains no aesthetic stage."""
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    short = config_lib.load_run_config(os.path.join(configs, "tiny_pe.py"))
    assert dict(short.pe_pref.rewards) == {"aesthetic": 1.0} and "aesthetic" in short.stages
    assert short.stages.index("aesthetic") < short.stages.index("pe_pref")
    long = config_lib.load_run_config(os.path.join(configs, "tiny_long_pe.py"))
    base = config_lib.load_run_config(os.path.join(configs, "tiny_long.py"))
    assert long.stages == base.stages + ("pe_sft", "pe_pref", "sample_pe", "eval_pe")
    assert dict(long.pe_pref.rewards) == {"objective_graded": 1.0} and dict(long.pe_pref.reward_stages) == {}
    assert "objective_graded" in rewards_api.names() and long.pe_pref.image_model == "pretrain"
    assert long.pe_sft.data.rewrite_style_probability == 0.0 and long.eval_pe.prompt_caption == "short"
