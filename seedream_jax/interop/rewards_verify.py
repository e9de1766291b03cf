"""Check an exported reward model against the JAX one on world images and prompts.

JAX side: the stage's component as ``stage.json`` records it, with the checkpoint's weights (EMA
or raw, as exported), run at ``'highest'`` matmul precision. PyTorch side: the package's own
``interop.torch_rewards`` (never the folder's copy, so verifying runs no code from it) over the
exported folder, loaded strictly (a missing, unexpected or mis-shaped tensor raises
``StrictLoadError``, a ValueError, naming it).

Inputs: ``count`` world scenes (``synthetic.sample_scene`` with ``default_rng([seed, i])``)
rendered at the model's size, and
  alignment: the given prompts, then the scenes' own captions (en / zh, short / long in turn),
             prompt i paired with image i (as many images as prompts);
  aesthetic: the images and a degraded copy of each (the degradation kinds in turn);
  glyph:     ``count`` held-out glyph examples (``glyph_pairs.heldout_examples(seed, count)``): their
             word boxes, every candidate layout box of their words (``rewards.glyph.candidate_boxes``),
             and the spans of their words and of the quoted text of the given prompts.
The report gives the largest absolute difference of each output (unit embeddings, cosines or
scores, the logit scale) and their maximum, ``max_abs_diff``, which ``tolerance_failure``
compares with ``REWARD_TOLERANCE`` (1e-5, float32 rounding between XLA and PyTorch).
"""
from typing import Optional, Sequence

import jax
import numpy as np

REWARD_TOLERANCE = 1e-5


def tolerance_failure(report: dict, tolerance: float = REWARD_TOLERANCE) -> Optional[str]:
    """None if ``report['max_abs_diff'] <= tolerance``, else a sentence saying by how much it is exceeded."""
    diff = float(report["max_abs_diff"])
    if diff <= tolerance:
        return None
    worst = max((k for k in report["diffs"]), key=lambda k: report["diffs"][k])
    return f"max abs difference {diff:.3g} (in {worst}) exceeds the tolerance {tolerance:g} by {diff - tolerance:.3g}"


def _diff(a, b) -> float:
    b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
    a = np.asarray(a)
    if a.shape != b.shape:
        raise AssertionError(f"JAX output {a.shape} and PyTorch output {b.shape} differ in shape")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _applier(module, params):
    """``apply(*inputs, method=...)``: the module's method with ``params``, compiled once per method."""
    def apply(*inputs, method):
        return jax.jit(lambda p, *a: module.apply({"params": p}, *a, method=method))(params, *inputs)
    return apply


def world_images(count: int, size: int, seed: int):
    """(scenes, uint8 [count, size, size, 3]) of the default world mix."""
    from seedream_jax.data import synthetic
    world = synthetic.SyntheticWorldConfig()
    scenes = [synthetic.sample_scene(np.random.default_rng([seed, i]), world) for i in range(count)]
    return scenes, np.stack([synthetic.render_scene(s, size) for s in scenes])


def _alignment(stage, module, params, model, prompts, count, seed) -> dict:
    from seedream_jax.data import synthetic
    from seedream_jax.models.rewards import AlignmentReward
    from seedream_jax.rewards.alignment import open_tokenizer
    cfg = module.config
    n = max(count, len(prompts))
    scenes, images = world_images(n, cfg.image_size, seed)
    own = [synthetic.captions(s)[("en", "zh")[i % 2]][("short", "long")[i // 2 % 2]] for i, s in enumerate(scenes)]
    texts = list(prompts) + own[len(prompts):]
    ids, mask = open_tokenizer(stage.tokenizer())(texts, cfg.max_length)
    t_ids, t_mask = model.tokenize(texts)
    if not (np.array_equal(ids, t_ids) and np.array_equal(mask, t_mask)):
        raise AssertionError("the export's tokenizer gives other token ids than the stage's")
    x = images.astype(np.float32) / 127.5 - 1.0
    apply = _applier(module, params)
    ours = {"image_embeddings": apply(x, method=AlignmentReward.encode_image),
            "text_embeddings": apply(ids, mask, method=AlignmentReward.encode_text),
            "scores": apply(x, ids, mask, method=AlignmentReward.score),
            "logit_scale": apply(method=AlignmentReward.scale)}
    theirs = {"image_embeddings": model.encode_image(images), "text_embeddings": model.encode_text(t_ids, t_mask),
              "scores": model.score(images, t_ids, t_mask), "logit_scale": model.scale()}
    return {"diffs": {k: _diff(ours[k], theirs[k]) for k in ours}, "images": n, "prompts": len(texts)}


def _aesthetic(module, params, model, count, seed) -> dict:
    from seedream_jax.data import degradations
    size = module.config.image_size
    scenes, clean = world_images(count, size, seed)
    degraded = np.stack([degradations.degrade(im, s, degradations.KINDS[i % len(degradations.KINDS)],
                                              np.random.default_rng([seed, i]))
                         for i, (im, s) in enumerate(zip(clean, scenes))])
    images = np.concatenate([clean, degraded])
    ours = _applier(module, params)(images.astype(np.float32) / 127.5 - 1.0, method=None)
    return {"diffs": {"scores": _diff(ours, model(images))}, "images": len(images)}


def _glyph(module, params, model, prompts, count, seed) -> dict:
    from seedream_jax.data import glyph_pairs, synthetic
    from seedream_jax.models.conditioner import glyph_text
    from seedream_jax.models.glyph import GlyphAligner
    from seedream_jax.rewards.glyph import candidate_boxes
    cfg = module.config
    examples = glyph_pairs.heldout_examples(seed, count)
    images = np.stack([synthetic.render_scene(e.scene, cfg.image_size) for e in examples])
    boxes = np.array([synthetic.text_box(e.scene, cfg.image_size) for e in examples], np.float32)
    found = [candidate_boxes(e.text, cfg.image_size) for e in examples]
    k = min(len(c) for c in found)
    candidates = np.array([c[:k] for c in found], np.float32)
    texts = [e.text for e in examples] + [t for t in map(glyph_text, prompts) if t]
    ids, mask, spans = glyph_pairs.encode_templates(texts, [glyph_pairs.template(t) for t in texts], cfg.max_length)
    t_inputs = model.template_inputs(texts)
    if not all(np.array_equal(a, b) for a, b in zip((ids, mask, spans), t_inputs)):
        raise AssertionError("the export's glyph template inputs differ from data/glyph_pairs.encode_templates")
    x = images.astype(np.float32) / 127.5 - 1.0
    apply = _applier(module, params)
    ours = {"box_embeddings": apply(x, boxes, method=GlyphAligner.encode_boxes),
            "candidate_embeddings": apply(x, candidates, method=GlyphAligner.encode_boxes),
            "span_embeddings": apply(ids, mask, spans, method=GlyphAligner.encode_spans),
            "logit_scale": apply(method=GlyphAligner.scale)}
    theirs = {"box_embeddings": model.encode_boxes(images, boxes),
              "candidate_embeddings": model.encode_boxes(images, candidates),
              "span_embeddings": model.encode_spans(*t_inputs), "logit_scale": model.scale()}
    return {"diffs": {k: _diff(ours[k], theirs[k]) for k in ours}, "images": count, "spans": len(texts),
            "candidates_per_image": k}


def compare_reward_with_torch(export_dir: str, stage_dir: str, prompts: Sequence[str] = (), *,
                              step: Optional[int] = None, weights: str = "ema", seed: int = 0,
                              count: int = 4) -> dict:
    """Run the stage's reward model in JAX and the export in PyTorch on the same world inputs.

    Returns {'model', 'diffs': {output: max abs diff}, 'max_abs_diff', and input counts}. Raises
    ``StrictLoadError`` (a ValueError) when the export does not load, AssertionError when the
    export's tokenizer or template inputs differ from the stage's.
    """
    import torch

    from seedream_jax.checkpoint.stage_dir import open_stage
    from seedream_jax.interop import rewards_export, torch_rewards

    stage = open_stage(stage_dir, step)
    if stage.kind not in rewards_export.SPECS:
        raise ValueError(f"{stage_dir} is a {stage.kind!r} stage, not one of {list(rewards_export.SPECS)}")
    name = rewards_export.SPECS[stage.kind].component
    model = torch_rewards.MODELS[name].from_pretrained(export_dir, torch_dtype=torch.float32)  # strict: fails first
    module, _ = stage.component(name)
    params = jax.tree_util.tree_map(np.asarray, stage.params(weights)[name])
    with jax.default_matmul_precision("highest"), torch.no_grad():
        if name == "alignment":
            report = _alignment(stage, module, params, model, list(prompts), count, seed)
        elif name == "aesthetic":
            report = _aesthetic(module, params, model, count, seed)
        else:
            report = _glyph(module, params, model, list(prompts), count, seed)
    return {"model": name, **report, "max_abs_diff": max(report["diffs"].values())}
