"""Autoregressive generation from ``models.causal_lm.Qwen2ForCausalLM``: compiled with a KV cache,
and an uncached reference.

``generate`` is one XLA program per (shapes, static arguments), cached by ``jax.jit``: the prompt
runs once (prefill) into a KV cache of P + max_new_tokens slots per layer ([B, T, kv_heads,
head_dim]), then a ``lax.while_loop`` feeds one token per step until every row has stopped or
``max_new_tokens`` are out. Prompts are right-padded [B, P] with their lengths; row b's prompt fills
slots 0..n_b-1 and its step-s token slot P+s, at RoPE position n_b+s, and its key mask hides its
padding slots, so a row's tokens do not depend on the other rows' lengths (greedy: exactly the
tokens of the row generated alone). Parameters sharded by the logical rules (as the text encoder's)
are used where they lie: call it under the rules and mesh they were placed with.

``generate_uncached`` recomputes the full forward of the right-padded sequence every step (a plain
Python loop): the specification the cached program is tested against. Both choose tokens with
the same ``next_tokens`` and per-step keys ``fold_in(rng, step)``, so they agree token for token
when sampling too (up to floating-point near-ties).
"""
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.data.tokenizer import EOS_ID, PAD_ID
from seedream_jax.models.causal_lm import CausalLMConfig, Qwen2ForCausalLM
from seedream_jax.models.text_encoder import init_kv_cache


class GenerationOutput(NamedTuple):
    """tokens [B, max_new_tokens] int32 (a row's stop token included, ``pad_id`` after it);
    lengths [B] int32: new tokens per row, its stop token included."""
    tokens: jax.Array
    lengths: jax.Array


class _State(NamedTuple):
    """Tokens chosen so far [B, N], lengths [B], rows that stopped [B]."""
    tokens: jax.Array
    lengths: jax.Array
    done: jax.Array


def top_p_filter(logits: jax.Array, top_p) -> jax.Array:
    """Nucleus filter on logits [..., V]: keeps the most probable tokens whose probabilities reach
    ``top_p`` (the smallest such set, tokens tied with its last one included; the most probable
    token always), the others set to -inf."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep = jnp.cumsum(probs, axis=-1) - probs < top_p  # the mass before a token is below top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def next_tokens(logits: jax.Array, key, temperature, top_p, *, greedy: bool, nucleus: bool) -> jax.Array:
    """logits [B, V] float32 -> token ids [B] int32: argmax when ``greedy``, else a sample of
    softmax(logits / temperature), restricted to the top-p nucleus when ``nucleus``."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if nucleus:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _advance(state: _State, step, logits, rng, temperature, top_p, *, greedy: bool, nucleus: bool,
             stop_ids: Sequence[int], pad_id: int) -> _State:
    """Choose step ``step``'s tokens from logits [B, V]: ``pad_id`` for rows already stopped; a
    row stops on a token of ``stop_ids`` (kept in the output and counted in its length)."""
    new = next_tokens(logits, jax.random.fold_in(rng, step), temperature, top_p, greedy=greedy, nucleus=nucleus)
    new = jnp.where(state.done, pad_id, new)
    stopped = state.done
    for s in stop_ids:
        stopped = stopped | (new == s)
    return _State(state.tokens.at[:, step].set(new), state.lengths + (~state.done).astype(jnp.int32), stopped)


def _initial_state(batch: int, max_new_tokens: int, pad_id: int) -> _State:
    return _State(jnp.full((batch, max_new_tokens), pad_id, jnp.int32), jnp.zeros((batch,), jnp.int32),
                  jnp.zeros((batch,), bool))


def _check(config: CausalLMConfig, prompt_ids, prompt_lengths, max_new_tokens: int, temperature: float,
           top_p: float, stop_ids, pad_id: int):
    """Validated host copies: (prompt_ids [B, P] int32, prompt_lengths [B] int32, stop_ids tuple)."""
    ids, lengths = np.asarray(prompt_ids), np.asarray(prompt_lengths)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must be integer [B, P], got {ids.dtype} {ids.shape}")
    if lengths.shape != ids.shape[:1]:
        raise ValueError(f"prompt_lengths has shape {lengths.shape}, expected ({ids.shape[0]},)")
    if lengths.size and (lengths.min() < 1 or lengths.max() > ids.shape[1]):
        raise ValueError(f"prompt_lengths {lengths.tolist()} must lie in [1, {ids.shape[1]}] (the prompt width)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    stop_ids = tuple(int(s) for s in stop_ids)
    vocab = config.llm.vocab_size
    bad = [t for t in stop_ids + (int(pad_id),) if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"stop / pad ids {bad} outside the vocabulary [0, {vocab})")
    return ids.astype(np.int32), lengths.astype(np.int32), stop_ids


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "greedy", "nucleus", "stop_ids", "pad_id"))
def _generate_cached(params, prompt_ids, prompt_lengths, rng, temperature, top_p, *, config: CausalLMConfig,
                     max_new_tokens: int, greedy: bool, nucleus: bool, stop_ids: tuple, pad_id: int) -> _State:
    model = Qwen2ForCausalLM(config)
    variables = {"params": params}
    batch, width = prompt_ids.shape
    rows = jnp.arange(batch)
    advance = functools.partial(_advance, rng=rng, temperature=temperature, top_p=top_p, greedy=greedy,
                                nucleus=nucleus, stop_ids=stop_ids, pad_id=pad_id)
    key_mask = jnp.zeros((batch, width + max_new_tokens), bool).at[:, :width].set(
        jnp.arange(width)[None, :] < prompt_lengths[:, None])
    cache = init_kv_cache(config.llm, batch, width + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width))
    hidden, cache = model.apply(variables, prompt_ids, key_mask, positions, cache, 0, method=Qwen2ForCausalLM.decode)
    logits = model.apply(variables, hidden[rows, prompt_lengths - 1], method=Qwen2ForCausalLM.logits)
    state = advance(_initial_state(batch, max_new_tokens, pad_id), 0, logits)

    def cond(carry):
        step, _, _, state = carry
        return (step < max_new_tokens) & ~jnp.all(state.done)

    def body(carry):  # feed step-1's tokens (slot width+step-1, position n+step-1), choose step's
        step, key_mask, cache, state = carry
        slot = width + step - 1
        key_mask = key_mask.at[:, slot].set(True)
        hidden, cache = model.apply(variables, state.tokens[:, step - 1, None], key_mask,
                                    (prompt_lengths + step - 1)[:, None], cache, slot, method=Qwen2ForCausalLM.decode)
        logits = model.apply(variables, hidden[:, 0], method=Qwen2ForCausalLM.logits)
        return step + 1, key_mask, cache, advance(state, step, logits)

    _, _, _, state = jax.lax.while_loop(cond, body, (jnp.int32(1), key_mask, cache, state))
    return state


def generate(config: CausalLMConfig, params, prompt_ids, prompt_lengths, *, max_new_tokens: int, rng,
             temperature: float = 0.0, top_p: float = 1.0, stop_ids: Sequence[int] = (EOS_ID,),
             pad_id: int = PAD_ID) -> GenerationOutput:
    """Continue each prompt by up to ``max_new_tokens`` tokens with the KV-cached compiled program.

    config, params: the ``Qwen2ForCausalLM`` and its (unboxed) parameters. prompt_ids [B, P] int32,
    right-padded; prompt_lengths [B] int32 in [1, P]. rng: a PRNG key (used when sampling; step s
    draws with ``fold_in(rng, s)``). temperature: 0 = greedy, else the softmax temperature. top_p:
    nucleus mass (1 = no filter). stop_ids: a row stops after emitting one of them. Recompiles only
    for new shapes or static arguments (config, max_new_tokens, greedy or not, top_p < 1 or not,
    stop_ids, pad_id).
    """
    ids, lengths, stop_ids = _check(config, prompt_ids, prompt_lengths, max_new_tokens, temperature, top_p,
                                    stop_ids, pad_id)
    state = _generate_cached(params, ids, lengths, rng, jnp.float32(temperature), jnp.float32(top_p), config=config,
                             max_new_tokens=int(max_new_tokens), greedy=temperature == 0, nucleus=top_p < 1,
                             stop_ids=stop_ids, pad_id=int(pad_id))
    return GenerationOutput(state.tokens, state.lengths)


@functools.lru_cache(maxsize=None)
def _forward(config: CausalLMConfig):
    """jit of the full forward: (params, ids [B, L], mask [B, L]) -> logits [B, L, V]."""
    model = Qwen2ForCausalLM(config)
    return jax.jit(lambda params, ids, mask: model.apply({"params": params}, ids, mask))


_advance_jit = jax.jit(_advance, static_argnames=("greedy", "nucleus", "stop_ids", "pad_id"))


def generate_uncached(config: CausalLMConfig, params, prompt_ids, prompt_lengths, *, max_new_tokens: int, rng,
                      temperature: float = 0.0, top_p: float = 1.0, stop_ids: Sequence[int] = (EOS_ID,),
                      pad_id: int = PAD_ID) -> GenerationOutput:
    """``generate`` without a cache: every step runs the whole right-padded sequence (row b's
    prompt then its new tokens, from slot 0, positions 0..) through the model and reads the logits
    at its last real token. Slow; the reference for ``generate``."""
    ids, lengths, stop_ids = _check(config, prompt_ids, prompt_lengths, max_new_tokens, temperature, top_p,
                                    stop_ids, pad_id)
    batch, width = ids.shape
    seq = np.full((batch, width + max_new_tokens), pad_id, np.int32)
    seq[:, :width] = ids
    rows = np.arange(batch)
    forward = _forward(config)
    options = dict(greedy=temperature == 0, nucleus=top_p < 1, stop_ids=stop_ids, pad_id=int(pad_id))
    state = _initial_state(batch, max_new_tokens, pad_id)
    for step in range(max_new_tokens):
        ends = lengths + step  # tokens per row so far
        mask = np.arange(seq.shape[1])[None, :] < ends[:, None]
        logits = forward(params, seq, mask)[rows, ends - 1]
        state = _advance_jit(state, step, logits, rng, jnp.float32(temperature), jnp.float32(top_p), **options)
        seq[rows, ends] = np.asarray(state.tokens[:, step])
        if bool(jnp.all(state.done)):
            break
    return GenerationOutput(state.tokens, state.lengths)
