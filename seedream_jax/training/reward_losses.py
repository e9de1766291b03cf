"""Losses of the reward models: batch InfoNCE plus Bradley-Terry ranking on preference pairs."""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp


def info_nce(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, positives: jax.Array) -> jax.Array:
    """Symmetric contrastive loss over a batch.

    image_emb, text_emb: unit [B, E]; scale: the inverse temperature; positives: [B, B], 1 where
    caption j is true of image i (the diagonal, and duplicates of a caption: two scenes may share a
    short caption). Each row's (and column's) target spreads evenly over its positives.
    """
    logits = scale * image_emb @ text_emb.T
    pos = positives.astype(jnp.float32)
    rows = -jnp.sum(pos / jnp.sum(pos, 1, keepdims=True) * jax.nn.log_softmax(logits, axis=1), axis=1)
    cols = -jnp.sum(pos / jnp.sum(pos, 0, keepdims=True) * jax.nn.log_softmax(logits, axis=0), axis=0)
    return 0.5 * (jnp.mean(rows) + jnp.mean(cols))


def caption_positives(truth_ids: jax.Array, caption_ids: jax.Array) -> jax.Array:
    """[N, M] float32: 1 where caption j is true of image i. truth_ids [N, K]: ids of every caption
    true of image i; caption_ids [M]: the batch's caption ids. Built in the step from per-example
    arrays, so a batch split over processes still compares every image with every caption."""
    return jnp.any(truth_ids[:, :, None] == caption_ids[None, None, :], axis=1).astype(jnp.float32)


def bradley_terry(chosen: jax.Array, rejected: jax.Array) -> jax.Array:
    """-log sigmoid(chosen - rejected), averaged: the chosen item's score should be the larger."""
    return jnp.mean(jax.nn.softplus(rejected - chosen))


def ranking_over_batch(scores: jax.Array, targets: jax.Array, min_gap: float = 0.0) -> Tuple[jax.Array, jax.Array]:
    """(loss, accuracy): Bradley-Terry over every two rows a, b of a batch with ``targets[a] >
    targets[b] + min_gap`` (RankNet), whatever their captions. scores, targets: [M]. The loss is the
    mean of -log sigmoid(scores[a] - scores[b]) over those pairs, the accuracy the share with
    scores[a] > scores[b]; both 0 when no two targets differ by more than ``min_gap``."""
    ordered = (targets[:, None] > targets[None, :] + min_gap).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(ordered), 1.0)
    diff = scores[:, None] - scores[None, :]
    return (jnp.sum(ordered * jax.nn.softplus(-diff)) / count,
            jnp.sum(ordered * (diff > 0).astype(jnp.float32)) / count)


def alignment_loss(image_pos, image_neg, text_pos, text_neg, scale, positives, *, contrastive_weight: float,
                   ranking_weight: float) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """The alignment reward's loss and metrics.

    image_pos/text_pos: unit embeddings of each pair's true image and caption [B, E]; image_neg: of
    the image rendered from the perturbed spec; text_neg: of the perturbed caption (which is that
    image's own caption). The contrastive term runs over all 2B images and 2B captions, so each
    pair's perturbed caption and image are also its hardest in-batch negatives; ``positives``
    [2B, 2B] says which caption (columns: true then perturbed) is true of which image (rows: true
    then perturbed). Caption pairs rank (image_pos, text_pos) over (image_pos, text_neg), image
    pairs (image_pos, text_pos) over (image_neg, text_pos); scores are ``scale`` times cosines.
    """
    s_pos = scale * jnp.sum(image_pos * text_pos, -1)
    s_caption_neg = scale * jnp.sum(image_pos * text_neg, -1)
    s_image_neg = scale * jnp.sum(image_neg * text_pos, -1)
    contrastive = info_nce(jnp.concatenate([image_pos, image_neg]), jnp.concatenate([text_pos, text_neg]), scale,
                           positives)
    bt_caption, bt_image = bradley_terry(s_pos, s_caption_neg), bradley_terry(s_pos, s_image_neg)
    loss = contrastive_weight * contrastive + ranking_weight * 0.5 * (bt_caption + bt_image)
    return loss, {"contrastive": contrastive, "bt_caption": bt_caption, "bt_image": bt_image,
                  "caption_pair_accuracy": jnp.mean((s_pos > s_caption_neg).astype(jnp.float32)),
                  "image_pair_accuracy": jnp.mean((s_pos > s_image_neg).astype(jnp.float32)),
                  "temperature": 1.0 / scale}


def glyph_loss(box_emb: jax.Array, span_emb: jax.Array, negative_emb: jax.Array, negative_valid: jax.Array,
               scale: jax.Array, positives: jax.Array) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Glyph-ByT5's box-level contrastive loss with hard negatives, and its metrics.

    box_emb, span_emb: unit [B, E] (example i's box and its template's text span); negative_emb:
    unit [B, K, E], the spans of example i's K augmented templates, ``negative_valid`` [B, K] where
    the augmentation applies; positives [B, B]: 1 where template j is example i's template. The
    box-to-text direction is a softmax over the batch's B texts plus the box's own valid hard
    negatives; the text-to-box direction over the batch's boxes. Metrics: ``hard_accuracy``, the
    fraction of boxes whose true text scores above every valid hard negative, and the per-batch
    InfoNCE terms.
    """
    logits = scale * box_emb @ span_emb.T                                   # [B, B]
    hard = jnp.where(negative_valid, scale * jnp.einsum("be,bke->bk", box_emb, negative_emb), -jnp.inf)
    pos = positives.astype(jnp.float32)
    row_logp = jax.nn.log_softmax(jnp.concatenate([logits, hard], axis=1), axis=1)[:, :logits.shape[1]]
    rows = -jnp.sum(pos / jnp.sum(pos, 1, keepdims=True) * row_logp, axis=1)
    cols = -jnp.sum(pos / jnp.sum(pos, 0, keepdims=True) * jax.nn.log_softmax(logits, axis=0), axis=0)
    loss = 0.5 * (jnp.mean(rows) + jnp.mean(cols))
    true = jnp.diagonal(logits)
    beaten = jnp.all(jnp.where(negative_valid, hard < true[:, None], True), axis=1)
    return loss, {"box_to_text": jnp.mean(rows), "text_to_box": jnp.mean(cols),
                  "hard_accuracy": jnp.mean(beaten.astype(jnp.float32)), "temperature": 1.0 / scale}
