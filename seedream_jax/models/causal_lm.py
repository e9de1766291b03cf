"""The Qwen2-layout LLM as a causal language model (HF ``Qwen2ForCausalLM``).

``Qwen2ForCausalLM`` = ``Qwen2Model`` (submodule ``model``, the same parameter subtree as the text
encoder's LLM) + an LM head. A tied head (``tie_word_embeddings``, as Qwen2.5-0.5B/1.5B/3B) has
no parameters of its own: logits = h @ embed_tokens^T; an untied one is ``lm_head`` (no bias,
kernel [hidden, vocab] annotated (embed, vocab)). Parameter names mirror HF's, so
``interop.qwen2.load_causal_lm`` / ``export_causal_lm`` are a table of renames.

Incremental decoding goes through ``Qwen2ForCausalLM.decode`` (hidden states and an updated
KV cache, ``text_encoder.init_kv_cache``) and ``Qwen2ForCausalLM.logits`` (the head alone), so a
generator runs the head only where it needs next-token logits.
"""
import dataclasses
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seedream_jax.models import layers
from seedream_jax.models.text_encoder import KVCache, Qwen2Config, Qwen2Model
from seedream_jax.parallel import axes, sharding


@dataclasses.dataclass(frozen=True)
class CausalLMConfig:
    """llm: the decoder. tie_word_embeddings: the LM head is the input embedding (no ``lm_head``)."""
    llm: Qwen2Config
    tie_word_embeddings: bool = True


class Qwen2ForCausalLM(nn.Module):
    """(input_ids [B, L] int32, attention_mask [B, L]) -> next-token logits [B, L, vocab] float32.

    Positions are 0..L-1: pad on the right (padding keys are masked). Logit t scores token t+1.
    """
    config: CausalLMConfig

    def setup(self):
        cfg = self.config.llm
        self.model = Qwen2Model(cfg)
        if not self.config.tie_word_embeddings:
            self.lm_head = layers.dense(cfg.vocab_size, axes.EMBED, axes.VOCAB, use_bias=False,
                                        dtype=layers.compute_dtype(cfg.dtype), name="lm_head")

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        return self.logits(self.model(input_ids, attention_mask))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final hidden states [..., hidden] (compute dtype) -> logits [..., vocab] float32."""
        if not self.config.tie_word_embeddings:
            return self.lm_head(hidden).astype(jnp.float32)
        table = nn.meta.unbox(self.model.variables["params"]["embed_tokens"]["embedding"])
        table = nn.with_logical_constraint(table, sharding.gathered_axes((axes.VOCAB, axes.EMBED)))
        return jnp.einsum("...d,vd->...v", hidden, table.astype(hidden.dtype)).astype(jnp.float32)

    def decode(self, input_ids: jax.Array, key_mask: jax.Array, positions: jax.Array,
               cache: Tuple[KVCache, ...], cache_index) -> Tuple[jax.Array, Tuple[KVCache, ...]]:
        """Run ``input_ids`` [B, L] at RoPE ``positions`` [B, L] through the KV cache: their keys
        and values go to slots cache_index..cache_index+L-1; ``key_mask`` [B, T] marks the slots
        holding real tokens (these included). Returns (final hidden states [B, L, hidden], cache)."""
        return self.model(input_ids, key_mask, positions=positions, cache=cache, cache_index=cache_index)


def token_logprobs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """log p(x_{t+1} | x_<=t): logits [B, L, V] (position t scores token t+1), input_ids [B, L]
    -> [B, L-1] float32; entry t is the log-probability of input_ids[:, t+1]."""
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {logits.shape} do not match input_ids {input_ids.shape} on [B, L]")
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, input_ids[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]


def sequence_logprob(token_logps: jax.Array, mask: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """(summed log-probability [B], token count [B]) of each row's masked tokens.

    token_logps: float [B, T], log p(token t | earlier tokens) (e.g. ``token_logprobs(logits, ids)``,
    T = L - 1); mask: [B, T], nonzero on the response's tokens (not the prompt, not padding)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(token_logps.astype(jnp.float32) * mask, axis=-1), jnp.sum(mask, axis=-1)
