"""Stage kind ``reward``: the bilingual image-text alignment reward model, trained on world preference pairs.

Data: preference pairs of the synthetic world (``data/world_pairs.py``), made on the fly: batch k
holds train pairs drawn from ``reward.pairs.train_scenes`` scenes (a pure function of the seed and
k, so resume is exact), of kinds in the proportions ``pairs.kind_weights``, each with its true image, the image of its perturbed spec, and its true and
perturbed captions in a language drawn per pair from ``pairs.languages``. Model:
``models/rewards.AlignmentReward`` (component ``alignment``), whose text tower's ``llm`` starts from
scratch or from another stage through ``init_from`` (e.g. ``{'alignment/text/llm':
'pretrain:conditioner/text_encoder/llm'}``; then ``reward.model.llm`` must be the conditioner's LLM
shape: ``config_lib.reward_section``), tokenised by the run's tokenizer (``cfg.tokenizer``).
Loss (``training/reward_losses.py``): InfoNCE over the batch's true and perturbed images and captions
(a caption is a positive of every image it is true of) plus Bradley-Terry on the caption pairs and on
the image pairs.

Optional ranked pairs (``reward.ranked``): two images for one caption, one preferred, as a rater
labels a generator's samples. Either a user's pair dataset (``ranked.path``: ``tools/ingest.py`` of a
preference file, ``data/preference.py``, read by the ``image_pairs`` source at ``model.image_size``,
centred, unflipped) or a generator's own samples ranked by the graded objective check
(``ranked.generated.source``, a pretrain-kind stage: ``stages/ranked_samples.py`` draws
``generated.per_caption`` images for each of ``generated.captions`` world captions when the stage
starts, again on resume, a pure function of the source and the settings; pair ``idx[k] % P`` for the
batch's first indices ``idx[k]``). Each batch of B world pairs then also holds round(B *
``ranked.fraction``) ranked pairs, with the loss ``ranked.weight`` * Bradley-Terry of the preferred
image over the other for their caption. Resume is exact with either.

Calibration across captions (``generated.calibration_rows`` > 0, generated pairs only): each batch
also holds that many of the generator's images, each with its own caption and graded score (rows
``idx[-M:] % (C * G)``), and every two of them whose scores differ by more than ``generated.min_gap``
add ``generated.calibration_weight`` * Bradley-Terry of the higher-scoring (image, caption) over the
lower one. The contrastive and pair losses above only compare scores that share an image or a
caption, so they leave the level of the cosine free from one caption to another; this term ties it
to how right the image is, so that the reward of two images for two different prompts can be
compared (an RL batch, a curation threshold, the eval's agreement check).

``finish`` measures the held-out pairs (scenes with a held-out colour-shape pair, never trained on):
pairwise accuracy per perturbation kind x language, caption pairs and image pairs apart, written to
the summary and to ``<stage_dir>/heldout_accuracy.md``, with the scorer's images per second; with
generated ranked pairs also ``generated.heldout_captions`` held-out captions' samples: the reward's
accuracy on their pairs and its Spearman correlation with the graded objective score over their images.
"""
import logging
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax import config_lib
from seedream_jax.checkpoint.init_from import parse_sources
from seedream_jax.checkpoint.stage_dir import StageDescription, tokenizer_record
from seedream_jax.data import sources, synthetic, world_pairs
from seedream_jax.data.batches import IndexedBatches, JoinedBatches
from seedream_jax.models.partition import merge_params, split_params
from seedream_jax.models.rewards import AlignmentReward, AlignmentRewardConfig
from seedream_jax.models.text_encoder import Qwen2Config
from seedream_jax.rewards.alignment import COMPONENT, AlignmentScorer, accuracy_markdown, pairwise_accuracy
from seedream_jax.rewards.common import batched, spearman
from seedream_jax.stages import common, ranked_samples
from seedream_jax.training import loop
from seedream_jax.training.reward_losses import alignment_loss, bradley_terry, caption_positives, ranking_over_batch


def model_config(cfg, stage_cfg) -> AlignmentRewardConfig:
    """The ``AlignmentRewardConfig`` of ``reward.model``."""
    m = stage_cfg.model
    llm = Qwen2Config(**m.llm.to_dict(), dtype=str(m.dtype),
                      attention_impl=config_lib.non_mmdit_attention_impl(cfg.model.attention_impl))
    return AlignmentRewardConfig(llm=llm, image_size=int(m.image_size), patch_size=int(m.patch_size),
                                 image_channels=tuple(m.image_channels),
                                 groups=int(m.groups), embed_dim=int(m.embed_dim), max_length=int(m.max_length),
                                 init_temperature=float(m.init_temperature), dtype=str(m.dtype))


def _tokenizer(cfg, workdir: str, config: AlignmentRewardConfig):
    tok = common.open_tokenizer(cfg.tokenizer.format, common.resolve(workdir, cfg.tokenizer.path))
    if tok.vocab_size > config.llm.vocab_size:
        raise ValueError(f"tokenizer {cfg.tokenizer.path} has {tok.vocab_size} tokens but reward.model.llm.vocab_size "
                         f"is {config.llm.vocab_size}")
    return tok


def caption_id(text: str) -> int:
    """A 31-bit id of a caption (CRC-32): equal captions, equal ids."""
    return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


def pair_batch(pairs, languages, tokenizer, config: AlignmentRewardConfig) -> dict:
    """Arrays of a batch of ``world_pairs.PreferencePair`` with one language each, all with the
    batch first: images ``image_pos``/``image_neg`` uint8 [B, S, S, 3]; tokens ``ids_pos``/
    ``mask_pos``/``ids_neg``/``mask_neg`` [B, L]; ``caption_pos``/``caption_neg`` [B], the captions'
    ids (``caption_id``); ``truth_pos``/``truth_neg`` [B, 4], the ids of every caption (en, zh x
    short, long) of the true and of the perturbed scene, so the loss knows exactly which caption
    of the batch is true of which image."""
    rendered = [p.images(config.image_size) for p in pairs]
    captions = [p.captions(lang) for p, lang in zip(pairs, languages)]
    texts = [c for c, _ in captions] + [r for _, r in captions]
    ids, mask = tokenizer(texts, config.max_length)
    cap = np.array([caption_id(t) for t in texts], np.int32)

    def truth(scene):
        return [caption_id(text) for by_type in synthetic.captions(scene).values() for text in by_type.values()]
    b = len(pairs)
    return {"image_pos": np.stack([c for c, _ in rendered]), "image_neg": np.stack([r for _, r in rendered]),
            "ids_pos": ids[:b], "mask_pos": mask[:b], "ids_neg": ids[b:], "mask_neg": mask[b:],
            "caption_pos": cap[:b], "caption_neg": cap[b:],
            "truth_pos": np.array([truth(p.scene) for p in pairs], np.int32),
            "truth_neg": np.array([truth(p.negative) for p in pairs], np.int32)}


def ranked_batch(better, worse, ids, mask) -> dict:
    """The batch fields of P ranked pairs: ``ranked_better``/``ranked_worse`` uint8 [P, S, S, 3] (the
    preferred image first) and their caption's tokens ``ranked_ids``/``ranked_mask`` [P, L]."""
    return {"ranked_better": np.asarray(better), "ranked_worse": np.asarray(worse), "ranked_ids": np.asarray(ids),
            "ranked_mask": np.asarray(mask)}


def calibration_batch(images, ids, mask, scores) -> dict:
    """The batch fields of M scored generator images, each with its own caption: ``calibration_images``
    uint8 [M, S, S, 3], the captions' tokens ``calibration_ids``/``calibration_mask`` [M, L] and the
    images' graded objective scores ``calibration_scores`` float32 [M]."""
    return {"calibration_images": np.asarray(images), "calibration_ids": np.asarray(ids),
            "calibration_mask": np.asarray(mask), "calibration_scores": np.asarray(scores, np.float32)}


def batch_loss(model, params, batch, *, contrastive_weight: float, ranking_weight: float,
               ranked_weight: float = 0.0, calibration_weight: float = 0.0, calibration_gap: float = 0.0):
    """(loss, metrics) of ``model`` with ``params`` (the ``alignment`` component) on a ``pair_batch``,
    plus ``ranked_weight`` * Bradley-Terry on its ranked pairs when it has them (``ranked_batch``:
    the preferred image's score over the other's for their caption; metrics ``bt_ranked``,
    ``ranked_pair_accuracy``), plus ``calibration_weight`` * Bradley-Terry across captions when it has
    calibration rows (``calibration_batch``: every two rows whose objective scores differ by more than
    ``calibration_gap``, the higher one's (image, own caption) score over the lower one's,
    ``reward_losses.ranking_over_batch``; metrics ``bt_calibration``, ``calibration_pair_accuracy``)."""
    b = batch["ids_pos"].shape[0]
    ranked, calibrated = "ranked_better" in batch, "calibration_images" in batch
    parts = [batch["image_pos"], batch["image_neg"]]
    ids, mask = [batch["ids_pos"], batch["ids_neg"]], [batch["mask_pos"], batch["mask_neg"]]
    if ranked:
        parts += [batch["ranked_better"], batch["ranked_worse"]]
        ids, mask = ids + [batch["ranked_ids"]] * 2, mask + [batch["ranked_mask"]] * 2
    if calibrated:
        parts.append(batch["calibration_images"])
        ids, mask = ids + [batch["calibration_ids"]], mask + [batch["calibration_mask"]]
    images = jnp.concatenate(parts).astype(jnp.float32) / 127.5 - 1.0
    image_emb, text_emb, scale = model.apply({"params": params}, images, jnp.concatenate(ids), jnp.concatenate(mask))
    positives = caption_positives(jnp.concatenate([batch["truth_pos"], batch["truth_neg"]]),
                                  jnp.concatenate([batch["caption_pos"], batch["caption_neg"]]))
    loss, metrics = alignment_loss(image_emb[:b], image_emb[b:2 * b], text_emb[:b], text_emb[b:2 * b], scale,
                                   positives, contrastive_weight=contrastive_weight, ranking_weight=ranking_weight)
    start = 2 * b
    if ranked:
        p = batch["ranked_ids"].shape[0]
        caption = text_emb[start:start + p]
        better = scale * jnp.sum(image_emb[start:start + p] * caption, -1)
        worse = scale * jnp.sum(image_emb[start + p:start + 2 * p] * caption, -1)
        metrics["bt_ranked"] = bradley_terry(better, worse)
        metrics["ranked_pair_accuracy"] = jnp.mean((better > worse).astype(jnp.float32))
        loss = loss + ranked_weight * metrics["bt_ranked"]
        start += 2 * p
    if calibrated:
        scores = scale * jnp.sum(image_emb[start:] * text_emb[start:], -1)
        metrics["bt_calibration"], metrics["calibration_pair_accuracy"] = ranking_over_batch(
            scores, batch["calibration_scores"], calibration_gap)
        loss = loss + calibration_weight * metrics["bt_calibration"]
    return loss, metrics


def ranked_source(stage_cfg, workdir: str, tokenizer, config: AlignmentRewardConfig):
    """The ``image_pairs`` source of ``ranked.path`` yielding ``ranked_batch`` fields,
    round(batch_size * ``ranked.fraction``) pairs per global batch."""
    s = stage_cfg
    data_cfg = config_lib.data_section(format="image_pairs", path=str(s.ranked.path), image_size=config.image_size,
                                       random_crop=False, flip_prob=0.0, seed=int(s.pairs.seed))

    def tokenised(batch):
        ids, mask = tokenizer(batch["prompt"], config.max_length)
        return ranked_batch(batch["chosen"], batch["rejected"], ids, mask)
    count = max(1, round(int(s.train.batch_size) * float(s.ranked.fraction)))
    return sources.open_source(data_cfg, workdir, count, yields="image_pairs", batch_fn=tokenised)


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The alignment reward Task: world pairs (and ranked pairs), the two-tower model, InfoNCE +
    Bradley-Terry."""
    s = stage_cfg
    r, g = s.ranked, s.ranked.generated
    if r.path and g.source:
        raise ValueError("reward.ranked: give a pair dataset (path) or a generator (generated.source), not both")
    config = model_config(cfg, s)
    model = AlignmentReward(config)
    tokenizer = _tokenizer(cfg, workdir, config)
    seed, languages = int(s.pairs.seed), tuple(s.pairs.languages)
    cycle = world_pairs.kind_cycle(s.pairs.kind_weights)

    calibration_rows = int(g.calibration_rows)
    if calibration_rows and not g.source:
        raise ValueError("reward.ranked.generated.calibration_rows needs a generator (generated.source)")
    if calibration_rows > int(s.train.batch_size):
        raise ValueError(f"reward.ranked.generated.calibration_rows={calibration_rows} exceeds the batch size "
                         f"{int(s.train.batch_size)} (its rows are chosen by the batch's indices)")
    samples = (ranked_samples.draw(cfg, g, workdir, common.world_mix(cfg, s), "train", int(g.captions),
                                   config.image_size) if g.source else None)
    if samples is not None:
        if not len(samples.better):
            raise ValueError(f"reward.ranked.generated: the {len(samples.scores)} images {g.source} drew for "
                             f"{g.captions} captions make no pair (every caption's images score alike)")
        prompt_ids, prompt_mask = tokenizer(samples.prompts, config.max_length)

    def make_batch(idx, rng):
        pairs = [world_pairs.make_pair(seed, "train", int(i), kind=cycle[int(i) % len(cycle)]) for i in idx]
        langs = [languages[int(k)] for k in rng.integers(len(languages), size=len(pairs))]
        batch = pair_batch(pairs, langs, tokenizer, config)
        if samples is not None:
            chosen = np.asarray(idx[:max(1, round(len(idx) * float(r.fraction)))], np.int64) % len(samples.better)
            caption = samples.caption[chosen]
            batch.update(ranked_batch(samples.images[samples.better[chosen]], samples.images[samples.worse[chosen]],
                                      prompt_ids[caption], prompt_mask[caption]))
            if calibration_rows:
                rows = np.asarray(idx[-calibration_rows:], np.int64) % len(samples.scores)
                own_caption = rows // samples.per_caption
                batch.update(calibration_batch(samples.images[rows], prompt_ids[own_caption],
                                               prompt_mask[own_caption], samples.scores[rows]))
        return batch

    def init_params(rng):
        size, length = config.image_size, config.max_length
        params = model.init(rng, jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32),
                            jnp.ones((1, length), bool))["params"]
        return split_params({COMPONENT: params}, list(s.frozen))

    def loss_fn(params, frozen, batch, rng):
        return batch_loss(model, merge_params(params, frozen)[COMPONENT], batch,
                          contrastive_weight=float(s.contrastive_weight), ranking_weight=float(s.ranking_weight),
                          ranked_weight=float(r.weight), calibration_weight=float(g.calibration_weight),
                          calibration_gap=float(g.min_gap))

    evaluate = None
    if int(s.train.eval_every) > 0:
        eval_pairs = world_pairs.heldout_pairs(seed, max(1, int(s.pairs.eval_per_kind)))

        def heldout_eval(state, step):
            acc = pairwise_accuracy(_scorer(model, state, tokenizer), eval_pairs, config.image_size, languages)
            return loop.Measurements(scalars={f"heldout/{what}_accuracy": float(np.mean(
                [v for row in acc[what].values() for v in row.values()])) for what in acc})
        evaluate = heldout_eval

    data = IndexedBatches(int(s.pairs.train_scenes), int(s.train.batch_size), seed, make_batch)
    if r.path:
        data = JoinedBatches(data, ranked_source(s, workdir, tokenizer, config))
    init_sources = parse_sources(s.init_from, workdir)
    return loop.Task(name="reward", init_params=init_params, loss_fn=loss_fn, data=data,
                     init_sources=init_sources or None, evaluate=evaluate)


def _scorer(model, state, tokenizer) -> AlignmentScorer:
    params = merge_params(state.ema_params or state.params, state.frozen)[COMPONENT]
    return AlignmentScorer(model, jax.device_get(params), tokenizer)


def finish(cfg, stage_cfg, workdir: str, stage_dir: str, result) -> dict:
    """Held-out pairwise accuracy (kind x language, caption and image pairs) and the scorer's speed."""
    s = stage_cfg
    config = model_config(cfg, s)
    tokenizer = _tokenizer(cfg, workdir, config)
    scorer = _scorer(AlignmentReward(config), result.state, tokenizer)
    pairs = world_pairs.heldout_pairs(int(s.pairs.seed), int(s.pairs.heldout_per_kind))
    languages = tuple(s.pairs.languages)
    captions = [c for p in pairs for lang in languages for c in p.captions(lang)]
    truncated = int(np.sum(tokenizer(captions, config.max_length + 1)[1].sum(1) > config.max_length))
    if truncated:
        logging.warning("reward: %d of %d held-out captions exceed reward.model.max_length=%d tokens and are "
                        "truncated", truncated, len(captions), config.max_length)
    accuracy = pairwise_accuracy(scorer, pairs, config.image_size, languages)
    table = accuracy_markdown(accuracy)
    n = int(s.speed_batch)
    images = np.stack([p.images(config.image_size)[0] for p in pairs[:n]])
    speed = scorer.images_per_second(images, [p.captions("en")[0] for p in pairs[:n]])
    out = {"heldout_accuracy": accuracy, "heldout_pairs_per_kind": int(s.pairs.heldout_per_kind),
           "truncated_heldout_captions": truncated, "scorer_images_per_second": round(speed, 1)}
    lines = [f"Held-out pairwise accuracy ({int(s.pairs.heldout_per_kind)} pairs per kind, step {result.step})",
             table, f"scorer: {speed:.1f} images/s at {config.image_size} px (batch {len(images)})"]
    if s.ranked.generated.source:
        out["generated"] = generated_agreement(cfg, s, workdir, scorer)
        lines.append(generated_markdown(out["generated"]))
    with open(os.path.join(stage_dir, "heldout_accuracy.md"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(lines) + "\n")
    print("reward: " + "\n\n".join(lines), flush=True)
    return out


def generated_agreement(cfg, stage_cfg, workdir: str, scorer: AlignmentScorer) -> dict:
    """The reward on ``ranked.generated.heldout_captions`` held-out captions' samples
    (``ranked_samples``): {'source', 'images', 'pairs', 'pair_accuracy' (the preferred image scored
    higher), 'spearman' (reward against the graded objective score over every image), 'mean_objective'}."""
    g = stage_cfg.ranked.generated
    samples = ranked_samples.draw(cfg, g, workdir, common.world_mix(cfg, stage_cfg), "heldout", int(g.heldout_captions),
                                  scorer.config.image_size)
    prompts = [p for p in samples.prompts for _ in range(samples.per_caption)]
    reward = np.asarray(batched(lambda idx: scorer(samples.images[idx], [prompts[i] for i in idx]),
                                np.arange(len(prompts)), 256))
    accuracy = float(np.mean(reward[samples.better] > reward[samples.worse])) if len(samples.better) else float("nan")
    return {"source": common.resolve(workdir, str(g.source)), "images": len(prompts), "pairs": len(samples.better),
            "pair_accuracy": accuracy, "spearman": spearman(reward, samples.scores),
            "mean_objective": float(samples.scores.mean())}


def generated_markdown(agreement: dict) -> str:
    """One table of ``generated_agreement``."""
    a = agreement
    return ("Generated images of held-out captions (the generator " + a["source"] + ")\n\n"
            "| images | pairs | mean graded objective | pair accuracy | Spearman with the graded objective |\n"
            "|---|---|---|---|---|\n"
            f"| {a['images']} | {a['pairs']} | {a['mean_objective']:.3f} | {a['pair_accuracy']:.3f} | "
            f"{a['spearman']:.3f} |")


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """One component, ``alignment``; the tokenizer."""
    return StageDescription(components={COMPONENT: (AlignmentReward, model_config(cfg, stage_cfg))},
                            tokenizer=tokenizer_record(cfg.tokenizer.format,
                                                       common.resolve(workdir, cfg.tokenizer.path)))
