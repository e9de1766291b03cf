"""Stage kind ``eval``: the objective bilingual benchmark on a checkpoint of any stage.

``eval.checkpoint`` names a stage directory inside the workdir ('pretrain', 'sft', ...) or an
absolute path to another run's stage. A checkpoint with an MMDiT is evaluated as a text-to-image
pipeline (the compiled sampler generates the suite); a VAE-only checkpoint (the 'vae' stage)
is evaluated on the suite's ground-truth renderings passed through it (encode, posterior mean,
decode): the ceiling of every pipeline that decodes with that VAE. 'ground_truth' scores the
synthetic renderer itself (1.0 everywhere: the scorer's check).

A checkpoint with the aesthetic adapter (ct, sft) is sampled with ``eval.style_tags``
({attribute: value}, every prompt) and negative-tag guidance ``eval.negative_scale`` when set
(``stages/sample.tag_settings``); the report directory's name then ends with them.

Writes ``<workdir>/<eval.output>/<name>_step<step>/`` (report.json, report.md, images/, grids/)
and TensorBoard scalars and grids under ``<workdir>/<eval.output>/tensorboard/<name>/`` at the
checkpoint's step, so that checkpoints and stages overlay in one TensorBoard.
"""
import json
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np
from PIL import Image

from seedream_jax import config_lib
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.data import heldout
from seedream_jax.eval import benchmark
from seedream_jax.eval import report as report_lib
from seedream_jax.eval.suite import SuiteItem, build_suite
from seedream_jax.models.vae import AutoencoderKL
from seedream_jax.stages import common
from seedream_jax.stages.sample import load_pipeline, tag_label, tag_settings
from seedream_jax.training.writers import MetricWriter

GROUND_TRUTH = "ground_truth"


def pipeline_generator(pipe, params, *, batch_size: int, height: int, width: int, num_steps: int, solver: str,
                       guidance_scale: float, seed: int, **tags) -> benchmark.GenerateFn:
    """``generate(prompts)`` over a ``TextToImage`` pipeline: batches of ``batch_size`` (the last
    padded, so one program is compiled), batch at offset k drawn with seed ``seed + k``, so the
    noise of image i depends only on i. ``tags``: ``style_tags`` / ``negative_scale`` for every batch."""
    def generate(prompts: Sequence[str]) -> np.ndarray:
        out, t0 = [], time.time()
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start:start + batch_size])
            padded = batch + [batch[-1]] * (batch_size - len(batch))
            pics = pipe(params, padded, height=height, width=width, num_steps=num_steps, solver=solver,
                        guidance_scale=guidance_scale, seed=seed + start, **tags)
            out.append(pics[:len(batch)])
            done = start + len(batch)
            rate = done / max(time.time() - t0, 1e-9)
            logging.info("eval: generated %d/%d images (%.2f img/s, ETA %.0fs)", done, len(prompts), rate,
                         (len(prompts) - done) / rate)
        return np.concatenate(out)
    return generate


def select_items(items: Sequence[SuiteItem], per_group: int) -> list:
    """The first ``per_group`` items of each (categories, split) group; all when ``per_group`` <= 0."""
    if per_group <= 0:
        return list(items)
    seen, out = {}, []
    for item in items:
        key = (item.categories, item.split)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= per_group:
            out.append(item)
    return out


def roundtrip_function(vae_cfg):
    """jitted (params, images [B, H, W, 3] in [-1, 1]) -> decoded posterior means, same shape."""
    model = AutoencoderKL(vae_cfg)

    @jax.jit
    def roundtrip(params, x):
        mean, _ = model.apply({"params": params}, x, method=model.encode)
        return model.apply({"params": params}, mean, method=model.decode)

    return roundtrip


def vae_roundtrip_generator(vae_cfg, vae_params, items: Sequence[SuiteItem], *, height: int, width: int,
                            batch_size: int) -> benchmark.GenerateFn:
    """``generate(prompts)``: each prompt's ground-truth rendering encoded by the VAE and decoded
    from the posterior mean (uint8 [N, height, width, 3]), in batches of ``batch_size``."""
    roundtrip = roundtrip_function(vae_cfg)
    render = benchmark.ground_truth_generator(items, height, width)

    def generate(prompts: Sequence[str]) -> np.ndarray:
        images = render(prompts)
        pad = -len(images) % batch_size  # one compiled shape
        padded = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        out = [common.images_from_model(roundtrip(vae_params, common.images_to_model(padded[i:i + batch_size])))
               for i in range(0, len(padded), batch_size)]
        return np.concatenate(out)[:len(images)]
    return generate


def _heldout_in_training(cfg, workdir: str) -> str:
    """How many records of the workdir's synthetic dataset show a held-out pair (the split is
    only held out when that is 0)."""
    path = os.path.join(common.resolve(workdir, cfg.data.dir), "records.jsonl")
    if not os.path.exists(path):
        return f"unknown ({path} not found)"
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return f"{heldout.count_heldout(records)} of {len(records)} records of {path}"


def _generator(cfg, e, workdir: str, items: Sequence[SuiteItem]):
    """(name, step, source description, generate, info) for ``e.checkpoint`` (``e``: the eval section)."""
    height, width = int(e.height), int(e.width)
    if e.checkpoint == GROUND_TRUTH:
        return (GROUND_TRUTH, 0, "ground truth (synthetic.render_scene of the suite's specs)",
                benchmark.ground_truth_generator(items, height, width), {})
    stage = open_stage(common.resolve(workdir, e.checkpoint))
    stage_dir, step = stage.directory, stage.step
    name = os.path.basename(os.path.normpath(stage_dir))
    weights = "EMA" if e.use_ema and stage.has_ema() else "raw"
    if not stage.has_component("mmdit"):
        if not stage.has_component("vae"):
            raise ValueError(f"eval.checkpoint {stage_dir}: neither an MMDiT nor a VAE in it "
                             f"(found {sorted(stage.meta['components'])})")
        vae_params = stage.params("ema" if e.use_ema else "raw")["vae"]
        vae_cfg = stage.component("vae", attention_impl=config_lib.non_mmdit_attention_impl(cfg.model.attention_impl))[1]
        source = f"{stage_dir} step {step}: VAE round trip of the ground truth ({weights} weights)"
        return name, step, source, vae_roundtrip_generator(vae_cfg, vae_params, items, height=height, width=width,
                                                           batch_size=int(e.batch_size)), {}
    pipe, params = load_pipeline(cfg, workdir, e.checkpoint, bool(e.use_ema))
    tags = tag_settings(e)
    generate = pipeline_generator(pipe, params, batch_size=int(e.batch_size), height=height, width=width,
                                  num_steps=int(e.num_steps), solver=str(e.solver),
                                  guidance_scale=float(e.guidance_scale), seed=int(e.seed), **tags)
    info = {"sampler": f"{e.solver}, {e.num_steps} steps, guidance {e.guidance_scale}, seed {e.seed}",
            "training records with a held-out pair": _heldout_in_training(cfg, workdir)}
    if tags:
        info["style tags"] = tag_label(tags)
        name = name + "_" + "_".join(tag_label(tags).replace("=", "-").replace(", ", "_").split())
    return name, step, f"{stage_dir} step {step} ({weights} weights)", generate, info


def run(cfg, stage_cfg, workdir: str, name: str = "eval") -> dict:
    e = stage_cfg
    items = select_items(build_suite(int(e.suite_seed)), int(e.max_items_per_group))
    name, step, source, generate, info = _generator(cfg, e, workdir, items)
    out_root = common.resolve(workdir, e.output)
    out_dir = os.path.join(out_root, f"{name}_step{step}")
    t0 = time.time()
    report = benchmark.run_benchmark(generate, items, out_dir, source=source, info=info)
    writer = MetricWriter(os.path.join(out_root, "tensorboard", name), prefix="eval ")
    writer.write_scalars(step, report_lib.scalars(report))
    writer.write_images(step, {f"eval/grid/{os.path.basename(p)[:-4]}": np.asarray(Image.open(p).convert("RGB"))
                               for p in report["grids"]})
    writer.close()
    wall = time.time() - t0
    print(f"eval pass on {source}: {2 * len(items)} images in {wall:.1f}s "
          f"(generate {report['timing']['generate_s']}s, score {report['timing']['score_s']}s); "
          f"report {os.path.join(out_dir, 'report.md')}", flush=True)
    return {"eval_dir": out_dir, "report": os.path.join(out_dir, "report.md"), "evaluated": name, "step": step,
            "eval_pass_seconds": round(wall, 1), **{k: v for k, v in report["headline"].items()},
            "category_accuracy": report_lib.category_accuracy(report["metrics"])}
