"""Does a trained conditioner still tell prompts apart that differ in one attribute?

For pairs of prompts that differ in one word (an object's colour, its shape, its size, the
background; English and Chinese), prints the relative distance between the two prompts' context
tokens at the first token that differs (|a - b| / |a|) and between their pooled vectors, for the
conditioner of a pretrain checkpoint (EMA weights) and for a freshly initialised one. A distance
that shrinks with training means the jointly trained text encoder has folded that attribute away.

    python benchmarks/prompt_contrast.py --config configs/tiny.py --workdir runs/tiny
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

PAIRS = (
    ("colour", "a large red circle", "a large blue circle"),
    ("shape", "a large red circle", "a large red square"),
    ("size", "a large red circle", "a small red circle"),
    ("colour zh", "一个大的红色圆形", "一个大的蓝色圆形"),
    ("shape zh", "一个大的红色圆形", "一个大的红色正方形"),
    ("background", "On a beige background: a large red circle in the center.",
     "On a dark gray background: a large red circle in the center."),
)


def contrasts(pipe, params) -> dict:
    """{pair name: (token distance at the first differing token, pooled distance)}."""
    from seedream_jax.models.conditioner import tokenize_prompts

    prompts = [p for _, a, b in PAIRS for p in (a, b)]
    tokens = tokenize_prompts(prompts, pipe.tokenizer, pipe.conditioner_cfg)
    cond = pipe.encode(params, tokens)
    ctx, pooled, ids = np.asarray(cond["context"]), np.asarray(cond["pooled"]), np.asarray(tokens["llm_ids"])
    out = {}
    for k, (name, _, _) in enumerate(PAIRS):
        i, j = 2 * k, 2 * k + 1
        first = int(np.argmax(ids[i] != ids[j]))
        token = np.linalg.norm(ctx[i, first] - ctx[j, first]) / np.linalg.norm(ctx[i, first])
        out[name] = (float(token), float(np.linalg.norm(pooled[i] - pooled[j]) / np.linalg.norm(pooled[i])))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--checkpoint", default="pretrain")
    args = parser.parse_args(argv)
    from seedream_jax.config_lib import load_run_config
    from seedream_jax.models.conditioner import tokenize_prompts
    from seedream_jax.stages.sample import load_pipeline

    pipe, trained = load_pipeline(load_run_config(args.config), args.workdir, args.checkpoint, use_ema=True)
    one = {k: jnp.asarray(v[:1]) for k, v in tokenize_prompts(["a red circle"], pipe.tokenizer,
                                                              pipe.conditioner_cfg).items()}
    fresh = dict(trained, conditioner=pipe.conditioner.init(jax.random.PRNGKey(0), **one)["params"])
    rows = {"init": contrasts(pipe, fresh), "trained": contrasts(pipe, trained)}
    print(f"conditioner of {os.path.join(args.workdir, args.checkpoint)} (EMA) against a fresh init\n")
    print("| pair | token init | token trained | pooled init | pooled trained |\n|---|---|---|---|---|")
    for name, _, _ in PAIRS:
        (ti, pi), (tt, pt) = rows["init"][name], rows["trained"][name]
        print(f"| {name} | {ti:.2f} | {tt:.2f} | {pi:.2f} | {pt:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
