"""Stage kind ``pe_sft``: supervised fine-tuning of the prompt rewriter on (prompt -> rewrite) pairs.

Seedream 2.0 (arXiv:2503.07703, prompt engineering) fine-tunes an LLM to rewrite user prompts
into the detailed prompts the image model was trained on, from pairs built in both directions:
detailed rewrites of user prompts, and user-style prompts written from detailed captions. Here the
pairs come from the stage's ``text`` data section (``pe_sft.data``, ``data/rewrite_pairs.py``): the
synthetic world gives them exactly in both languages, or a user's JSONL file of {"prompt",
"rewrite"} rows.

Model: ``models/causal_lm.Qwen2ForCausalLM`` (component ``rewriter``), from scratch or from
``init_from``. Sequences and the loss: ``sampling/rewriter.py`` (prompt, EOS, rewrite, EOS; mean
negative log-likelihood of the rewrite's tokens and its EOS). ``finish`` rewrites held-out world
prompts greedily with the compiled generation and reports content preservation
(``eval/prompt_content.py``: every object, attribute and quoted text kept) per language and split,
writing examples to ``<stage_dir>/rewrites.md``.
"""
import logging
import os

import jax.numpy as jnp
import numpy as np

from seedream_jax.checkpoint.init_from import parse_sources
from seedream_jax.checkpoint.stage_dir import StageDescription, tokenizer_record
from seedream_jax.data import rewrite_pairs
from seedream_jax.data import sources as data_sources
from seedream_jax.data.batches import MappedBatches
from seedream_jax.eval import prompt_content
from seedream_jax.models.causal_lm import CausalLMConfig, Qwen2ForCausalLM
from seedream_jax.models.partition import merge_params, split_params
from seedream_jax.models.text_encoder import Qwen2Config
from seedream_jax.sampling import rewriter as rewriter_lib
from seedream_jax.sampling.rewriter import COMPONENT
from seedream_jax.stages import common
from seedream_jax.training import loop


def model_config(stage_cfg) -> CausalLMConfig:
    """The rewriter's ``CausalLMConfig`` of ``<stage>.model``."""
    m = stage_cfg.model
    return CausalLMConfig(llm=Qwen2Config(**m.llm.to_dict(), dtype=str(m.dtype)),
                          tie_word_embeddings=bool(m.tie_word_embeddings))


def rewriter_tokenizer(cfg, workdir: str, config: CausalLMConfig):
    """The run's tokenizer, checked to fit the rewriter's vocabulary and to have an EOS id."""
    tok = common.open_tokenizer(cfg.tokenizer.format, common.resolve(workdir, cfg.tokenizer.path))
    if tok.vocab_size > config.llm.vocab_size:
        raise ValueError(f"tokenizer {cfg.tokenizer.path} has {tok.vocab_size} tokens but the rewriter's "
                         f"llm.vocab_size is {config.llm.vocab_size}")
    rewriter_lib.eos_of(tok)
    return tok


def init_fn(model: Qwen2ForCausalLM, stage_cfg):
    """rng -> (trainable, frozen) trees of the ``rewriter`` component."""
    def init_params(rng):
        ids = jnp.zeros((1, int(stage_cfg.max_length)), jnp.int32)
        params = model.init(rng, ids, jnp.ones_like(ids, bool))["params"]
        return split_params({COMPONENT: params}, list(stage_cfg.frozen))
    return init_params


def batch_arrays(tokenizer, prompts, rewrites, max_length: int) -> dict:
    """The loop's batch of pairs: ``ids``, ``mask``, ``targets`` (``rewriter.pair_tokens``)."""
    tokens = rewriter_lib.pair_tokens(tokenizer, prompts, rewrites, max_length)
    return {"ids": tokens.ids, "mask": tokens.mask, "targets": tokens.targets}


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The rewriter SFT Task: the pairs of ``pe_sft.data`` (a ``text`` source), next-token loss on
    the rewrites."""
    s = stage_cfg
    config = model_config(s)
    model = Qwen2ForCausalLM(config)
    tokenizer = rewriter_tokenizer(cfg, workdir, config)
    source = data_sources.open_source(common.stage_data_cfg(cfg, s), workdir, int(s.train.batch_size),
                                      yields="text")
    length = int(s.max_length)
    head = source.rows[:512]
    truncated = rewriter_lib.pair_tokens(tokenizer, [r["prompt"] for r in head], [r["rewrite"] for r in head],
                                         length).truncated
    if truncated:
        logging.warning("pe_sft: %d of the first %d pairs exceed max_length=%d tokens and are cut", truncated,
                        len(head), length)

    def loss_fn(params, frozen, batch, rng):
        return rewriter_lib.sft_loss(model, merge_params(params, frozen)[COMPONENT], batch["ids"], batch["mask"],
                                     batch["targets"])

    data = MappedBatches(source, lambda b: batch_arrays(tokenizer, b["prompt"], b["rewrite"], length))
    sources = parse_sources(s.init_from, workdir)
    return loop.Task(name="pe_sft", init_params=init_fn(model, s), loss_fn=loss_fn, data=data,
                     init_sources=sources or None)


def trained_rewriter(cfg, stage_cfg, workdir: str, result) -> rewriter_lib.Rewriter:
    """The ``Rewriter`` of a finished run's weights (EMA when kept)."""
    s = stage_cfg
    config = model_config(s)
    state = result.state
    params = merge_params(state.ema_params or state.params, state.frozen)[COMPONENT]
    return rewriter_lib.Rewriter(config, params, rewriter_tokenizer(cfg, workdir, config),
                                 max_prompt_length=int(s.max_prompt_length), max_new_tokens=int(s.max_new_tokens))


def preservation_report(rewriter: rewriter_lib.Rewriter, eval_cfg, seed: int, languages) -> dict:
    """Greedy rewrites of ``eval_cfg.num_prompts`` world prompts per (language, split) and the share
    that keep the prompt's content: {'rates': {lang: {split: rate}}, 'examples': [...], 'unfinished'}."""
    rates, examples = {}, []
    for lang in languages:
        for split in rewrite_pairs.SPLITS:
            prompts = rewrite_pairs.eval_prompts(seed, split, lang, int(eval_cfg.num_prompts))
            rewrites = []
            for start in range(0, len(prompts), int(eval_cfg.batch_size)):
                rewrites += rewriter(prompts[start:start + int(eval_cfg.batch_size)])
            kept = [prompt_content.preserves(p, r, lang) for p, r in zip(prompts, rewrites)]
            rates.setdefault(lang, {})[split] = float(np.mean([ok for ok, _ in kept]))
            examples += [{"language": lang, "split": split, "prompt": p, "rewrite": r, "preserved": ok,
                          "reasons": list(why)} for p, r, (ok, why) in list(zip(prompts, rewrites, kept))[:4]]
    return {"rates": rates, "examples": examples, "unfinished": rewriter.unfinished}


def report_markdown(title: str, report: dict) -> str:
    """The preservation table and the examples as markdown."""
    splits = rewrite_pairs.SPLITS
    lines = [f"# {title}", "", "| language | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {lang} | " + " | ".join(f"{row[s]:.3f}" for s in splits) + " |" for lang, row in report["rates"].items()]
    lines += ["", f"rewrites cut at max_new_tokens: {report['unfinished']}", "", "## Examples", ""]
    for e in report["examples"]:
        mark = "kept" if e["preserved"] else "NOT kept: " + "; ".join(r[:100] for r in e["reasons"][:2])
        lines += [f"- [{e['language']}/{e['split']}] `{e['prompt']}` -> `{e['rewrite'][:200]}` ({mark})"]
    return "\n".join(lines) + "\n"


def finish(cfg, stage_cfg, workdir: str, stage_dir: str, result) -> dict:
    """Content preservation of greedy rewrites of held-out world prompts (module docstring)."""
    s = stage_cfg
    data_cfg = common.stage_data_cfg(cfg, s)
    report = preservation_report(trained_rewriter(cfg, s, workdir, result), s.eval, int(data_cfg.seed) + 1,
                                 tuple(data_cfg.caption_languages))
    text = report_markdown(f"Rewriter content preservation, step {result.step}", report)
    with open(os.path.join(stage_dir, "rewrites.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text, flush=True)
    return {"preservation": report["rates"], "unfinished_rewrites": report["unfinished"]}


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """One component, ``rewriter``; the tokenizer; the generation limits."""
    s = stage_cfg
    return StageDescription(components={COMPONENT: (Qwen2ForCausalLM, model_config(s))},
                            tokenizer=tokenizer_record(cfg.tokenizer.format, common.resolve(workdir, cfg.tokenizer.path)),
                            settings={"max_prompt_length": int(s.max_prompt_length),
                                      "max_new_tokens": int(s.max_new_tokens)})
