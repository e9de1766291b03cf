"""Export a training stage's checkpoint to HF transformers / diffusers folders (safetensors only).

A whole-pipeline export (the default for a pretrain-like stage) writes one folder:

    <out>/text_encoder  transformers Qwen2Model (--causal-lm: Qwen2ForCausalLM)
    <out>/byt5          transformers T5EncoderModel
    <out>/conditioner   the conditioner's own layers: conditioner.safetensors + config.json
    <out>/transformer   diffusers FluxTransformer2DModel
    <out>/vae           diffusers AutoencoderKL
    <out>/tokenizer     the LLM tokenizer files
    <out>/README.md, seedream_pipeline.json, seedream_torch.py (how to assemble them in PyTorch)
    <out>/refiner       with --refiner STAGE: the refiner's diffusers FluxTransformer2DModel

Weights are read from the Orbax checkpoint a chunk of tensors at a time and written tensor by
tensor, so host memory stays near one chunk (256 MiB) plus the largest tensor, whatever the
model size. The optimizer state is never read.

Examples:
    python tools/export_weights.py --config configs/tiny.py --workdir runs/tiny --out exports/tiny
    python tools/export_weights.py --config configs/tiny.py --workdir runs/tiny --out exports/tiny_bf16 \\
        --dtype bfloat16 --weights raw
    python tools/export_weights.py --size small --workdir runs/small --stage vae --components vae --out exports/vae
    # check the export: sample with JAX and with PyTorch (same noise, steps, guidance) and compare
    python tools/export_weights.py --config configs/tiny.py --workdir runs/tiny --out exports/tiny \\
        --verify 'a large red circle' --verify '黑色的文字“你好”'

A reward stage (stage.json kind ``reward``, ``aesthetic`` or ``glyph_align``; no --config needed, the
stage directory describes its model) exports to one folder (``interop/rewards_export.py``):

    <out>/text_encoder  alignment: transformers Qwen2Model (the text tower's LLM); <out>/tokenizer its tokenizer
    <out>/byt5          glyph: transformers T5EncoderModel
    <out>/<model>       alignment | aesthetic | glyph: the CNN image tower and heads (config.json + safetensors)
    <out>/README.md, seedream_reward.json, seedream_rewards_torch.py + seedream_torch.py (plain PyTorch)

    python tools/export_weights.py --workdir runs/tiny --stage reward --out exports/reward --verify
    python tools/export_weights.py --workdir runs/tiny --stage aesthetic --out exports/aesthetic --verify

--verify loads the export with the PyTorch pipeline of seedream_torch.py (the package's copy: no
code from the folder runs) strictly, as seedream_torch.py does for any user: a component whose
files miss a tensor, add one or change a shape is refused, naming the tensors. It then compares
the images pixel by pixel. Tolerance (--verify-tolerance): 1 uint8 level, the float32 rounding between XLA
and PyTorch; a bfloat16 / float16 export rounds the weights and needs a tolerance of its own. For a
reward stage, --verify (PROMPT optional) runs the JAX model and the exported PyTorch one on world
images (and the prompts given) and compares every output: tolerance 1e-5 max abs difference.

Exit status: 0 on success; 1 when the checkpoint cannot be exported, or --verify fails (the export
does not load, or the max pixel difference exceeds the tolerance: the message says by how much);
2 when --out is not empty (without --overwrite).

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import json
import logging
import os
import resource
import sys
import time

from seedream_jax import config_lib
from seedream_jax.interop import pipeline, rewards_export
from seedream_jax.interop.rewards_verify import REWARD_TOLERANCE
from seedream_jax.interop.verify import PIXEL_TOLERANCE

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' / '500MiB' / '1000000' -> bytes."""
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    if unit not in _SIZE_UNITS or not num:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected e.g. 5GB, 500MiB or a byte count")
    return int(float(num) * _SIZE_UNITS[unit])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--config", help="the run's config file (configs/<name>.py): it defines the model shapes "
                                        "(required unless --stage is a reward stage)")
    which.add_argument("--size", choices=["tiny", "small", "full"], help="a model size preset instead of a config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.adapter=transformer (repeatable)")
    p.add_argument("--workdir", required=True, help="the run directory (stage folders and the tokenizer live here)")
    p.add_argument("--stage", default="pretrain",
                   help="stage directory holding checkpoints/, relative to --workdir or absolute (default: pretrain)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--refiner", default=None,
                   help="a refiner stage (relative to --workdir or absolute) exported beside it as refiner/ "
                        "(seedream_torch.SeedreamPipeline.refine runs the cascade)")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema",
                   help="EMA parameters (default; stages trained without EMA fall back to raw) or raw parameters")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="stored dtype of every exported tensor (default float32)")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--components", nargs="+", choices=list(pipeline.COMPONENTS), default=None,
                   help="export only these (default: every component the checkpoint has)")
    p.add_argument("--causal-lm", action="store_true",
                   help="write the LLM as Qwen2ForCausalLM (LM head tied to the embedding unless --lm-head-from)")
    p.add_argument("--lm-head-from", default=None,
                   help="an HF Qwen2ForCausalLM folder whose lm_head.weight to include (untied LLMs)")
    p.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"),
                   help="shard HF weights above this size, with an index file (default 5GB)")
    p.add_argument("--verify", action="append", nargs="?", const="", default=[], metavar="PROMPT",
                   help="after exporting, sample PROMPT with JAX and with the exported PyTorch modules from the "
                        "same noise, print the max pixel difference and exit 1 beyond --verify-tolerance "
                        "(repeatable); a reward stage compares its outputs on world images (PROMPT optional)")
    p.add_argument("--verify-tolerance", type=float, default=None, metavar="TOL",
                   help=f"largest difference --verify accepts: max pixel difference in uint8 levels (default "
                        f"{PIXEL_TOLERANCE}: float32 rounding; a bfloat16 / float16 export needs its own), or for a "
                        f"reward stage max abs difference (default {REWARD_TOLERANCE:g})")
    p.add_argument("--verify-steps", type=int, default=None, help="sampling steps for --verify (default: config)")
    p.add_argument("--verify-guidance", type=float, default=None, help="guidance scale for --verify (default: config)")
    p.add_argument("--verify-seed", type=int, default=0)
    return p


def print_files(files: dict, out: str) -> None:
    """One line per exported part: its size and files (relative to ``out``)."""
    for part, paths in files.items():
        size = sum(os.path.getsize(f) for f in paths) / 2**20
        print(f"  {part:13s} {size:10.1f} MiB  " + ", ".join(os.path.relpath(f, out) for f in paths))


def verify_failed(args, failure: str) -> int:
    """Print a --verify failure (with a hint for rounded weights) and return the exit status 1."""
    hint = (f" ({args.dtype} weights are rounded: pass --verify-tolerance for this dtype)"
            if args.dtype != "float32" and args.verify_tolerance is None else "")
    print(f"error: --verify failed: {failure}{hint}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        print(f"error: --out {args.out} is not empty (pass --overwrite to write into it)", file=sys.stderr)
        return 2
    stage_dir = os.path.join(os.path.abspath(args.workdir), args.stage)  # an absolute --stage stays as it is
    if rewards_export.stage_kind(stage_dir) in rewards_export.REWARD_KINDS:
        return export_reward(args, stage_dir)
    if not (args.config or args.size):
        print("error: --config or --size is required to export a pipeline stage", file=sys.stderr)
        return 2
    prompts = [p for p in args.verify if p]
    if args.verify and not prompts:
        print("error: --verify needs a PROMPT for a pipeline stage", file=sys.stderr)
        return 2
    try:
        cfg = config_lib.load_run_config(args.config, args.size, args.set)
        t0 = time.time()
        result = pipeline.export_checkpoint(cfg, os.path.abspath(args.workdir), args.out, stage=args.stage,
                                            step=args.step, weights=args.weights, dtype=args.dtype,
                                            components=args.components, causal_lm=args.causal_lm,
                                            lm_head_from=args.lm_head_from, max_shard_bytes=args.max_shard_size,
                                            refiner=args.refiner)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.time() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"exported {result['stage_dir']} step {result['step']} ({'EMA' if result['used_ema'] else 'raw'} weights, "
          f"{args.dtype}) to {args.out} in {seconds:.1f}s; peak host memory (ru_maxrss) {peak_mib:.0f} MiB")
    print_files(result["files"], args.out)
    if prompts:
        from seedream_jax.interop.verify import compare_with_torch, tolerance_failure
        from seedream_jax.stages.sample import load_pipeline

        try:
            pipe, params = load_pipeline(cfg, os.path.abspath(args.workdir), args.stage, args.weights == "ema")
        except ValueError as e:  # CheckpointReadError: a damaged checkpoint, named with its file
            print(f"error: --verify: {e}", file=sys.stderr)
            return 1
        s = cfg.sample
        tolerance = PIXEL_TOLERANCE if args.verify_tolerance is None else args.verify_tolerance
        tolerance = int(tolerance) if float(tolerance).is_integer() else tolerance  # uint8 levels
        try:
            report = compare_with_torch(args.out, pipe, params, prompts, height=int(s.height),
                                        width=int(s.width), num_steps=args.verify_steps or int(s.num_steps),
                                        guidance_scale=float(s.guidance_scale if args.verify_guidance is None
                                                             else args.verify_guidance),
                                        seed=args.verify_seed)
        except (ValueError, OSError, AssertionError) as e:  # StrictLoadError is a ValueError
            print(f"error: --verify: the export does not load or run in PyTorch: {e}", file=sys.stderr)
            return 1
        print("verify (JAX TextToImage vs PyTorch from the export, same noise): " + json.dumps(
            {k: v for k, v in report.items() if not k.endswith("images")}))
        failure = tolerance_failure(report, tolerance)
        if failure:
            return verify_failed(args, failure)
        print(f"verify passed: max pixel difference {report['max_pixel_diff']} <= tolerance {tolerance}")
    return 0


_PIPELINE_ONLY = {"components": "--components", "causal_lm": "--causal-lm", "lm_head_from": "--lm-head-from",
                  "verify_steps": "--verify-steps", "verify_guidance": "--verify-guidance", "refiner": "--refiner"}


def export_reward(args, stage_dir: str) -> int:
    """Export (and with --verify check) a reward stage: ``rewards_export.export_reward``."""
    from seedream_jax.interop import rewards_verify

    given = [flag for name, flag in _PIPELINE_ONLY.items() if getattr(args, name) not in (None, False)]
    if given:
        print(f"error: {', '.join(given)} apply to a pipeline export, not to a reward stage", file=sys.stderr)
        return 1
    try:
        t0 = time.time()
        result = rewards_export.export_reward(stage_dir, args.out, step=args.step, weights=args.weights,
                                              dtype=args.dtype, max_shard_bytes=args.max_shard_size)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported the {result['model']} reward model of {result['stage_dir']} ({result['kind']} stage) step "
          f"{result['step']} ({'EMA' if result['used_ema'] else 'raw'} weights, {args.dtype}) to {args.out} in "
          f"{time.time() - t0:.1f}s")
    print_files(result["files"], args.out)
    if not args.verify:
        return 0
    tolerance = REWARD_TOLERANCE if args.verify_tolerance is None else args.verify_tolerance
    try:
        report = rewards_verify.compare_reward_with_torch(args.out, stage_dir, [p for p in args.verify if p],
                                                          step=result["step"], weights=args.weights,
                                                          seed=args.verify_seed)
    except (ValueError, OSError, AssertionError) as e:  # StrictLoadError is a ValueError
        print(f"error: --verify: the export does not load or run in PyTorch: {e}", file=sys.stderr)
        return 1
    print("verify (JAX vs PyTorch from the export, world inputs): " + json.dumps(report))
    failure = rewards_verify.tolerance_failure(report, tolerance)
    if failure:
        return verify_failed(args, failure)
    print(f"verify passed: max abs difference {report['max_abs_diff']:.2e} <= tolerance {tolerance:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
