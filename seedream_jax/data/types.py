"""Typed training batches: pytrees with named fields, so a loss reads ``batch.image`` instead of
sniffing which keys a dict happens to hold.

A ``flax.struct.dataclass`` is a JAX pytree (absent fields are None: no leaves), so it passes
through ``jax.jit``, ``jax.tree_util.tree_map`` and ``lax.scan`` like the dict it replaces.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional, Union

import flax.struct

Array = Any  # np.ndarray or jax.Array


@flax.struct.dataclass
class DiffusionBatch:
    """What a diffusion loss reads, B examples (absent fields are None).

    Pixels, or the VAE posterior they encode to (exactly one of the two):
      image: float32 [B, H, W, 3] in [-1, 1].
      latent_mean, latent_logvar: float32 [B, H/f, W/f, C] (latent cache, or encoded at start).
    Conditioning, the conditioner's inputs or its cached outputs (exactly one of the two):
      llm_ids: int32 [B, L], llm_mask: bool [B, L]; with a glyph branch also byt5_ids: int32
        [B, Lg], byt5_mask: bool [B, Lg], has_glyphs: bool [B] (``models.conditioner.tokenize_prompts``).
      text_context: [B, N, D], text_mask: [B, N], text_pooled: [B, D] (the text cache).
    Optional: style_tags: int32 [B, A], the aesthetic adapter's tags (``data/style_tags.py``);
      cond_latents: float32 [B, H/f, W/f, Cc], a refiner's conditioning latent (``stages/refiner.py``).
    """
    image: Optional[Array] = None
    latent_mean: Optional[Array] = None
    latent_logvar: Optional[Array] = None
    llm_ids: Optional[Array] = None
    llm_mask: Optional[Array] = None
    byt5_ids: Optional[Array] = None
    byt5_mask: Optional[Array] = None
    has_glyphs: Optional[Array] = None
    text_context: Optional[Array] = None
    text_mask: Optional[Array] = None
    text_pooled: Optional[Array] = None
    style_tags: Optional[Array] = None
    cond_latents: Optional[Array] = None

    @classmethod
    def from_dict(cls, batch: Union[Mapping[str, Array], "DiffusionBatch"]) -> "DiffusionBatch":
        """The batch of a dict keyed by field names (a DiffusionBatch is returned as it is).

        Raises KeyError naming keys that are no field, ValueError when neither or both of
        pixels / posteriors, or of tokens / cached text outputs, are present."""
        if isinstance(batch, DiffusionBatch):
            return batch
        unknown = sorted(set(batch) - set(FIELDS))
        if unknown:
            raise KeyError(f"DiffusionBatch: unknown keys {unknown} (fields: {list(FIELDS)})")
        out = cls(**batch)
        has_latents = out.latent_mean is not None and out.latent_logvar is not None
        if (out.image is not None) == has_latents:
            raise ValueError(f"DiffusionBatch needs either image or latent_mean + latent_logvar, got keys {sorted(batch)}")
        has_cached_text = all(getattr(out, k) is not None for k in CACHED_TEXT_FIELDS)
        if (out.llm_ids is not None) == has_cached_text:
            raise ValueError(f"DiffusionBatch needs either the token arrays (llm_ids, ...) or text_context + "
                             f"text_mask + text_pooled, got keys {sorted(batch)}")
        return out

    def to_dict(self) -> Dict[str, Array]:
        """{field: array} of the present fields."""
        return {k: getattr(self, k) for k in FIELDS if getattr(self, k) is not None}

    def tokens(self) -> Dict[str, Array]:
        """The conditioner's keyword inputs: the present token arrays."""
        return {k: getattr(self, k) for k in TOKEN_FIELDS if getattr(self, k) is not None}


FIELDS = tuple(f.name for f in dataclasses.fields(DiffusionBatch))
TOKEN_FIELDS = ("llm_ids", "llm_mask", "byt5_ids", "byt5_mask", "has_glyphs")
CACHED_TEXT_FIELDS = ("text_context", "text_mask", "text_pooled")
PIXEL_FIELDS = ("image", "latent_mean", "latent_logvar")
