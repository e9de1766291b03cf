"""Score the images of eval passes with reward models: did a fine-tune raise the rewards it did
not optimise (and the one it did)?

    python benchmarks/eval_rewards.py --eval-dir runs/a/eval/pretrain_step3000 \
        --eval-dir runs/a/eval/rlhf_step100 --reward objective \
        --reward aesthetic=runs/aes/aesthetic --reward alignment=runs/rw/reward

Each ``--eval-dir`` is an ``eval`` stage output (``report.json`` + ``images/``: the suite's
prompts, both languages, fixed seeds). Each ``--reward`` is a registered name (``objective``) or
``name=<reward stage dir>`` (an ``aesthetic``, ``reward`` or ``glyph_align`` stage, loaded under
that name). Prints one row per eval dir: the mean of each reward over all of its images, then
per language.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def load_reward(spec: str) -> str:
    """'name' (already registered) or 'name=<reward stage dir>' -> the registered name."""
    from seedream_jax import rewards
    name, _, stage_dir = spec.partition("=")
    if stage_dir:
        try:
            rewards.load_stage(stage_dir, name=name)
        except ValueError as e:
            raise SystemExit(f"--reward {spec}: {e}") from e
    rewards.get(name)
    return name


def eval_images(eval_dir: str):
    """(uint8 images [N, H, W, 3], prompts [N], languages [N]) of an eval pass."""
    with open(os.path.join(eval_dir, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    rows = report["images"]
    pics = [np.asarray(Image.open(os.path.join(eval_dir, "images", f"{r['id'].replace('/', '_')}_{r['language']}.png"))
                       .convert("RGB")) for r in rows]
    return np.stack(pics), [r["prompt"] for r in rows], [r["language"] for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-dir", action="append", required=True)
    parser.add_argument("--reward", action="append", required=True)
    args = parser.parse_args(argv)
    from seedream_jax import rewards
    names = [load_reward(spec) for spec in args.reward]
    header = ["eval dir"] + [f"{n} {part}" for n in names for part in ("all", "en", "zh")]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for eval_dir in args.eval_dir:
        images, prompts, languages = eval_images(eval_dir)
        lang = np.asarray(languages)
        cells = []
        for name in names:
            scores = np.asarray(rewards.score(name, images, prompts), np.float64)
            cells += [f"{scores.mean():.3f}"] + [f"{scores[lang == code].mean():.3f}" for code in ("en", "zh")]
        print(f"| {eval_dir} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
