"""Stage ``sample``: images for prompts from a trained checkpoint; PNGs plus a captioned grid."""
import logging
import os

from PIL import Image

from seedream_jax import config_lib
from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.eval.grid import image_grid
from seedream_jax.sampling.generate import TextToImage
from seedream_jax.training.partition import merge_params
from seedream_jax.training.stages import common
from seedream_jax.training.stages.vae import load_fitted_config


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
    """(TextToImage, params) from a stage directory's latest checkpoint."""
    stage_dir = common.resolve(workdir, checkpoint)
    state, step = restore_raw_state(stage_dir)
    source = state["ema_params"] if use_ema and state.get("ema_params") else state["params"]
    params = merge_params(source, state.get("frozen") or {})
    conditioner_cfg, mmdit_cfg, vae_cfg = config_lib.build_model_configs(cfg.model)
    if os.path.exists(os.path.join(stage_dir, common.VAE_CONFIG_FILE)):
        vae_cfg = load_fitted_config(stage_dir)
    p = cfg.pretrain
    pipe = TextToImage(conditioner_cfg, mmdit_cfg, vae_cfg, common.load_tokenizer(cfg, workdir),
                       shift_base_tokens=int(p.shift_base_tokens), shift_max_tokens=int(p.shift_max_tokens),
                       shift_base=float(p.shift_base), shift_max=float(p.shift_max))
    logging.info("sample: loaded %s step %d (%s weights)", stage_dir, step, "EMA" if use_ema else "raw")
    return pipe, params


def run(cfg, workdir: str) -> dict:
    s = cfg.sample
    prompts = read_prompts(s)
    pipe, params = load_pipeline(cfg, workdir, s.checkpoint, bool(s.use_ema))
    out_dir = common.resolve(workdir, s.output)
    os.makedirs(out_dir, exist_ok=True)
    images, paths = [], []
    for start in range(0, len(prompts), int(s.batch_size)):
        batch = prompts[start:start + int(s.batch_size)]
        pics = pipe(params, batch, height=int(s.height), width=int(s.width), num_steps=int(s.num_steps),
                    solver=s.solver, guidance_scale=float(s.guidance_scale), seed=int(s.seed) + start)
        for i, pic in enumerate(pics):
            path = os.path.join(out_dir, f"{start + i:04d}.png")
            Image.fromarray(pic).save(path)
            paths.append(path)
        images.extend(pics)
    grid_path = os.path.join(out_dir, "grid.png")
    scale = max(1, 256 // max(int(s.height), int(s.width)))
    Image.fromarray(image_grid(images, grid_captions(prompts, s.prompt_labels), columns=4, scale=scale)).save(grid_path)
    with open(os.path.join(out_dir, "prompts.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(f"{os.path.basename(p)}\t{q}" for p, q in zip(paths, prompts)) + "\n")
    return {"output_dir": out_dir, "grid": grid_path, "num_images": len(images)}
