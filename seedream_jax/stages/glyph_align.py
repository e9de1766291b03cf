"""Stage kind ``glyph_align``: Glyph-ByT5 box-level alignment of the ByT5 branch to drawn glyphs.

Data: world scenes with a word (``data/glyph_pairs.py``), made on the fly: example k of the train
stream is a pure function of (seed, k), so resume is exact; each brings its rendered image, the
word's box, its glyph template and seven augmented templates (hard negatives). Model:
``models/glyph.GlyphAligner`` (component ``glyph``), whose text side ``glyph/byt5`` has the
conditioner's ByT5 shape (``glyph_align.model.byt5`` defaults to ``model.byt5``), so a later
stage starts its glyph branch from it::

    c.pretrain.init_from = ConfigDict({'vae': 'vae', 'conditioner/byt5': 'glyph_align:glyph/byt5'})

Loss (``training/reward_losses.glyph_loss``): InfoNCE between boxes and template spans over the
batch, the box-to-text softmax also over the example's own hard negatives.

``finish`` measures held-out examples (an independent stream, never trained on): for each
augmentation kind and language, the fraction where the true template scores above the augmented
one (top-1 of the two), and where it scores above all seven (``all``), written to the summary and
to ``<stage_dir>/heldout_accuracy.md`` with the text-rendering scorer's images per second.
"""
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.checkpoint.init_from import parse_sources
from seedream_jax.checkpoint.stage_dir import StageDescription
from seedream_jax.data import glyph_pairs, synthetic
from seedream_jax.data.batches import IndexedBatches
from seedream_jax.models.byt5 import ByT5Config
from seedream_jax.models.glyph import GlyphAligner, GlyphAlignConfig
from seedream_jax.models.partition import merge_params, split_params
from seedream_jax.rewards.glyph import COMPONENT, TextRenderingScorer
from seedream_jax.training import loop
from seedream_jax.training.reward_losses import glyph_loss

K = len(glyph_pairs.AUGMENTATIONS)


def model_config(cfg, stage_cfg) -> GlyphAlignConfig:
    """The ``GlyphAlignConfig`` of ``glyph_align.model``."""
    m = stage_cfg.model
    return GlyphAlignConfig(byt5=ByT5Config(**m.byt5.to_dict(), dtype=str(m.dtype)), image_size=int(m.image_size),
                            image_channels=tuple(m.image_channels), groups=int(m.groups),
                            roi_size=tuple(m.roi_size), embed_dim=int(m.embed_dim), max_length=int(m.max_length),
                            init_temperature=float(m.init_temperature), dtype=str(m.dtype))


def glyph_batch(examples, config: GlyphAlignConfig) -> dict:
    """Arrays of ``glyph_pairs.GlyphExample``s, batch first: ``image`` uint8 [B, S, S, 3]; ``box``
    float32 [B, 4] (y0, x0, y1, x1) px; ``ids``/``mask`` [B, L] and ``span`` [B, 2] of the
    template; ``neg_ids``/``neg_mask`` [B, K, L], ``neg_span`` [B, K, 2] and ``neg_valid`` [B, K]
    of the K augmented templates (an inapplicable one repeats the true template, not valid);
    ``key`` [B] int32, equal for equal templates."""
    size = config.image_size
    prompts = [e.prompt for e in examples]
    negatives = [e.negatives[kind] or e.prompt for e in examples for kind in glyph_pairs.AUGMENTATIONS]
    templates = prompts + negatives
    ids, mask, spans = glyph_pairs.encode_templates([glyph_pairs.text_of(t) for t in templates], templates,
                                                    config.max_length)
    b = len(examples)
    return {"image": np.stack([synthetic.render_scene(e.scene, size) for e in examples]),
            "box": np.array([synthetic.text_box(e.scene, size) for e in examples], np.float32),
            "ids": ids[:b], "mask": mask[:b], "span": spans[:b],
            "neg_ids": ids[b:].reshape(b, K, -1), "neg_mask": mask[b:].reshape(b, K, -1),
            "neg_span": spans[b:].reshape(b, K, 2),
            "neg_valid": np.array([[e.negatives[k] is not None for k in glyph_pairs.AUGMENTATIONS]
                                   for e in examples]),
            "key": np.array([zlib.crc32(p.encode("utf-8")) & 0x7FFFFFFF for p in prompts], np.int32)}


def batch_loss(model: GlyphAligner, params, batch):
    """(loss, metrics) of ``model`` with ``params`` (the ``glyph`` component) on a ``glyph_batch``."""
    images = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    b = images.shape[0]
    ids = jnp.concatenate([batch["ids"], batch["neg_ids"].reshape(b * K, -1)])
    mask = jnp.concatenate([batch["mask"], batch["neg_mask"].reshape(b * K, -1)])
    spans = jnp.concatenate([batch["span"], batch["neg_span"].reshape(b * K, 2)])
    box_emb, span_emb, scale = model.apply({"params": params}, images, batch["box"], ids, mask, spans)
    positives = (batch["key"][:, None] == batch["key"][None, :]).astype(jnp.float32)
    return glyph_loss(box_emb, span_emb[:b], span_emb[b:].reshape(b, K, -1), batch["neg_valid"], scale, positives)


def heldout_accuracy(model: GlyphAligner, params, examples, config: GlyphAlignConfig, batch_size: int = 128) -> dict:
    """{kind | 'all': {language: fraction}} on ``examples``: kind = the true template scores above
    that augmentation (examples where it applies); 'all' = above every applicable one."""
    score = jax.jit(lambda p, bt: _scores(model, p, bt))
    true, hard, valid, langs = [], [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = glyph_batch(chunk, config)
        t, h = score(params, batch)
        true.append(np.asarray(t)), hard.append(np.asarray(h)), valid.append(batch["neg_valid"])
        langs += [e.language for e in chunk]
    true, hard, valid, langs = np.concatenate(true), np.concatenate(hard), np.concatenate(valid), np.array(langs)
    wins = hard < true[:, None]
    out = {}
    for lang in glyph_pairs.LANGUAGES:
        rows = langs == lang
        for k, kind in enumerate(glyph_pairs.AUGMENTATIONS):
            applies = rows & valid[:, k]
            out.setdefault(kind, {})[lang] = round(float(wins[applies, k].mean()), 4) if applies.any() else None
        out.setdefault("all", {})[lang] = round(float(np.all(wins | ~valid, axis=1)[rows].mean()), 4)
    return out


def _scores(model, params, batch):
    images = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    b = images.shape[0]
    box = model.apply({"params": params}, images, batch["box"], method=GlyphAligner.encode_boxes)
    spans = model.apply({"params": params}, jnp.concatenate([batch["ids"], batch["neg_ids"].reshape(b * K, -1)]),
                        jnp.concatenate([batch["mask"], batch["neg_mask"].reshape(b * K, -1)]),
                        jnp.concatenate([batch["span"], batch["neg_span"].reshape(b * K, 2)]),
                        method=GlyphAligner.encode_spans)
    return jnp.sum(box * spans[:b], -1), jnp.einsum("be,bke->bk", box, spans[b:].reshape(b, K, -1))


def accuracy_markdown(accuracy: dict) -> str:
    """The ``heldout_accuracy`` table: one row per augmentation kind (and 'all'), one column per language."""
    langs = list(glyph_pairs.LANGUAGES)
    rows = ["| augmentation | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for kind, by_lang in accuracy.items():
        rows.append(f"| {kind} | " + " | ".join("–" if by_lang[lang] is None else f"{by_lang[lang]:.3f}"
                                                for lang in langs) + " |")
    return "\n".join(rows)


def _mix(stage_cfg) -> dict:
    e = stage_cfg.examples
    return dict(two_words=float(e.two_words), random_text=float(e.random_text),
                neutral_probability=float(e.neutral_probability))


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The glyph-alignment Task: world words in boxes, the aligner, InfoNCE with hard negatives."""
    s = stage_cfg
    config = model_config(cfg, s)
    model = GlyphAligner(config)
    seed, mix = int(s.examples.seed), _mix(s)

    def make_batch(idx, rng):
        return glyph_batch([glyph_pairs.make_example(seed, "train", int(i), **mix) for i in idx], config)

    def init_params(rng):
        size, length = config.image_size, config.max_length
        params = model.init(rng, jnp.zeros((1, size, size, 3)), jnp.array([[0.0, 0.0, 8.0, 32.0]]),
                            jnp.ones((1, length), jnp.int32), jnp.ones((1, length), bool),
                            jnp.array([[6, 10]], jnp.int32))["params"]
        return split_params({COMPONENT: params}, list(s.frozen))

    def loss_fn(params, frozen, batch, rng):
        return batch_loss(model, merge_params(params, frozen)[COMPONENT], batch)

    evaluate = None
    if int(s.train.eval_every) > 0:
        eval_examples = glyph_pairs.heldout_examples(seed, int(s.examples.eval_count))

        def heldout_eval(state, step):
            acc = heldout_accuracy(model, _params(state), eval_examples, config)
            return loop.Measurements(scalars={f"heldout/{lang}_all": acc["all"][lang]
                                              for lang in glyph_pairs.LANGUAGES})
        evaluate = heldout_eval

    data = IndexedBatches(int(s.examples.train_examples), int(s.train.batch_size), seed, make_batch)
    sources = parse_sources(s.init_from, workdir)
    return loop.Task(name="glyph_align", init_params=init_params, loss_fn=loss_fn, data=data,
                     init_sources=sources or None, evaluate=evaluate)


def _params(state):
    return jax.device_get(merge_params(state.ema_params or state.params, state.frozen)[COMPONENT])


def finish(cfg, stage_cfg, workdir: str, stage_dir: str, result) -> dict:
    """Held-out top-1 accuracy per augmentation kind x language, and the text-rendering scorer's speed."""
    s = stage_cfg
    config = model_config(cfg, s)
    model = GlyphAligner(config)
    params = _params(result.state)
    n = int(s.examples.heldout)
    accuracy = heldout_accuracy(model, params, glyph_pairs.heldout_examples(int(s.examples.seed), n), config)
    table = accuracy_markdown(accuracy)
    scorer = TextRenderingScorer(model, params)
    examples = glyph_pairs.heldout_examples(int(s.examples.seed), int(s.speed_batch))
    images = np.stack([synthetic.render_scene(e.scene, config.image_size) for e in examples])
    prompts = [f'the text "{e.text}"' for e in examples]
    speed = scorer.images_per_second(images, prompts)
    with open(os.path.join(stage_dir, "heldout_accuracy.md"), "w", encoding="utf-8") as f:
        f.write(f"Held-out top-1 accuracy against each hard negative ({n} examples, step {result.step})\n\n"
                f"{table}\n\ntext-rendering scorer: {speed:.1f} images/s at {config.image_size} px "
                f"(batch {len(images)})\n")
    print(f"glyph_align: held-out top-1 accuracy against each hard negative, {n} examples\n{table}\n"
          f"glyph_align: text-rendering scorer {speed:.1f} images/s at {config.image_size} px", flush=True)
    return {"heldout_accuracy": accuracy, "heldout_examples": n, "scorer_images_per_second": round(speed, 1)}


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """One component, ``glyph``."""
    return StageDescription(components={COMPONENT: (GlyphAligner, model_config(cfg, stage_cfg))})
