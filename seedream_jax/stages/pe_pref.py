"""Stage kind ``pe_pref``: SimPO on rewrites ranked by the rewards of the images drawn from them.

Seedream 2.0 (arXiv:2503.07703, prompt engineering) follows the rewriter's SFT with preference
optimisation: several rewrites of a prompt are drawn with the image model, the images scored by
reward models, and the rewriter is trained toward the rewrite whose image scored best. Here:

* Preference set, built once at stage start from the starting rewriter (the ``rewriter`` source of
  ``pe_pref.init_from``, EMA weights) and stored at ``pe_pref.output`` (JSON with a fingerprint of
  the models and settings; a resumed or repeated run with the same ones reuses it): for each of
  ``prompts.num_prompts`` world short prompts per language, K = ``num_rewrites`` rewrites sampled
  at ``temperature``/``top_p``; each drawn by the ``image_model`` stage's pipeline, the K images of
  one prompt from the same noise; scored by the weighted ``rewards`` of the reward API against the
  user's prompt (what was asked for). A rewrite that drops or changes the prompt's content
  (``eval/prompt_content.py``) ranks below every rewrite that keeps it. The best and the worst form a
  (chosen, rejected) pair; a prompt whose K rewrites tie gives none (counted).
* Loss: SimPO (``training/simpo.py``; Meng et al. 2024), length-normalised and reference-free, on
  the log-likelihoods of the rewrites' tokens and EOS (``sampling/rewriter.py``).
* ``finish``: the reward of the images of greedy rewrites of held-out prompts, before (the
  starting rewriter) and after (the trained one), with content preservation, in
  ``<stage_dir>/preference_report.md``.
"""
import hashlib
import json
import logging
import os

import numpy as np

from seedream_jax import rewards as rewards_api
from seedream_jax.checkpoint.init_from import parse_sources
from seedream_jax.checkpoint.source_records import stage_checksum
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.data import rewrite_pairs
from seedream_jax.data.batches import IndexedBatches
from seedream_jax.eval import prompt_content
from seedream_jax.models.causal_lm import Qwen2ForCausalLM
from seedream_jax.models.partition import merge_params
from seedream_jax.sampling import rewriter as rewriter_lib
from seedream_jax.sampling.rewriter import COMPONENT
from seedream_jax.stages import common, pe_sft
from seedream_jax.stages.sample import stage_pipeline
from seedream_jax.training import loop, simpo


def source_dir(stage_cfg, workdir: str) -> str:
    """The stage directory the rewriter starts from (``init_from['rewriter']``)."""
    sources = parse_sources(stage_cfg.init_from, workdir)
    if COMPONENT not in sources:
        raise ValueError(f"pe_pref.init_from must name the rewriter to start from ('{COMPONENT}'), got {dict(sources)}")
    return sources[COMPONENT][0]


class ImageReward:
    """Rewrites -> images of the image model -> the weighted rewards against the users' prompts."""

    def __init__(self, cfg, stage_cfg, workdir: str):
        s = stage_cfg
        self.stage = open_stage(common.resolve(workdir, str(s.image_model)))
        self.pipe = stage_pipeline(self.stage, attention_impl=cfg.model.attention_impl)
        self.params = self.stage.params("ema" if self.stage.has_ema() else "raw")
        if not s.rewards:
            raise ValueError("pe_pref.rewards is empty: name at least one reward, e.g. {'objective': 1.0}")
        for name, stage in s.reward_stages.items():
            if name in s.rewards and stage:
                rewards_api.load_stage(common.resolve(workdir, stage), name=name)
        self.weights = {name: float(w) for name, w in s.rewards.items()}
        for name in self.weights:
            rewards_api.get(name)  # unknown names fail here, naming the registered ones
        self.settings = {k: s[k] for k in ("num_steps", "guidance_scale", "size", "batch_size")}

    def __call__(self, prompts, rewrites, seed: int) -> np.ndarray:
        """float64 [N]: the weighted reward of the image drawn from rewrite i (noise: ``seed``, row i)."""
        size = int(self.settings["size"])
        images = common.generate_images(self.pipe, self.params, list(rewrites), height=size, width=size,
                                        batch_size=int(self.settings["batch_size"]), seed=seed,
                                        what="pe_pref: images of rewrites",
                                        num_steps=int(self.settings["num_steps"]),
                                        guidance_scale=float(self.settings["guidance_scale"]))
        return sum(w * np.asarray(rewards_api.score(name, images, list(prompts)), np.float64)
                   for name, w in self.weights.items())


def rank_keys(prompts, rewrites, languages, scores):
    """Sort keys (content kept, reward) of each rewrite: a rewrite that loses content ranks lowest."""
    return [(prompt_content.preserves(p, r, lang)[0], float(sc))
            for p, r, lang, sc in zip(prompts, rewrites, languages, scores)]


def _fingerprint(stage_cfg, workdir: str, reward: ImageReward, prompts) -> dict:
    s = stage_cfg
    src = source_dir(s, workdir)
    return {"rewriter": src, "rewriter_checksum": stage_checksum(src), "image_model": reward.stage.directory,
            "image_model_step": int(reward.stage.step), "image_model_checksum": stage_checksum(reward.stage.directory),
            "rewards": reward.weights, "reward_stages": dict(s.reward_stages),
            "prompts_sha256": hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest(),
            "settings": {k: s[k] for k in ("num_rewrites", "temperature", "top_p", "num_steps", "guidance_scale",
                                           "size", "max_new_tokens", "max_prompt_length")}}


def world_prompts(stage_cfg, split: str, count: int, seed: int):
    """(prompts, languages): ``count`` world short prompts per language of ``prompts.languages``."""
    prompts, langs = [], []
    for lang in stage_cfg.prompts.languages:
        got = rewrite_pairs.eval_prompts(seed, split, lang, count)
        prompts += got
        langs += [lang] * len(got)
    return prompts, langs


def preference_set(cfg, stage_cfg, workdir: str) -> dict:
    """{'prompt', 'chosen', 'rejected', 'language': [str] * P, 'chosen_score', 'rejected_score': [float] * P,
    'ties': int, 'candidates': int, 'kept_content': float, 'mean_reward': float} (module docstring)."""
    s = stage_cfg
    prompts, langs = world_prompts(s, "train", int(s.prompts.num_prompts), int(s.prompts.seed))
    reward = ImageReward(cfg, s, workdir)
    out = common.resolve(workdir, str(s.output))
    fingerprint = json.loads(json.dumps(_fingerprint(s, workdir, reward, prompts)))
    if os.path.exists(out):
        with open(out, encoding="utf-8") as f:
            stored = json.load(f)
        if stored.get("fingerprint") == fingerprint:
            logging.info("pe_pref: reusing the preference set of %s", out)
            return stored["set"]
    rewriter = common.open_rewriter(source_dir(s, workdir), max_prompt_length=int(s.max_prompt_length),
                                                max_new_tokens=int(s.max_new_tokens))
    k = int(s.num_rewrites)
    candidates = [rewriter(prompts, temperature=float(s.temperature), top_p=float(s.top_p), seed=j) for j in range(k)]
    keys = [rank_keys(prompts, c, langs, reward(prompts, c, seed=int(s.prompts.seed))) for c in candidates]
    result = {key: [] for key in ("prompt", "chosen", "rejected", "language", "chosen_score", "rejected_score")}
    ties = 0
    for i, prompt in enumerate(prompts):
        ranked = sorted(range(k), key=lambda j: keys[j][i])
        worst, best = ranked[0], ranked[-1]
        if keys[best][i] == keys[worst][i]:
            ties += 1
            continue
        for key, value in (("prompt", prompt), ("chosen", candidates[best][i]), ("rejected", candidates[worst][i]),
                           ("language", langs[i]), ("chosen_score", keys[best][i][1]),
                           ("rejected_score", keys[worst][i][1])):
            result[key].append(value)
    result.update(ties=ties, candidates=k * len(prompts),
                  kept_content=float(np.mean([key[i][0] for key in keys for i in range(len(prompts))])),
                  mean_reward=float(np.mean([key[i][1] for key in keys for i in range(len(prompts))])))
    if not result["prompt"]:
        raise ValueError(f"pe_pref: every one of {len(prompts)} prompts had {k} rewrites of equal rank (content "
                         f"kept and reward {sorted(reward.weights)}); no preference pair to train on")
    logging.info("pe_pref: %d pairs from %d prompts (%d ties), %d rewrites, content kept %.3f", len(result["prompt"]),
                 len(prompts), ties, result["candidates"], result["kept_content"])
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    common.write_json(out, {"fingerprint": fingerprint, "set": result})
    return result


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The SimPO Task over the preference set (module docstring)."""
    s = stage_cfg
    config = pe_sft.model_config(s)
    model = Qwen2ForCausalLM(config)
    tokenizer = pe_sft.rewriter_tokenizer(cfg, workdir, config)
    pairs = preference_set(cfg, s, workdir)
    length, beta, gamma = int(s.max_length), float(s.simpo.beta), float(s.simpo.gamma)

    def make_batch(idx, rng):
        prompts = [pairs["prompt"][i] for i in idx] * 2
        rewrites = [pairs["chosen"][i] for i in idx] + [pairs["rejected"][i] for i in idx]
        return pe_sft.batch_arrays(tokenizer, prompts, rewrites, length)

    def loss_fn(params, frozen, batch, rng):
        total, count = rewriter_lib.sequence_logprobs(model, merge_params(params, frozen)[COMPONENT], batch["ids"],
                                                      batch["mask"], batch["targets"])
        b = total.shape[0] // 2
        return simpo.simpo_loss(total[:b], count[:b], total[b:], count[b:], beta=beta, gamma=gamma)

    data = IndexedBatches(len(pairs["prompt"]), int(s.train.batch_size), int(s.prompts.seed), make_batch)
    return loop.Task(name="pe_pref", init_params=pe_sft.init_fn(model, s), loss_fn=loss_fn, data=data,
                     init_sources=parse_sources(s.init_from, workdir))


def reward_of_rewrites(rewriter, reward: ImageReward, prompts, langs, seed: int) -> dict:
    """Greedy rewrites of ``prompts``: {'reward': mean image reward, 'kept_content': share, 'rewrites'}."""
    rewrites = rewriter(prompts)
    keys = rank_keys(prompts, rewrites, langs, reward(prompts, rewrites, seed=seed))
    return {"reward": float(np.mean([r for _, r in keys])), "kept_content": float(np.mean([k for k, _ in keys])),
            "rewrites": rewrites}


def finish(cfg, stage_cfg, workdir: str, stage_dir: str, result) -> dict:
    """The image reward of greedy rewrites of held-out prompts before and after this stage."""
    s = stage_cfg
    reward = ImageReward(cfg, s, workdir)
    prompts, langs = world_prompts(s, "heldout", int(s.eval.num_prompts), int(s.prompts.seed) + 1)
    seed = int(s.prompts.seed) + 1
    before = reward_of_rewrites(common.open_rewriter(
        source_dir(s, workdir), max_prompt_length=int(s.max_prompt_length), max_new_tokens=int(s.max_new_tokens)),
        reward, prompts, langs, seed)
    after = reward_of_rewrites(pe_sft.trained_rewriter(cfg, s, workdir, result), reward, prompts, langs, seed)
    rows = [("raw prompts (no rewrite)", float(np.mean(reward(prompts, prompts, seed=seed))), 1.0)]
    rows += [(f"{name} rewriter", r["reward"], r["kept_content"]) for name, r in (("before: starting", before),
                                                                                   ("after: pe_pref", after))]
    names = " + ".join(f"{w:g} x {n}" for n, w in reward.weights.items())
    lines = [f"# Rewrites before and after pe_pref (step {result.step})", "",
             f"{len(prompts)} held-out world prompts ({', '.join(s.prompts.languages)}), one image each "
             f"({s.num_steps} steps, guidance {s.guidance_scale}, seed {seed}); reward = {names}", "",
             "| prompts | mean reward | content kept |", "|---|---|---|"]
    lines += [f"| {n} | {r:.4f} | {k:.3f} |" for n, r, k in rows]
    lines += ["", "## Examples", ""] + [f"- `{p}`\n  - before: `{b}`\n  - after: `{a}`" for p, b, a in
                                        list(zip(prompts, before["rewrites"], after["rewrites"]))[:6]]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(stage_dir, "preference_report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text, flush=True)
    return {"reward_raw": rows[0][1], "reward_before": before["reward"], "reward_after": after["reward"],
            "kept_content_before": before["kept_content"], "kept_content_after": after["kept_content"]}


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """As ``pe_sft``: the ``rewriter`` component, the tokenizer, generation limits, the source."""
    return pe_sft.describe(cfg, stage_cfg, workdir, stage_dir, finished)
