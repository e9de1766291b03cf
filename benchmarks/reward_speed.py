"""Images per second of each learned reward, at several image sizes (world images with a word).

    python benchmarks/reward_speed.py --alignment runs/tiny/reward --aesthetic runs/tiny/aesthetic \
        --glyph runs/tiny/glyph_align --sizes 64 256

Each scorer resizes its input to its own resolution (64 px for the tiny models), so larger inputs
add the antialiased resize. Batch of ``--batch`` images; compiled first, then 5 timed calls.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alignment", help="a reward stage directory")
    parser.add_argument("--aesthetic", help="an aesthetic stage directory")
    parser.add_argument("--glyph", help="a glyph_align stage directory")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    from seedream_jax import rewards
    from seedream_jax.data import glyph_pairs, synthetic
    from seedream_jax.rewards.common import images_per_second

    loaders = {"alignment": (args.alignment, rewards.load_alignment), "aesthetic": (args.aesthetic, rewards.load_aesthetic),
               "text_rendering": (args.glyph, rewards.load_glyph)}
    scorers = {name: load(path) for name, (path, load) in loaders.items() if path}
    if not scorers:
        parser.error("name at least one of --alignment, --aesthetic, --glyph")
    examples = glyph_pairs.heldout_examples(0, args.batch)
    prompts = [f'the text "{e.text}"' for e in examples]
    print("| reward | " + " | ".join(f"{s} px img/s" for s in args.sizes) + " |\n|---|" + "---|" * len(args.sizes))
    rows = {name: [] for name in scorers}
    for size in args.sizes:
        images = np.stack([synthetic.render_scene(e.scene, size) for e in examples])
        for name, scorer in scorers.items():
            rows[name].append(images_per_second(lambda: scorer(images, prompts), len(prompts)))
    for name, speeds in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in speeds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
