"""Stage kind ``sample``: images for prompts from a trained checkpoint; PNGs plus a captioned grid.

A stage with the aesthetic adapter (ct, sft: its stage.json's MMDiT has ``style_tag_sizes``) takes
style tags: ``sample.style_tags`` ({attribute: value}, ``data/style_tags.py``, e.g.
``{'palette': 'pastel', 'lighting': 'warm'}``) for every prompt, and negative-tag guidance with
weight ``sample.negative_scale`` (0 = plain CFG) away from ``source = generated`` (the SFT stage's
negative tag; ``sampling/generate.py``).

``sample.refiner`` names a refiner stage (``stages/refiner.py``): the images then go through the
cascade (``sampling/generate.Cascade``: base at ``height`` x ``width``, then the refiner), so they are
``scale`` times that size; ``refiner_steps`` / ``refiner_guidance_scale`` / ``refiner_strength``
override the refiner's sampler (0 = the settings its stage.json recorded).

``sample.rewrite = True`` routes every prompt through the prompt rewriter of stage
``sample.rewriter`` (pe_sft / pe_pref, greedy) before drawing; the grid shows the rewrites and
prompts.txt lists image, prompt and rewrite.
"""
import dataclasses
import logging
import os

from PIL import Image

from seedream_jax import config_lib
from seedream_jax.checkpoint.stage_dir import open_stage
from seedream_jax.eval.grid import image_grid
from seedream_jax.sampling.generate import Cascade, Refiner, RefinerSettings, TextToImage
from seedream_jax.stages import common


def read_prompts(sample_cfg) -> list:
    """Prompts from ``sample.prompts`` and/or ``sample.prompts_file`` (one per line, '#' comments)."""
    prompts = [p for p in sample_cfg.prompts]
    if sample_cfg.prompts_file:
        if not os.path.exists(sample_cfg.prompts_file):
            raise FileNotFoundError(f"sample.prompts_file: {sample_cfg.prompts_file} does not exist")
        with open(sample_cfg.prompts_file, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ValueError("no prompts: set --config.sample.prompts='(\"a red circle\",)' or sample.prompts_file")
    return prompts


def grid_captions(prompts, labels) -> list:
    """Captions under the grid's images: ``[label] prompt`` where ``sample.prompt_labels`` gives a
    label (aligned with ``sample.prompts``), else the prompt."""
    labels = list(labels)
    if len(labels) > len(prompts):
        raise ValueError(f"sample.prompt_labels has {len(labels)} labels for {len(prompts)} prompts")
    labels += [""] * (len(prompts) - len(labels))
    return [f"[{label}] {p}" if label else p for p, label in zip(prompts, labels)]


def load_pipeline(cfg, workdir: str, checkpoint: str, use_ema: bool = True):
    """(TextToImage, params) of a stage directory (``checkpoint``: a name inside ``workdir`` or an
    absolute path), built from its ``stage.json`` alone; ``cfg`` only gives the attention kernels
    of this machine (``model.attention_impl``)."""
    stage = open_stage(common.resolve(workdir, checkpoint))
    pipe = stage_pipeline(stage, attention_impl=cfg.model.attention_impl)
    weights = "ema" if use_ema else "raw"
    logging.info("sample: loaded %s step %d (%s weights)", stage.directory, stage.step, weights)
    return pipe, stage.params(weights)


def stage_pipeline(stage, attention_impl=None) -> TextToImage:
    """The TextToImage pipeline an opened stage recorded (components, time shift, tokenizer)."""
    text_impl = config_lib.non_mmdit_attention_impl(attention_impl)
    _, conditioner_cfg = stage.component("conditioner")
    conditioner_cfg = dataclasses.replace(
        conditioner_cfg, text_encoder=dataclasses.replace(
            conditioner_cfg.text_encoder, llm=dataclasses.replace(conditioner_cfg.text_encoder.llm,
                                                                  attention_impl=text_impl)),
        byt5=conditioner_cfg.byt5 and dataclasses.replace(conditioner_cfg.byt5, attention_impl=text_impl))
    _, mmdit_cfg = stage.component("mmdit", attention_impl=attention_impl)
    _, vae_cfg = stage.component("vae", attention_impl=text_impl)
    shift = stage.meta["schedule"]
    return TextToImage(conditioner_cfg, mmdit_cfg, vae_cfg, common.stage_tokenizer(stage),
                       shift_base_tokens=int(shift["base_tokens"]), shift_max_tokens=int(shift["max_tokens"]),
                       shift_base=float(shift["base_shift"]), shift_max=float(shift["max_shift"]))


def with_refiner(cfg, workdir: str, section, pipe: TextToImage, params):
    """(pipe, params) as they are when ``section.refiner`` is empty; else the cascade of ``pipe`` and
    that refiner stage, ``Cascade`` and {'base': params, 'refiner': its weights (EMA when
    ``section.use_ema``)}, its sampler from the stage's recorded settings unless the section's
    ``refiner_steps`` / ``refiner_guidance_scale`` / ``refiner_strength`` are set (non-zero; a stage
    recorded before strength existed samples from noise, strength 1)."""
    name = section.get("refiner", "")
    if not name:
        return pipe, params
    stage = open_stage(common.resolve(workdir, name))
    if stage.kind != "refiner":
        raise ValueError(f"refiner = {name!r}: {stage.directory} is a {stage.kind!r} stage, not a refiner stage")
    recorded = stage.meta["settings"]
    refiner = Refiner(stage_pipeline(stage, attention_impl=cfg.model.attention_impl), scale=int(recorded["scale"]))
    settings = RefinerSettings(
        num_steps=int(section.get("refiner_steps", 0)) or int(recorded["num_steps"]), solver=str(recorded["solver"]),
        guidance_scale=float(section.get("refiner_guidance_scale", 0.0)) or float(recorded["guidance_scale"]),
        strength=float(section.get("refiner_strength", 0.0)) or float(recorded.get("strength", 1.0)))
    logging.info("cascade: refiner %s step %d, %s", stage.directory, stage.step, settings)
    return Cascade(pipe, refiner, settings), {"base": params, "refiner": stage.params("ema" if section.use_ema else "raw")}


def tag_settings(section) -> dict:
    """The ``TextToImage`` keywords of a sample/eval section's ``style_tags`` and ``negative_scale``
    (empty when it sets neither), the tags checked against the vocabulary."""
    from seedream_jax.data import style_tags as style_tags_lib

    names = section.get("style_tags", None)
    names = names.to_dict() if hasattr(names, "to_dict") else dict(names or {})
    scale = float(section.get("negative_scale", 0.0))
    out = {}
    if names:
        style_tags_lib.from_names(names)  # unknown names fail here
        out["style_tags"] = names
    if scale:
        out["negative_scale"] = scale
    return out


def tag_label(settings: dict) -> str:
    """'palette=pastel, negative 2.0' for a grid caption or a directory name ('' without tags)."""
    parts = [f"{k}={v}" for k, v in settings.get("style_tags", {}).items()]
    if settings.get("negative_scale"):
        parts.append(f"negative {settings['negative_scale']:g}")
    return ", ".join(parts)


def load_rewriter(workdir: str, section):
    """The prompt rewriter (``sampling/rewriter.Rewriter``) of stage ``section.rewriter`` when
    ``section.rewrite`` is set, else None."""
    if not section.get("rewrite", False):
        return None
    rewriter = common.open_rewriter(common.resolve(workdir, str(section.rewriter)))
    logging.info("prompts are rewritten by %s", section.rewriter)
    return rewriter


def run(cfg, stage_cfg, workdir: str, name: str = "sample") -> dict:
    s = stage_cfg
    prompts = read_prompts(s)
    rewriter = load_rewriter(workdir, s)
    drawn = rewriter(prompts) if rewriter is not None else prompts
    pipe, params = with_refiner(cfg, workdir, s, *load_pipeline(cfg, workdir, s.checkpoint, bool(s.use_ema)))
    tags = tag_settings(s)
    out_dir = common.resolve(workdir, s.output)
    os.makedirs(out_dir, exist_ok=True)
    images, paths = [], []
    for start in range(0, len(drawn), int(s.batch_size)):
        batch = drawn[start:start + int(s.batch_size)]
        pics = pipe(params, batch, height=int(s.height), width=int(s.width), num_steps=int(s.num_steps),
                    solver=s.solver, guidance_scale=float(s.guidance_scale), seed=int(s.seed) + start, **tags)
        for i, pic in enumerate(pics):
            path = os.path.join(out_dir, f"{start + i:04d}.png")
            Image.fromarray(pic).save(path)
            paths.append(path)
        images.extend(pics)
    grid_path = os.path.join(out_dir, "grid.png")
    scale = max(1, 256 // max(images[0].shape[:2]))
    captions = grid_captions(drawn, s.prompt_labels)
    if rewriter is not None:
        captions = [f"[rewritten] {c}" for c in captions]
    if tags:
        captions = [f"({tag_label(tags)}) {c}" for c in captions]
    Image.fromarray(image_grid(images, captions, columns=4, scale=scale)).save(grid_path)
    with open(os.path.join(out_dir, "prompts.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(f"{os.path.basename(p)}\t{q}" + (f"\t{d}" if rewriter is not None else "")
                          for p, q, d in zip(paths, prompts, drawn)) + "\n")
    return {"output_dir": out_dir, "grid": grid_path, "num_images": len(images),
            **({"style_tags": tag_label(tags)} if tags else {}),
            **({"refiner": s.refiner} if s.get("refiner", "") else {}),
            **({"rewriter": s.rewriter} if rewriter is not None else {})}
