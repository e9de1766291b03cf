"""The benchmark harness: any ``generate(prompts) -> images`` callable in, scored report out.

``generate`` takes a list of prompts and returns uint8 [len(prompts), H, W, 3]; the noise of
image i must depend only on i (a fixed seed), so that an item's English and Chinese prompts,
at the same position of the two calls made here, share their noise and differ only in language.
The JAX pipeline adapter is ``eval.stage.pipeline_generator``; an exported PyTorch pipeline fits
the same contract. ``ground_truth_generator`` renders the suite's own specs (the scorer's
ceiling: 1.0 everywhere).

Outputs under ``out_dir``: report.json (metrics, consistency, headline, every image's scores
and detections), report.md, images/<kind>_<split>_<k>_<lang>.png, grids/<kind>.png (each
item's en and zh images side by side, the prompt and its scores under each).
"""
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from seedream_jax.data import ocr, synthetic
from seedream_jax.eval import report as report_lib
from seedream_jax.eval import scoring
from seedream_jax.eval.grid import image_grid
from seedream_jax.eval.suite import LANGUAGES, SuiteItem, suite_summary

GenerateFn = Callable[[Sequence[str]], np.ndarray]


def read_text_lines(image: np.ndarray) -> List[str]:
    """OCR lines of ``image`` (uint8 [H, W, 3]) in reading order (``data.ocr``)."""
    return [box.text for box in ocr.detect_text(image)]


def ground_truth_generator(items: Sequence[SuiteItem], height: int, width: int) -> GenerateFn:
    """A ``generate`` that renders each prompt's scene spec with ``synthetic.render_scene``
    (the first item's scene where two items share a prompt)."""
    scenes = {}
    for item in items:
        for lang in LANGUAGES:
            scenes.setdefault(item.prompt(lang), item.scene)

    def generate(prompts: Sequence[str]) -> np.ndarray:
        return np.stack([synthetic.render_scene(scenes[p], (height, width)) for p in prompts])
    return generate


def generate_suite(generate: GenerateFn, items: Sequence[SuiteItem]) -> Dict[str, np.ndarray]:
    """{language: uint8 [N, H, W, 3]}: one ``generate`` call per language over all items."""
    out = {}
    for lang in LANGUAGES:
        prompts = [item.prompt(lang) for item in items]
        images = np.asarray(generate(prompts))
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(prompts) or images.shape[-1] != 3:
            raise ValueError(f"generate returned {images.dtype} {images.shape} for {len(prompts)} prompts; "
                             "expected uint8 [N, H, W, 3]")
        out[lang] = images
    return out


def score_suite(items: Sequence[SuiteItem], images: Dict[str, np.ndarray],
                read_text: Optional[scoring.ReadText] = read_text_lines):
    """(per-image results, per-pair results) for the suite's generated images."""
    image_results, pair_results = [], []
    for i, item in enumerate(items):
        attrs = {}
        for lang in LANGUAGES:
            scored = scoring.score_image(item, images[lang][i], read_text)
            attrs[lang] = scored["attributes"]
            image_results.append({"id": item.id, "kind": item.kind, "split": item.split,
                                  "categories": list(item.categories), "language": lang,
                                  "prompt": item.prompt(lang), **scored})
        pair_results.append({"id": item.id, "split": item.split, "categories": list(item.categories),
                             "consistency": scoring.consistency(attrs["en"], attrs["zh"])})
    return image_results, pair_results


def _image_name(item: SuiteItem, lang: str) -> str:
    return f"{item.id.replace('/', '_')}_{lang}.png"


def _score_note(scores: Dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" if k in report_lib.TEXT_METRICS[:2] else f"{k}={'ok' if v else 'x'}"
                    for k, v in scores.items())


def write_images(out_dir: str, items: Sequence[SuiteItem], images: Dict[str, np.ndarray],
                 image_results: List[dict], scale: int) -> List[str]:
    """Each image as a PNG, and one grid per kind (en and zh of an item side by side, the prompt
    and its scores under each); returns the grid paths."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "grids"), exist_ok=True)
    results = {(r["id"], r["language"]): r for r in image_results}
    grids = []
    for kind in dict.fromkeys(item.kind for item in items):
        pics, captions = [], []
        for i, item in enumerate(items):
            if item.kind != kind:
                continue
            for lang in LANGUAGES:
                Image.fromarray(images[lang][i]).save(os.path.join(out_dir, "images", _image_name(item, lang)))
                r = results[(item.id, lang)]
                pics.append(images[lang][i])
                captions.append(f"[{item.split} {_score_note(r['scores'])}] {r['prompt']}")
        path = os.path.join(out_dir, "grids", f"{kind}.png")
        Image.fromarray(image_grid(pics, captions, columns=8, scale=scale, font_size=11,
                                   max_caption_lines=7)).save(path)
        grids.append(path)
    return grids


def run_benchmark(generate: GenerateFn, items: Sequence[SuiteItem], out_dir: str, *, source: str,
                  info: Optional[dict] = None, read_text: Optional[scoring.ReadText] = read_text_lines,
                  grid_scale: int = 3) -> dict:
    """Generate the suite's images with ``generate``, score them, write the outputs to ``out_dir``.

    Returns the report dict (report.json without its per-item lists) with 'timing' in seconds
    (generation, scoring, writing images and grids, total).
    """
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    images = generate_suite(generate, items)
    t1 = time.time()
    image_results, pair_results = score_suite(items, images, read_text)
    t2 = time.time()
    metrics = report_lib.aggregate(image_results)
    consistency = report_lib.aggregate_consistency(pair_results)
    n = len(items)
    report = {"source": source, "info": dict(info or {}, images=f"{2 * n} ({n} specs x en/zh), "
                                             f"{images['en'].shape[1]}x{images['en'].shape[2]} px"),
              "suite": suite_summary(list(items)), "metrics": metrics, "consistency": consistency,
              "headline": report_lib.headline(metrics, consistency)}
    report["grids"] = write_images(out_dir, items, images, image_results, grid_scale)
    t3 = time.time()
    report["timing"] = {"generate_s": round(t1 - t0, 1), "score_s": round(t2 - t1, 1),
                        "write_images_s": round(t3 - t2, 1), "total_s": round(t3 - t0, 1)}
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write(report_lib.markdown(report))
    full = dict(report, items=[item.to_dict() for item in items], images=image_results, pairs=pair_results)
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(full, f, indent=1, ensure_ascii=False)
    logging.info("eval %s: %d images generated in %.1fs, scored in %.1fs, images written in %.1fs; total %.1fs",
                 source, 2 * n, t1 - t0, t2 - t1, t3 - t2, t3 - t0)
    return report
