"""The learned alignment reward as a scorer: a trained ``models.rewards.AlignmentReward`` and its tokenizer.

``AlignmentScorer(images, prompts)`` -> float32 [B], the cosine of each image's and its prompt's
embeddings (in [-1, 1]; higher = better aligned). Prompts are tokenised on the host; the towers
run in one jitted function of (params, images, ids, mask), so the score is differentiable with
respect to the pixels (``jax.grad`` through ``__call__`` works: only the prompts are host data).
Images are uint8 [B, H, W, 3] or float in [-1, 1] (the models' pixel space), any size: they are
resized to the model's ``image_size``.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.data.tokenizer import TextTokenizer
from seedream_jax.models.rewards import AlignmentReward
from seedream_jax.rewards.common import batched, images_per_second, model_pixels, stage_model

COMPONENT = "alignment"  # the component name in a reward stage's checkpoint and stage.json


def open_tokenizer(record: dict) -> TextTokenizer:
    """The tokenizer of a stage's ``tokenizer`` record {'kind', 'path'}."""
    if record["kind"] == "sentencepiece":
        return TextTokenizer.from_sentencepiece(record["path"])
    if record["kind"] == "hf":
        return TextTokenizer.from_hf(record["path"])
    raise ValueError(f"unknown tokenizer kind {record['kind']!r}")


class AlignmentScorer:
    """A trained alignment model (``model``, ``params`` of its component) with its ``tokenizer``."""

    def __init__(self, model: AlignmentReward, params, tokenizer):
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.config = model.config
        self._score = jax.jit(self.score_fn)
        self._embed_images = jax.jit(lambda p, x: model.apply(
            {"params": p}, model_pixels(x, self.config.image_size), method=AlignmentReward.encode_image))
        self._embed_texts = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask,
                                                                     method=AlignmentReward.encode_text))

    @classmethod
    def from_stage(cls, stage_dir: str, weights: str = "ema") -> "AlignmentScorer":
        """The scorer of a reward stage directory (its stage.json, latest checkpoint and tokenizer)."""
        stage, model, params = stage_model(stage_dir, COMPONENT, weights)
        return cls(model, params, open_tokenizer(stage.tokenizer()))

    def tokenize(self, prompts: Sequence[str]):
        """(ids int32, mask bool) [B, max_length] of ``prompts``."""
        return self.tokenizer(list(prompts), self.config.max_length)

    def score_fn(self, params, images, ids, mask):
        """Pure: cosines [B] of images (uint8, or float in [-1, 1]) and token arrays."""
        return self.model.apply({"params": params}, model_pixels(images, self.config.image_size), ids, mask,
                                method=AlignmentReward.score)

    def embed_images(self, images) -> jax.Array:
        """Unit image embeddings [B, E]."""
        return self._embed_images(self.params, jnp.asarray(images))

    def embed_texts(self, prompts: Sequence[str]) -> jax.Array:
        """Unit prompt embeddings [B, E]."""
        ids, mask = self.tokenize(prompts)
        return self._embed_texts(self.params, jnp.asarray(ids), jnp.asarray(mask))

    def __call__(self, images, prompts: Sequence[str]) -> jax.Array:
        ids, mask = self.tokenize(prompts)
        return self._score(self.params, jnp.asarray(images), jnp.asarray(ids), jnp.asarray(mask))

    def images_per_second(self, images, prompts: Sequence[str], repeats: int = 5) -> float:
        """Throughput of ``__call__`` on this batch (compiled first, then ``repeats`` timed calls)."""
        return images_per_second(lambda: self(images, prompts), len(prompts), repeats)


def pairwise_accuracy(scorer: AlignmentScorer, pairs, image_size: int, languages: Sequence[str] = ("en", "zh"),
                      batch_size: int = 256) -> dict:
    """Preference accuracy of ``scorer`` on ``data.world_pairs`` pairs: {'caption' | 'image': {kind:
    {language: fraction}}}. A caption pair is right when the true image scores higher with the true
    caption than with the perturbed one; an image pair when the true caption scores the true image
    higher than the image rendered from the perturbed spec."""
    rendered = [p.images(image_size) for p in pairs]
    chosen = batched(scorer.embed_images, np.stack([c for c, _ in rendered]), batch_size)
    rejected = batched(scorer.embed_images, np.stack([r for _, r in rendered]), batch_size)
    out = {"caption": {}, "image": {}}
    for lang in languages:
        captions = [p.captions(lang) for p in pairs]
        true = batched(scorer.embed_texts, [c for c, _ in captions], batch_size)
        wrong = batched(scorer.embed_texts, [r for _, r in captions], batch_size)
        s_true, s_caption, s_image = (np.sum(a * b, -1) for a, b in ((chosen, true), (chosen, wrong), (rejected, true)))
        for kind in dict.fromkeys(p.kind for p in pairs):
            rows = np.array([p.kind == kind for p in pairs])
            out["caption"].setdefault(kind, {})[lang] = round(float(np.mean(s_true[rows] > s_caption[rows])), 4)
            out["image"].setdefault(kind, {})[lang] = round(float(np.mean(s_true[rows] > s_image[rows])), 4)
    return out


def accuracy_markdown(accuracy: dict) -> str:
    """The ``pairwise_accuracy`` table: one row per kind, caption and image pairs per language."""
    langs = list(next(iter(accuracy["caption"].values())))
    head = ["kind"] + [f"{what} {lang}" for what in ("caption", "image") for lang in langs]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in accuracy["caption"]:
        rows.append("| " + " | ".join([kind] + [f"{accuracy[what][kind][lang]:.3f}" for what in ("caption", "image")
                                                for lang in langs]) + " |")
    return "\n".join(rows)
