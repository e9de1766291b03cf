"""The prompt rewriter (Seedream 2.0's PE model): a causal LM that turns a user prompt into a detailed one.

Sequences, in training and in generation, are the prompt's tokens, EOS, the rewrite's tokens, EOS
(the tokenizer's end-of-sequence id: encoding text never produces it, so the first EOS separates the
two parts and the second ends the rewrite). Losses and log-likelihoods count the rewrite's tokens and
its closing EOS only (``pair_tokens``'s ``targets``).

``Rewriter`` runs the compiled KV-cached generation (``sampling/text_generation.py``) on a batch of
prompts: greedy by default, or sampled (temperature, top-p) for the K candidates of the preference
stage. ``stages.common.open_rewriter`` opens a ``pe_sft`` or ``pe_pref`` stage directory from its
``stage.json`` alone.
"""
import dataclasses
import logging
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models.causal_lm import CausalLMConfig, Qwen2ForCausalLM, sequence_logprob, token_logprobs
from seedream_jax.sampling import text_generation

COMPONENT = "rewriter"


def eos_of(tokenizer) -> int:
    """The tokenizer's EOS id; a tokenizer without one cannot delimit rewrites."""
    if tokenizer.eos_id is None:
        raise ValueError("the prompt rewriter needs a tokenizer with an end-of-sequence id")
    return tokenizer.eos_id


@dataclasses.dataclass
class PairTokens:
    """Token arrays of (prompt, rewrite) pairs: ``ids`` int32 [B, L] (prompt, EOS, rewrite, EOS, then
    pad), ``mask`` bool [B, L] (real tokens), ``targets`` bool [B, L - 1] (True where the next token,
    ``ids[:, t + 1]``, is a rewrite token or the closing EOS), ``truncated``: pairs cut at ``L``."""
    ids: np.ndarray
    mask: np.ndarray
    targets: np.ndarray
    truncated: int


def pair_tokens(tokenizer, prompts: Sequence[str], rewrites: Sequence[str], max_length: int) -> PairTokens:
    """``PairTokens`` of len(prompts) pairs at length ``max_length`` (a longer pair loses its end)."""
    if len(prompts) != len(rewrites):
        raise ValueError(f"{len(prompts)} prompts but {len(rewrites)} rewrites")
    eos = eos_of(tokenizer)
    b = len(prompts)
    ids = np.full((b, max_length), tokenizer.pad_id, np.int32)
    mask = np.zeros((b, max_length), bool)
    targets = np.zeros((b, max_length - 1), bool)
    truncated = 0
    for i, (p, r) in enumerate(zip(tokenizer.encode(prompts), tokenizer.encode(rewrites))):
        seq = p + [eos] + r + [eos]
        truncated += len(seq) > max_length
        seq = seq[:max_length]
        ids[i, :len(seq)], mask[i, :len(seq)] = seq, True
        targets[i, len(p):len(seq) - 1] = True  # predicting ids[len(p) + 1:], the rewrite and its EOS
    return PairTokens(ids, mask, targets, truncated)


def prompt_tokens(tokenizer, prompts: Sequence[str], max_prompt_length: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Generation inputs: (ids int32 [B, max_prompt_length] = prompt, EOS, pad; lengths int32 [B];
    the number of prompts cut to fit, keeping their first tokens)."""
    eos = eos_of(tokenizer)
    ids = np.full((len(prompts), max_prompt_length), tokenizer.pad_id, np.int32)
    lengths = np.zeros(len(prompts), np.int32)
    cut = 0
    for i, p in enumerate(tokenizer.encode(prompts)):
        cut += len(p) + 1 > max_prompt_length
        seq = p[:max_prompt_length - 1] + [eos]
        ids[i, :len(seq)], lengths[i] = seq, len(seq)
    return ids, lengths, cut


def sequence_logprobs(model: Qwen2ForCausalLM, params, ids, mask, targets) -> Tuple[jax.Array, jax.Array]:
    """(sum of log p over the target tokens [B] float32, number of target tokens [B] float32)."""
    return sequence_logprob(token_logprobs(model.apply({"params": params}, ids, mask), ids), targets)


def sft_loss(model: Qwen2ForCausalLM, params, ids, mask, targets):
    """(mean negative log-likelihood per target token, metrics): the rewriter's SFT objective."""
    total, count = sequence_logprobs(model, params, ids, mask, targets)
    tokens = jnp.maximum(jnp.sum(count), 1.0)
    nll = -jnp.sum(total) / tokens
    return nll, {"nll_per_token": nll, "target_tokens": tokens}


class Rewriter:
    """User prompts -> rewritten prompts with a trained rewriter.

    ``config``/``params``: the causal LM (``params`` the ``rewriter`` component's tree); prompts are
    cut to ``max_prompt_length`` tokens (EOS included), rewrites to ``max_new_tokens``.
    """

    def __init__(self, config: CausalLMConfig, params, tokenizer, *, max_prompt_length: int = 64,
                 max_new_tokens: int = 96):
        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.max_prompt_length, self.max_new_tokens = int(max_prompt_length), int(max_new_tokens)
        self.eos = eos_of(tokenizer)
        self.unfinished = 0  # rewrites cut at max_new_tokens, over every call

    def token_batches(self, prompts: Sequence[str], *, temperature: float = 0.0, top_p: float = 1.0,
                      seed: int = 0) -> text_generation.GenerationOutput:
        """Generated tokens of every prompt (``GenerationOutput``: tokens [B, max_new_tokens], lengths [B])."""
        ids, lengths, cut = prompt_tokens(self.tokenizer, prompts, self.max_prompt_length)
        if cut:
            logging.warning("rewriter: %d of %d prompts exceed %d tokens and were cut", cut, len(prompts),
                            self.max_prompt_length)
        return text_generation.generate(self.config, self.params, jnp.asarray(ids), jnp.asarray(lengths),
                                        max_new_tokens=self.max_new_tokens, rng=jax.random.PRNGKey(seed),
                                        temperature=float(temperature), top_p=float(top_p),
                                        stop_ids=(self.eos,), pad_id=self.tokenizer.pad_id)

    def __call__(self, prompts: Sequence[str], *, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> List[str]:
        """One rewrite per prompt (greedy at temperature 0)."""
        if not len(prompts):
            return []
        out = self.token_batches(prompts, temperature=temperature, top_p=top_p, seed=seed)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        texts = []
        for row, n in zip(tokens, lengths):
            row = row[:n]
            finished = n > 0 and row[-1] == self.eos
            self.unfinished += not finished
            texts.append(self.tokenizer.decode(row[:-1] if finished else row).strip())
        return texts

