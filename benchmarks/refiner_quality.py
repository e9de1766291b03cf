"""Refiner quality: base + refiner versus base + bicubic upsampling, at the refiner's output size.

    python benchmarks/refiner_quality.py --workdir runs/chain [--base pretrain] [--refiner refiner] \
        [--per-group 0] [--size 64] [--num-steps 28] [--guidance-scale 4.0] [--seed 0] \
        [--refiner-steps 0] [--refiner-guidance-scale 0] [--refiner-strength 0] [--raw] \
        [--output runs/chain/refiner_quality]

The eval suite's (``eval/suite.py``) single-object items (scored for shape, and colour) and text
items (scored for text accuracy Ra and hit rate Rh, ``eval/text_metrics.py``), in English and
Chinese, the first ``--per-group`` items of each (category, split) group (0 = all). The base
stage draws every prompt at ``--size`` px (batches of ``--batch-size``, batch at offset k with seed
``--seed + k``: the noise of image i depends on i alone, as in the eval stage); the same base
images are then brought to S = scale x ``--size`` px in two ways:

  base + bicubic   the refiner's own conditioning resize (``data/sr_pairs.upsample``, PyTorch's
                   bicubic), rounded to uint8
  base + refiner   ``sampling/generate.refine`` with the refiner stage's recorded sampler (or
                   ``--refiner-steps`` / ``--refiner-guidance-scale`` / ``--refiner-strength``),
                   batch k seeded like the base:
                   exactly the images of the eval stage with ``eval.refiner`` set (``generate.Cascade``)

with two reference rows at S px: the world's own rendering of each prompt's scene (the ceiling)
and its round trip through the base's VAE (encode, posterior mean, decode: the ceiling of anything
that decodes with that VAE); and the refiner on a perfect base: the world's rendering at ``--size``
px ("truth/2") brought to S px by bicubic and by the refiner. Every image is scored as the eval scores it (``eval/scoring.py``,
the OCR of ``eval/benchmark.py``), and its edge sharpness measured (``eval/sharpness.edge_slope``:
the slope of the luma across edges in grey levels per pixel; a one-pixel step of contrast C
scores C, the same step spread over w pixels C / w).

Prints a Markdown table (rows above; columns shape accuracy, colour accuracy, text Ra, Rh, exact,
mean edge slope); ``--output`` writes ``refiner_quality.json`` and ``grid.png`` (the first
``--grid-items`` English prompts, one row each: the ``ROWS`` side by side).
"""
import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Callable, Dict, Mapping, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seedream_jax.eval import benchmark, report, sharpness  # noqa: E402
from seedream_jax.eval.suite import LANGUAGES, SuiteItem, build_suite  # noqa: E402

ROWS = ("ground truth", "VAE round trip", "truth/2 + bicubic", "truth/2 + refiner", "base + bicubic", "base + refiner")
KINDS = ("single", "text")  # the suite's items scored for shape (and colour) and for text
Images = Callable[[Sequence[str]], np.ndarray]  # prompts -> uint8 [N, S, S, 3]


def suite_items(per_group: int, suite_seed: int = 0) -> list:
    """The suite's single-object and text items, the first ``per_group`` of each (category, split)
    group (0 = all)."""
    from seedream_jax.stages.eval import select_items
    return select_items([i for i in build_suite(suite_seed) if i.kind in KINDS], per_group)


def bicubic(images: np.ndarray, scale: int) -> np.ndarray:
    """uint8 [N, h, w, 3] -> uint8 [N, scale h, scale w, 3] by the refiner's conditioning resize."""
    from seedream_jax.data import sr_pairs
    from seedream_jax.stages import common
    return common.images_from_model(sr_pairs.upsample(common.images_to_model(images), scale))


def refine_batches(refiner, params, settings, images: np.ndarray, prompts: Sequence[str], *, batch_size: int,
                   seed: int) -> np.ndarray:
    """``generate.refine`` of uint8 ``images`` [N, h, w, 3] in batches of ``batch_size`` (the last
    padded with its last row: one compiled program), batch at offset k with seed ``seed + k``."""
    from seedream_jax.sampling.generate import refine
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk, batch = list(prompts[start:start + batch_size]), images[start:start + batch_size]
        pad = batch_size - len(chunk)
        refined = refine(refiner, params, np.concatenate([batch, np.repeat(batch[-1:], pad, 0)]),
                         chunk + [chunk[-1]] * pad, seed=seed + start, **dataclasses.asdict(settings))
        out.append(refined[:len(chunk)])
    return np.concatenate(out)


def generate_rows(items: Sequence[SuiteItem], base: Images, refine_fn: Callable, truth: Images, vae: Images,
                  low_truth: Images, scale: int) -> Dict[str, Dict[str, np.ndarray]]:
    """{row: {language: uint8 [N, S, S, 3]}} for ``ROWS``: ``base`` draws the prompts at the low
    size once; bicubic and ``refine_fn(images, prompts)`` bring the same images to S px, and so the
    world's own renderings at the low size (``low_truth``: the refiner on a perfect base)."""
    rows = {r: {} for r in ROWS}
    for lang in LANGUAGES:
        prompts = [item.prompt(lang) for item in items]
        rows["ground truth"][lang] = truth(prompts)
        rows["VAE round trip"][lang] = vae(prompts)
        for name, low in (("truth/2", low_truth(prompts)), ("base", base(prompts))):
            rows[f"{name} + bicubic"][lang] = bicubic(low, scale)
            rows[f"{name} + refiner"][lang] = refine_fn(low, prompts)
    return rows


def score_rows(items: Sequence[SuiteItem], rows: Mapping[str, Mapping[str, np.ndarray]],
               read_text=benchmark.read_text_lines) -> Dict[str, dict]:
    """{row: {'shape', 'colour' (accuracy), 'text_ra', 'text_rh', 'text_exact', 'edge_slope' (grey
    levels / px, mean over the row's images)}}; a score without items is None."""
    out = {}
    for name, images in rows.items():
        image_results, _ = benchmark.score_suite(items, images, read_text)
        metrics = report.aggregate(image_results)
        accuracy = report.category_accuracy(metrics)
        head = report.headline(metrics, {})
        slopes = np.concatenate([sharpness.edge_slope(images[lang]) for lang in LANGUAGES])
        out[name] = {"shape": accuracy.get("shape"), "colour": accuracy.get("colour"),
                     **{f"text_{m}": head[f"text_{m}"] for m in report.TEXT_METRICS},
                     "edge_slope": float(slopes.mean())}
    return out


def format_table(scores: Mapping[str, Mapping], size: int) -> str:
    """Markdown: one line per row of ``score_rows``."""
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    lines = [f"| {size} px | shape acc. | colour acc. | text Ra | text Rh | text exact | edge slope (grey levels/px) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in scores.items():
        lines.append(f"| {name} | {fmt(s['shape'])} | {fmt(s['colour'])} | {fmt(s['text_ra'])} | {fmt(s['text_rh'])} "
                     f"| {fmt(s['text_exact'])} | {s['edge_slope']:.1f} |")
    return "\n".join(lines)


def sample_grid(items: Sequence[SuiteItem], rows: Mapping[str, Mapping[str, np.ndarray]], n: int) -> np.ndarray:
    """uint8 grid: the first ``n`` English prompts, one line each, ``ROWS`` side by side."""
    from seedream_jax.eval.grid import image_grid
    n = min(n, len(items))
    pics = [rows[r]["en"][i] for i in range(n) for r in ROWS]
    captions = [f"{r}: {items[i].prompt('en')}" if r == ROWS[0] else r for i in range(n) for r in ROWS]
    size = pics[0].shape[0]
    return image_grid(pics, captions, columns=len(ROWS), scale=max(1, 256 // size), font_size=11)


def load(workdir: str, base: str = "pretrain", refiner: str = "refiner", *, raw: bool = False,
         refiner_steps: int = 0, refiner_guidance_scale: float = 0.0, refiner_strength: float = 0.0):
    """(base ``TextToImage``, its params, ``generate.Cascade`` of it and the refiner stage, the
    cascade's params {'base', 'refiner'}) of two stages of ``workdir`` (EMA weights unless ``raw``;
    the refiner's sampler as its stage recorded it, unless ``refiner_steps`` /
    ``refiner_guidance_scale`` / ``refiner_strength`` are > 0: ``stages/sample.with_refiner``).
    Cached per process, so that callers in one process share the pipelines' compiled programs."""
    return _load(workdir, base, refiner, bool(raw), int(refiner_steps), float(refiner_guidance_scale),
                 float(refiner_strength))


@functools.lru_cache(maxsize=2)
def _load(workdir: str, base: str, refiner: str, raw: bool, refiner_steps: int, refiner_guidance_scale: float,
          refiner_strength: float):
    from ml_collections import ConfigDict
    from seedream_jax import config_lib
    from seedream_jax.stages.sample import load_pipeline, with_refiner
    cfg = config_lib.base_config()  # only its model.attention_impl (this machine's default) is read
    section = ConfigDict(dict(refiner=refiner, refiner_steps=refiner_steps,
                              refiner_guidance_scale=refiner_guidance_scale, refiner_strength=refiner_strength,
                              use_ema=not raw))
    base_pipe, base_params = load_pipeline(cfg, workdir, base, use_ema=not raw)
    cascade, params = with_refiner(cfg, workdir, section, base_pipe, base_params)
    return base_pipe, base_params, cascade, params


def measure(base_pipe, base_params, cascade, params, items: Sequence[SuiteItem], *, size: int, num_steps: int,
            guidance_scale: float, seed: int, batch_size: int):
    """(rows of ``generate_rows``, scores of ``score_rows``) for ``items`` with the base drawing at
    ``size`` px (Euler, ``num_steps``, ``guidance_scale``, batch at offset k seeded ``seed + k``)."""
    from seedream_jax.eval.benchmark import ground_truth_generator
    from seedream_jax.stages.eval import pipeline_generator, vae_roundtrip_generator
    scale = cascade.refiner.scale
    out_size = scale * size
    base = pipeline_generator(base_pipe, base_params, batch_size=batch_size, height=size, width=size,
                              num_steps=num_steps, solver="euler", guidance_scale=guidance_scale, seed=seed)
    refine_fn = lambda images, prompts: refine_batches(cascade.refiner, params["refiner"], cascade.settings, images,
                                                       prompts, batch_size=batch_size, seed=seed)
    vae = vae_roundtrip_generator(base_pipe.vae_cfg, base_params["vae"], items, height=out_size, width=out_size,
                                  batch_size=batch_size)
    rows = generate_rows(items, base, refine_fn, ground_truth_generator(items, out_size, out_size), vae,
                         ground_truth_generator(items, size, size), scale)
    return rows, score_rows(items, rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--base", default="pretrain", help="the base stage (a name in --workdir or a path)")
    parser.add_argument("--refiner", default="refiner", help="the refiner stage (a name in --workdir or a path)")
    parser.add_argument("--per-group", type=int, default=0, help="items per (category, split) group; 0 = all")
    parser.add_argument("--suite-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="the base's size in px (the refiner multiplies it)")
    parser.add_argument("--num-steps", type=int, default=28)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--refiner-steps", type=int, default=0, help="0 = the refiner stage's recorded setting")
    parser.add_argument("--refiner-guidance-scale", type=float, default=0.0, help="0 = the recorded setting")
    parser.add_argument("--refiner-strength", type=float, default=0.0,
                        help="the refiner's img2img strength in (0, 1]; 0 = the recorded setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    parser.add_argument("--grid-items", type=int, default=8)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    loaded = load(args.workdir, args.base, args.refiner, raw=args.raw, refiner_steps=args.refiner_steps,
                  refiner_guidance_scale=args.refiner_guidance_scale, refiner_strength=args.refiner_strength)
    cascade = loaded[2]
    items = suite_items(args.per_group, args.suite_seed)
    rows, scores = measure(*loaded, items, size=args.size, num_steps=args.num_steps,
                           guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size)
    out_size = cascade.refiner.scale * args.size
    print(f"refiner quality: base {args.base} at {args.size} px ({args.num_steps} steps, guidance "
          f"{args.guidance_scale}) -> {out_size} px; refiner {args.refiner} ({cascade.settings}); "
          f"{len(items)} suite items x {len(LANGUAGES)} languages, seed {args.seed}, "
          f"{'raw' if args.raw else 'EMA'} weights; {time.perf_counter() - start:.0f}s")
    print(format_table(scores, out_size))
    if args.output:
        from PIL import Image
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "refiner_quality.json"), "w", encoding="utf-8") as f:
            json.dump({"rows": scores, "size": out_size, "items": [i.id for i in items],
                       "refiner_settings": dataclasses.asdict(cascade.settings), "config": vars(args)}, f, indent=2)
        Image.fromarray(sample_grid(items, rows, args.grid_items)).save(os.path.join(args.output, "grid.png"))
        print(f"wrote {args.output}/refiner_quality.json and grid.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
