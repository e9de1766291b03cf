"""Does a DiT paint the attribute its prompt names? ``eval/text_use.attribute_gain`` of checkpoints.

For every suite scene and each kind (default colour, shape, position; any perturbation kind of
``data/world_pairs``, e.g. ``--kind text``: the quoted word replaced by another), the flow-matching
error with the caption of the same scene with that attribute changed minus the error with the true
caption, averaged over the latent cells where the two renderings differ (the object or word that
changed), at t = 0.4, 0.8 and 0.95, both languages, EMA weights. Prints one row per workdir and
checkpoint.

    python benchmarks/attribute_gain.py --config configs/tiny.py --workdir runs/a --workdir runs/b
    python benchmarks/attribute_gain.py --config configs/tiny_glyph.py --workdir runs/g \
        --checkpoint pretrain_random --checkpoint pretrain_aligned --kind text
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from seedream_jax.data import world_pairs  # noqa: E402

DEFAULT_KINDS = ("colour", "shape", "position")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", action="append", required=True, help="a run directory (repeatable)")
    parser.add_argument("--checkpoint", action="append", help="a stage dir of each workdir (repeatable; "
                        "default: pretrain)")
    parser.add_argument("--kind", action="append", choices=world_pairs.KINDS,
                        help=f"a perturbation kind (repeatable; default: {', '.join(DEFAULT_KINDS)})")
    args = parser.parse_args(argv)
    kinds = tuple(args.kind or DEFAULT_KINDS)
    from seedream_jax.config_lib import load_run_config
    from seedream_jax.eval.suite import build_suite
    from seedream_jax.eval.text_use import DEFAULT_TIMES, attribute_gain
    from seedream_jax.stages.sample import load_pipeline

    cfg = load_run_config(args.config)
    scenes = [item.scene for item in build_suite()]
    head = [f"{k} t={t:g}" for k in kinds for t in DEFAULT_TIMES]
    print("gain (matched error) over the changed object's latent cells\n")
    print("| run | checkpoint | " + " | ".join(head) + " |\n|---|---|" + "---|" * len(head))
    for workdir in args.workdir:
        for checkpoint in args.checkpoint or ["pretrain"]:
            pipe, params = load_pipeline(cfg, workdir, checkpoint, use_ema=True)
            gains = attribute_gain(pipe, params, scenes, int(cfg.model.resolution), kinds=kinds)
            cells = [gains[k][f"{t:.2f}"] for k in kinds for t in DEFAULT_TIMES]
            print(f"| {workdir} | {checkpoint} | " + " | ".join(f"{c['gain']:.4f} ({c['matched']:.3f})"
                                                               for c in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
