"""Text conditioning: bilingual LLM features fused with Glyph-ByT5 features of quoted text.

Seedream 2.0 encodes the whole prompt with a bilingual decoder-only LLM and, for text
rendering, encodes the text to be drawn (the quoted spans of the prompt) at the byte level
with a glyph-aligned ByT5. Here:

    prompt ──► TextEncoder (LLM + adapter) ──────────────────────────┐
    quoted spans ──► ByT5Encoder ──► glyph_mapper (LN, Lin, GELU, Lin, GELU, Lin) ─┴─ concat on tokens
                                                         ──► context_proj ──► tokens [B, L+G, context_dim]
                                                         ──► masked mean  ──► pooled [B, context_dim]

The empty prompt (no tokens, no quoted text) gives a fully masked sequence and a zero pooled
vector: the unconditional embedding used by classifier-free guidance.
"""
import dataclasses
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models import layers
from seedream_jax.models.byt5 import ByT5Config, ByT5Encoder, byt5_tokenize
from seedream_jax.models.text_encoder import TextEncoder, TextEncoderConfig
from seedream_jax.parallel import axes

# Opening -> closing quote characters recognised as "text to render".
QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "\u300c": "\u300d", "\u300e": "\u300f", "'": "'"}
_QUOTED = re.compile("|".join(
    f"{re.escape(o)}([^{re.escape(c)}]+?){re.escape(c)}" for o, c in QUOTE_PAIRS.items()))
# An apostrophe inside a word (don't, it's) is not a quote.
_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")


def extract_quoted_text(prompt: str) -> List[str]:
    """Return the spans to render, in order: text inside "..", “..”, 「..」, 『..』 or '..'.

    >>> extract_quoted_text('a sign saying "OPEN" and 「你好」')
    ['OPEN', '你好']
    """
    cleaned = _APOSTROPHE.sub("\u0000", prompt)
    spans = []
    for match in _QUOTED.finditer(cleaned):
        span = next(g for g in match.groups() if g is not None).replace("\u0000", "'").strip()
        if span:
            spans.append(span)
    return spans


def glyph_text(prompt: str, separator: str = " ") -> str:
    """The string fed to ByT5: the quoted spans joined by ``separator`` ('' if none)."""
    return separator.join(extract_quoted_text(prompt))


@dataclasses.dataclass(frozen=True)
class ConditionerConfig:
    """Shapes of the text-conditioning stack.

    text_encoder: the LLM (+ adapter). byt5: the glyph encoder, or None for no glyph branch.
    context_dim: width of the tokens handed to the DiT (its ``context_dim``); the pooled vector
    has the same width. llm_max_length / byt5_max_length: token budgets (host-side padding).
    """
    text_encoder: TextEncoderConfig
    byt5: Optional[ByT5Config]
    context_dim: int
    glyph_mapper_hidden: int = 0  # 0: use the LLM width
    llm_max_length: int = 64
    byt5_max_length: int = 32
    dtype: str = "float32"

    @property
    def num_tokens(self) -> int:
        return self.llm_max_length + (self.byt5_max_length if self.byt5 is not None else 0)


class GlyphMapper(nn.Module):
    """LayerNorm, Linear, GELU, Linear, GELU, Linear: ByT5 width -> LLM width."""
    hidden: int
    out_features: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = layers.compute_dtype(self.dtype)
        x = layers.LayerNorm(eps=1e-5, name="norm")(x.astype(dt))
        x = nn.gelu(layers.dense(self.hidden, axes.EMBED, axes.MLP, dtype=dt, name="linear_1")(x), approximate=False)
        x = nn.gelu(layers.dense(self.hidden, axes.MLP, axes.EMBED, dtype=dt, name="linear_2")(x), approximate=False)
        return layers.dense(self.out_features, axes.EMBED, axes.MLP, dtype=dt, name="linear_3")(x)


class Conditioner(nn.Module):
    """Prompt tokens -> (context tokens [B, L+G, context_dim], mask [B, L+G] bool, pooled [B, context_dim])."""
    config: ConditionerConfig

    @nn.compact
    def __call__(self, llm_ids: jax.Array, llm_mask: jax.Array,
                 byt5_ids: Optional[jax.Array] = None, byt5_mask: Optional[jax.Array] = None,
                 has_glyphs: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array, jax.Array]:
        """Args: llm_ids/llm_mask [B, L]; byt5_ids/byt5_mask [B, G] bytes of the quoted text;
        has_glyphs [B] bool, False where the prompt has no quoted text (its glyph tokens are masked)."""
        cfg = self.config
        dt = layers.compute_dtype(cfg.dtype)
        llm_mask = llm_mask.astype(bool)
        tokens, mask = TextEncoder(cfg.text_encoder, name="text_encoder")(llm_ids, llm_mask)
        width = tokens.shape[-1]
        if cfg.byt5 is not None:
            if byt5_ids is None:
                raise ValueError("this conditioner has a glyph branch: pass byt5_ids and byt5_mask")
            glyph = ByT5Encoder(cfg.byt5, name="byt5")(byt5_ids, byt5_mask)
            glyph = GlyphMapper(cfg.glyph_mapper_hidden or width, width, cfg.dtype, name="glyph_mapper")(glyph)
            glyph_mask = byt5_mask.astype(bool)
            if has_glyphs is not None:
                glyph_mask = glyph_mask & has_glyphs.astype(bool)[:, None]
            tokens = jnp.concatenate([tokens.astype(dt), glyph.astype(dt)], axis=1)
            mask = jnp.concatenate([mask, glyph_mask], axis=1)
        context = layers.dense(cfg.context_dim, axes.MLP, axes.EMBED, dtype=dt, name="context_proj")(tokens.astype(dt))
        context = jnp.where(mask[..., None], context, 0).astype(dt)
        weights = mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(context.astype(jnp.float32) * weights, axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
        return context, mask, pooled.astype(dt)


TextTokenizerFn = Callable[[Sequence[str], int], Tuple[np.ndarray, np.ndarray]]


def tokenize_prompts(prompts: Sequence[str], tokenizer: TextTokenizerFn, config: ConditionerConfig) -> Dict[str, np.ndarray]:
    """Host-side tokenisation of prompts into the Conditioner's inputs.

    ``tokenizer(texts, max_length) -> (ids int32 [B, L], mask bool [B, L])`` is the LLM tokenizer.
    Returns numpy arrays: llm_ids/llm_mask [B, llm_max_length]; with a glyph branch also
    byt5_ids/byt5_mask [B, byt5_max_length] and has_glyphs [B]. An empty prompt gives an
    all-False mask (the unconditional embedding).
    """
    ids, mask = tokenizer(list(prompts), config.llm_max_length)
    empty = np.array([not p.strip() for p in prompts])
    mask = np.asarray(mask, bool) & ~empty[:, None]
    out = {"llm_ids": np.asarray(ids, np.int32), "llm_mask": mask}
    if config.byt5 is not None:
        texts = [glyph_text(p) for p in prompts]
        b_ids, b_mask = byt5_tokenize(texts, config.byt5_max_length)
        out.update(byt5_ids=b_ids, byt5_mask=b_mask, has_glyphs=np.array([bool(t) for t in texts]))
    return out
