"""Does a learned reward track the objective check? Spearman correlation on an eval's own images.

For every image an eval stage wrote (``<eval dir>/images``, ``report.json``), its objective
correctness is the mean of its category scores (the eval's detectors: colour, shape, count,
position, relation, ...), and its reward is the learned model's score of (image, prompt). Prints
the Spearman rank correlation per eval directory and over their union (a reward that does not
rank the objectively right images above the wrong ones is not worth optimising); beside it the
mean of the correlations inside each category (how it ranks images of one kind of prompt), its
correlation with the graded objective check of the whole prompt (``objective_graded``: each
category scores only its own attribute, the reward judges every claim), and the graded check's
own correlation with the per-image correctness, which bounds what a judge of the whole prompt can
reach.

    python benchmarks/reward_agreement.py --reward runs/tiny/reward \
        --eval-dir runs/tiny/eval/pretrain_step900 --eval-dir runs/tiny/eval_vae/vae_step800

``--reward`` repeated scores with the mean of several alignment models (an ensemble).

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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import eval_rewards  # noqa: E402
import numpy as np  # noqa: E402


def eval_images(eval_dir: str):
    """(images uint8 [N, H, W, 3], prompts [N], correctness [N], categories [N]) of an eval directory."""
    images, prompts, _ = eval_rewards.eval_images(eval_dir)
    with open(os.path.join(eval_dir, "report.json"), encoding="utf-8") as f:
        rows = json.load(f)["images"]
    correct = [float(np.mean(list(r["scores"].values()))) if r["scores"] else 0.0 for r in rows]
    return images, prompts, np.array(correct), np.array([r["id"].split("/")[0] for r in rows])


def within_categories(reward, correct, categories) -> float:
    """The mean over the suite's categories of the Spearman correlation inside each (categories whose
    correctness is constant, such as a base that renders no word right, are left out): how well the
    reward ranks images of one kind of prompt, apart from how hard each kind is."""
    from seedream_jax.rewards.common import spearman
    rhos = [spearman(reward[categories == c], correct[categories == c]) for c in np.unique(categories)]
    return float(np.mean([r for r in rhos if np.isfinite(r)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward", action="append", required=True,
                        help="a reward stage directory (the alignment model); repeated: score with the mean of "
                             "the models' cosines, the sum an RLHF stage computes from several alignment rewards "
                             "loaded under their own names with equal weights")
    parser.add_argument("--eval-dir", action="append", required=True, help="an eval output directory (repeatable)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--generated-from", help="a pretrain stage directory: also rank its samples of held-out captions")
    parser.add_argument("--config", help="with --generated-from: the run's config file (its data.world)")
    parser.add_argument("--captions", type=int, default=128, help="with --generated-from: held-out captions")
    args = parser.parse_args(argv)
    if args.generated_from and not args.config:
        parser.error("--generated-from needs --config (the run's world gives the captions)")
    if args.generated_from and len(args.reward) > 1:
        parser.error("--generated-from ranks the samples with one --reward")
    from seedream_jax import rewards
    from seedream_jax.rewards.common import batched, spearman

    scorers = [rewards.load_alignment(path, name=f"alignment_{i}") for i, path in enumerate(args.reward)]
    scorer = lambda images, prompts: sum(s(images, prompts) for s in scorers) / len(scorers)  # noqa: E731
    rows, union = [], {"reward": [], "correct": [], "categories": [], "graded": []}
    for eval_dir in args.eval_dir:
        images, prompts, correct, categories = eval_images(eval_dir)
        index = np.arange(len(prompts))
        reward = batched(lambda idx: scorer(images[idx], [prompts[i] for i in idx]), index, args.batch_size)
        graded = np.asarray(rewards.score("objective_graded", images, prompts))
        rows.append((eval_dir, reward, correct, categories, graded))
        for key, value in zip(union, (reward, correct, categories, graded)):
            union[key].extend(value)
    if len(rows) > 1:
        rows.append(("union", *(np.array(v) for v in union.values())))
    which = " + ".join(args.reward) + (" (mean)" if len(scorers) > 1 else "")
    print(f"alignment reward {which} against the eval's per-image correctness (the mean of each image's "
          "category scores) and against the graded objective check of the whole prompt\n")
    print("| images | n | mean correctness | share with any credit | Spearman | within categories (mean) "
          "| Spearman with the graded objective | the graded objective's own Spearman |\n|---|---|---|---|---|---|---|---|")
    for name, reward, correct, categories, graded in rows:
        print(f"| {name} | {len(correct)} | {correct.mean():.3f} | {np.mean(correct > 0):.3f} | "
              f"{spearman(reward, correct):.3f} | {within_categories(reward, correct, categories):.3f} | "
              f"{spearman(reward, graded):.3f} | {spearman(graded, correct):.3f} |")
    if args.generated_from:
        print("\n" + generated_table(args, scorers[0]))  # one --reward: the parser refuses several
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
