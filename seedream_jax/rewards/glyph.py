"""The text-rendering score of a trained glyph aligner (``models/glyph.GlyphAligner``).

``TextRenderingScorer(images, prompts)`` -> float32 [B]: for each prompt's quoted text (the
conditioner's ``glyph_text``: quoted spans joined by a space), the cosine between the text's ByT5
span features (neutral template ``Text "{text}".``) and the image features of the box where the
text is drawn. A generated image carries no box, so the box is searched: the score is the maximum
over the layouts the world draws a word in (``candidate_boxes``: each horizontal band and, for
multi-character Chinese, each vertical band, at both text sizes). A prompt with no quoted text
scores 0. Jitted over (params, images, template bytes, boxes), hence differentiable with respect
to the pixels; images are uint8 or float in [-1, 1], any size (resized to the model's
``image_size``, where the candidate boxes are).
"""
import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.data import fonts, glyph_pairs, synthetic
from seedream_jax.models.conditioner import glyph_text
from seedream_jax.models.glyph import GlyphAligner
from seedream_jax.rewards import common

COMPONENT = "glyph"  # the component name in a glyph_align stage's checkpoint and stage.json
MAX_CANDIDATES = 2 * len(synthetic.TEXT_SIZES) * 3


def language_of(text: str) -> str:
    """'zh' if ``text`` holds a CJK character, else 'en'."""
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


@functools.lru_cache(maxsize=4096)
def candidate_boxes(text: str, size: int) -> Tuple[Tuple[int, int, int, int], ...]:
    """Pixel boxes (y0, x0, y1, x1) of ``text`` in every layout the world draws a word in at ``size`` px."""
    language = language_of(text)
    font = fonts.fonts_for(language)[0]
    orientations = ["horizontal"] + (["vertical"] if language == "zh" and len(text) > 1 else [])
    boxes = []
    for orientation in orientations:
        for band in synthetic.TEXT_BANDS[orientation]:
            for text_size in synthetic.TEXT_SIZES:
                item = synthetic.TextItem(text, language, "black", text_size, orientation, band, font)
                boxes.append(synthetic.text_box(synthetic.Scene("light gray", [], item), size))
    return tuple(boxes)


class TextRenderingScorer:
    """A trained ``GlyphAligner`` (``model``, ``params`` of its component) as a reward."""

    def __init__(self, model: GlyphAligner, params):
        self.model, self.params, self.config = model, params, model.config
        self._score = jax.jit(self.score_fn)

    @classmethod
    def from_stage(cls, stage_dir: str, weights: str = "ema") -> "TextRenderingScorer":
        """The scorer of a glyph_align stage directory (its stage.json and latest checkpoint)."""
        _, model, params = common.stage_model(stage_dir, COMPONENT, weights)
        return cls(model, params)

    def score_fn(self, params, images, ids, mask, spans, boxes, valid):
        """Pure: [B] maximum over the K candidate ``boxes`` [B, K, 4] (``valid`` [B, K]) of the cosine
        between the box and the template span (``ids``/``mask`` [B, L], ``spans`` [B, 2])."""
        x = common.model_pixels(images, self.config.image_size)
        box = self.model.apply({"params": params}, x, boxes, method=GlyphAligner.encode_boxes)        # [B, K, E]
        text = self.model.apply({"params": params}, ids, mask, spans, method=GlyphAligner.encode_spans)  # [B, E]
        cos = jnp.einsum("bke,be->bk", box, text)
        return jnp.max(jnp.where(valid, cos, -1.0), axis=1)

    def inputs(self, prompts: Sequence[str]):
        """Host arrays of ``prompts``: (ids, mask, spans, boxes [B, K, 4], valid [B, K], has_text [B])."""
        texts = [glyph_text(p) for p in prompts]
        shown = [t or "-" for t in texts]
        templates = [glyph_pairs.template(t) for t in shown]
        ids, mask, spans = glyph_pairs.encode_templates(shown, templates, self.config.max_length)
        boxes = np.zeros((len(texts), MAX_CANDIDATES, 4), np.float32)
        valid = np.zeros((len(texts), MAX_CANDIDATES), bool)
        for i, t in enumerate(shown):
            found = candidate_boxes(t, self.config.image_size)
            boxes[i, :len(found)], valid[i, :len(found)] = found, True
        return ids, mask, spans, boxes, valid, np.array([bool(t) for t in texts])

    def __call__(self, images, prompts: Sequence[str]) -> jax.Array:
        if len(images) != len(prompts):
            raise ValueError(f"text_rendering: {len(images)} images but {len(prompts)} prompts")
        ids, mask, spans, boxes, valid, has_text = self.inputs(prompts)
        score = self._score(self.params, jnp.asarray(images), ids, mask, spans, boxes, valid)
        return jnp.where(jnp.asarray(has_text), score, 0.0)

    def images_per_second(self, images, prompts: Sequence[str], repeats: int = 5) -> float:
        """Throughput of ``__call__`` on this batch (compiled first, then ``repeats`` timed calls)."""
        return common.images_per_second(lambda: self(images, prompts), len(prompts), repeats)
