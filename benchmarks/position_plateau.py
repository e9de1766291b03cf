"""How many steps does a fresh MMDiT need before it reads position words, and from which context?

The tiny base learns colour but not position (benchmarks/RESULTS.md (d6), (d7)). This benchmark
separates the DiT from the text encoder. It builds a world of single objects on the 3x3 grid with
long captions (English or Chinese, "... a large red circle at the top left."), encodes the images
with a pretrain checkpoint's VAE and the captions with its conditioner (EMA weights), both fixed,
and trains a freshly initialised MMDiT of the checkpoint's shape on them (flow matching, AdamW
1e-3, batch 16, logit-normal times with configs/tiny.py's mean 0.8) with one of three contexts:

    conditioner  the checkpoint's context tokens and pooled vector, as the pretrain stage feeds them;
    tokens       a fixed random vector per token id (no text encoder; the same tokenisation);
    oracle       the conditioner's tokens with token 0 replaced by a fixed random code of the
                 object's cell (the position as one clean token).

Every ``--every`` steps it prints the *position gain* on 64 held-out scenes: at t = 0.95 and 0.8,
the squared velocity error with the caption of the same scene at another cell minus the error
with the true caption, over the object's latent cells, relative to the latter (0 = position words
ignored; same noise for both captions).

    python benchmarks/position_plateau.py --checkpoint runs/tiny/pretrain --context oracle --steps 1400
"""
import argparse
import ast
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

CONTEXTS = ("conditioner", "tokens", "oracle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "white")
TIMES = (0.95, 0.8)


def single_object_world(rng: np.random.Generator, n: int):
    """n scenes of one object each (random background, shape, colour, size and cell) and a language each."""
    from seedream_jax.data import synthetic as S
    scenes = [S.Scene(str(rng.choice(list(S.BACKGROUNDS))),
                      [S.ShapeObject(str(rng.choice(list(S.SHAPES))), str(rng.choice(COLOURS)),
                                     str(rng.choice(list(S.SIZES))), str(rng.choice(list(S.POSITIONS))))])
              for _ in range(n)]
    return scenes, rng.choice(["en", "zh"], n)


def moved(scene, rng: np.random.Generator):
    """The same scene with its object in another cell."""
    from seedream_jax.data import synthetic as S
    cells = list(S.POSITIONS)
    o = scene.objects[0]
    other = cells[(cells.index(o.position) + 1 + int(rng.integers(8))) % 9]
    return S.Scene(scene.background, [S.ShapeObject(o.shape, o.colour, o.size, other)])


def contexts(pipe, params, scenes, langs, mode: str):
    """(context [N, L, D], mask [N, L], pooled [N, D]) numpy arrays of the long captions in ``mode``."""
    from seedream_jax.data import synthetic as S
    from seedream_jax.models.conditioner import tokenize_prompts
    tokens = tokenize_prompts([S.captions(s)[l]["long"] for s, l in zip(scenes, langs)], pipe.tokenizer,
                              pipe.conditioner_cfg)
    cond = jax.jit(pipe.encode_prompts)(params, tokens)
    ctx, mask, pooled = (np.array(cond[k], np.float32) for k in ("context", "mask", "pooled"))
    mask = mask.astype(bool)
    width = ctx.shape[-1]
    if mode == "tokens":
        table = np.random.default_rng(7).normal(size=(pipe.conditioner_cfg.text_encoder.llm.vocab_size, width))
        ids, keep = tokens["llm_ids"], tokens["llm_mask"]
        ctx[:] = 0
        ctx[:, :ids.shape[1]] = table[ids] * keep[..., None]
        pooled = (ctx * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    elif mode == "oracle":
        codes = np.random.default_rng(5).normal(size=(9, width))
        ctx[:, 0] = codes[[list(S.POSITIONS).index(s.objects[0].position) for s in scenes]]
    elif mode != "conditioner":
        raise ValueError(f"context {mode!r} is not one of {CONTEXTS}")
    return ctx.astype(np.float32), mask, pooled.astype(np.float32)


def prepare(pipe, params, mode: str, *, scenes: int, held_out: int = 64, size: int = 64, seed: int = 0) -> dict:
    """The benchmark's data: scaled VAE latents [N, h, w, C] of ``scenes`` + ``held_out`` single-object
    scenes rendered at ``size`` px, their contexts in ``mode``, the held-out scenes' contexts with the
    object moved to another cell (``wrong``) and the latent cells where the two renderings differ."""
    from seedream_jax.data import synthetic as S
    from seedream_jax.models.vae import scale_latents
    rng = np.random.default_rng(seed)
    world, langs = single_object_world(rng, scenes + held_out)
    other = [moved(s, rng) for s in world[scenes:]]
    encode = jax.jit(lambda x: scale_latents(pipe.vae.apply({"params": params["vae"]}, x, method=pipe.vae.encode)[0],
                                             pipe.vae_cfg))

    def latents_of(group):
        pixels = np.stack([S.render_scene(s, size) for s in group]).astype(np.float32) / 127.5 - 1.0
        return np.concatenate([np.asarray(encode(pixels[i:i + 128])) for i in range(0, len(pixels), 128)])

    latents = latents_of(world)
    diff = np.abs(latents[scenes:] - latents_of(other)).max(-1)
    cells = diff > 0.5 * diff.max(axis=(1, 2), keepdims=True)
    return {"latents": latents, "context": contexts(pipe, params, world, langs, mode), "train": scenes,
            "wrong": contexts(pipe, params, other, langs[scenes:], mode), "cells": cells,
            "mu": pipe.mu(size, size)}


def plateau(mmdit_cfg, data: dict, *, steps: int, every: int, time_mean: float = 0.8, batch: int = 16,
            seed: int = 0):
    """Yields (step, [position gain at each of TIMES], last training loss) every ``every`` steps of
    training a fresh ``MMDiT(mmdit_cfg)`` on ``data`` (``prepare``)."""
    from seedream_jax.models.mmdit import MMDiT
    from seedream_jax.training.losses import flow_matching_loss
    model = MMDiT(mmdit_cfg)
    latents, (ctx, mask, pooled), n = data["latents"], data["context"], data["train"]
    x0_test, cells = latents[n:], data["cells"]
    dit = model.init(jax.random.PRNGKey(seed + 1), latents[:2], jnp.ones((2,)), ctx[:2], mask[:2],
                     pooled[:2])["params"]
    opt = optax.adamw(1e-3, b2=0.99, weight_decay=0.01)
    opt_state = opt.init(dit)

    @jax.jit
    def step(dit, opt_state, key, x0, c, m, pl):
        def loss(p):
            v = lambda x, t: model.apply({"params": p}, x, t, c, m, pl)
            return flow_matching_loss(v, x0, key, mu=data["mu"], time_mean=time_mean)[0]
        value, grads = jax.value_and_grad(loss)(dit)
        updates, opt_state = opt.update(grads, opt_state, dit)
        return optax.apply_updates(dit, updates), opt_state, value

    @jax.jit
    def error_map(dit, c, m, pl, t, eps):
        v = model.apply({"params": dit}, (1 - t) * x0_test + t * eps, jnp.full((len(x0_test),), t), c, m, pl)
        return jnp.mean(jnp.square(v - (eps - x0_test)), axis=-1)

    def gains(dit):
        eps = jax.random.normal(jax.random.PRNGKey(3), x0_test.shape)
        out = []
        for t in TIMES:
            true = np.asarray(error_map(dit, ctx[n:], mask[n:], pooled[n:], t, eps))
            other = np.asarray(error_map(dit, *data["wrong"], t, eps))
            out.append(float((other - true)[cells].mean() / true[cells].mean()))
        return out

    rng = np.random.default_rng(seed)
    key, loss = jax.random.PRNGKey(seed + 2), float("nan")
    for i in range(steps + 1):
        if i % every == 0:
            yield i, gains(dit), loss
        if i < steps:
            key, k = jax.random.split(key)
            idx = rng.integers(0, n, batch)
            dit, opt_state, loss = step(dit, opt_state, k, latents[idx], ctx[idx], mask[idx], pooled[idx])
            loss = float(loss)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a pretrain stage directory (its VAE and conditioner)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: its latest)")
    parser.add_argument("--context", choices=CONTEXTS, default="conditioner")
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--scenes", type=int, default=1024, help="training scenes (64 more are held out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mmdit", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the checkpoint's MMDiTConfig for the fresh DiT (repeatable), "
                             "e.g. num_heads=8; values are Python literals")
    parser.add_argument("--time-mean", type=float, default=0.8, help="logit-normal mean of the training times "
                        "(configs/tiny.py's pretrain.time_mean)")
    args = parser.parse_args(argv)
    from seedream_jax.checkpoint.stage_dir import open_stage
    from seedream_jax.stages.sample import stage_pipeline

    stage = open_stage(args.checkpoint, args.step)
    pipe, params = stage_pipeline(stage), stage.params("ema")
    data = prepare(pipe, params, args.context, scenes=args.scenes, seed=args.seed)
    overrides = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.mmdit)}
    print(f"fresh MMDiT ({', '.join(args.mmdit) or 'the checkpoint shape'}) on {args.scenes} single-object "
          f"scenes, context '{args.context}' from {args.checkpoint} step {stage.step}\n")
    print("| step | " + " | ".join(f"position gain t={t}" for t in TIMES) + " | loss | s |")
    print("|---|" + "---|" * (len(TIMES) + 2))
    start = time.time()
    for i, gains, loss in plateau(dataclasses.replace(pipe.mmdit_cfg, **overrides), data, steps=args.steps,
                                  every=args.every, time_mean=args.time_mean, seed=args.seed):
        print(f"| {i} | " + " | ".join(f"{g:.3f}" for g in gains) + f" | {loss:.4f} | {time.time() - start:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
