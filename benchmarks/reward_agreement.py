"""Does a learned reward track the objective check? Spearman correlation on an eval's own images.

For every image an eval stage wrote (``<eval dir>/images``, ``report.json``), its objective
correctness is the mean of its category scores (the eval's detectors: colour, shape, count,
position, relation, ...), and its reward is the learned model's score of (image, prompt). Prints
the Spearman rank correlation per eval directory and over their union (a reward that does not
rank the objectively right images above the wrong ones is not worth optimising).

    python benchmarks/reward_agreement.py --reward runs/tiny/reward \
        --eval-dir runs/tiny/eval/pretrain_step900 --eval-dir runs/tiny/eval_vae/vae_step800

With ``--generated-from`` (a pretrain stage) and ``--config`` (the run's config, whose world gives
the captions) it also draws that model's samples of held-out world captions (``--captions`` x 4,
``stages/ranked_samples.py``, the reward stage's defaults) and prints the reward's accuracy on their
pairs and its Spearman correlation with the graded objective check, as the reward stage's
``generated`` table does:

    python benchmarks/reward_agreement.py --reward runs/tiny_long/reward --eval-dir runs/tiny_long/eval/pretrain_step7000 \
        --config configs/tiny_long.py --generated-from runs/tiny_long/pretrain
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def eval_images(eval_dir: str):
    """(images uint8 [N, H, W, 3], prompts [N], correctness [N]) of an eval directory."""
    report = json.load(open(os.path.join(eval_dir, "report.json"), encoding="utf-8"))
    images, prompts, correct = [], [], []
    for item in report["images"]:
        name = f"{item['id'].replace('/', '_')}_{item['language']}.png"
        images.append(np.asarray(Image.open(os.path.join(eval_dir, "images", name)).convert("RGB")))
        prompts.append(item["prompt"])
        correct.append(float(np.mean(list(item["scores"].values()))) if item["scores"] else 0.0)
    return np.stack(images), prompts, np.array(correct)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward", required=True, help="a reward stage directory (the alignment model)")
    parser.add_argument("--eval-dir", action="append", required=True, help="an eval output directory (repeatable)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--generated-from", help="a pretrain stage directory: also rank its samples of held-out captions")
    parser.add_argument("--config", help="with --generated-from: the run's config file (its data.world)")
    parser.add_argument("--captions", type=int, default=128, help="with --generated-from: held-out captions")
    args = parser.parse_args(argv)
    if args.generated_from and not args.config:
        parser.error("--generated-from needs --config (the run's world gives the captions)")
    from seedream_jax import rewards
    from seedream_jax.rewards.common import batched, spearman

    scorer = rewards.load_alignment(args.reward)
    rows, union = [], ([], [])
    for eval_dir in args.eval_dir:
        images, prompts, correct = eval_images(eval_dir)
        index = np.arange(len(prompts))
        reward = batched(lambda idx: scorer(images[idx], [prompts[i] for i in idx]), index, args.batch_size)
        rows.append((eval_dir, len(prompts), float(correct.mean()), float(np.mean(correct > 0)),
                     spearman(reward, correct)))
        union[0].extend(reward), union[1].extend(correct)
    rows.append(("union", len(union[1]), float(np.mean(union[1])), float(np.mean(np.array(union[1]) > 0)),
                 spearman(*union)))
    print(f"alignment reward {args.reward} against the eval's per-image correctness\n")
    print("| images | n | mean correctness | share with any credit | Spearman |\n|---|---|---|---|---|")
    for name, n, mean, share, rho in rows:
        print(f"| {name} | {n} | {mean:.3f} | {share:.3f} | {rho:.3f} |")
    if args.generated_from:
        print("\n" + generated_table(args, scorer))
    return 0


def generated_table(args, scorer) -> str:
    """The reward stage's ``generated`` table of ``scorer`` on ``--generated-from``'s held-out samples."""
    from seedream_jax import config_lib
    from seedream_jax.stages import reward as reward_stage
    cfg = config_lib.load_run_config(args.config)
    section = config_lib.reward_section()
    section.ranked.generated.update(source=os.path.abspath(args.generated_from), heldout_captions=args.captions)
    return reward_stage.generated_markdown(reward_stage.generated_agreement(cfg, section, "", scorer))


if __name__ == "__main__":
    sys.exit(main())
