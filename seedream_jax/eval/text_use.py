"""How much a DiT checkpoint uses its prompt: flow-matching error with the right captions versus
captions of other scenes and versus the empty prompt.

The objective eval scores finished images, so it reads 0 until a model draws whole objects. This
instrument reads a model earlier: on the suite's ground-truth scenes (rendered by the synthetic
world, captioned in both languages) it computes, at fixed times t and with the same noise for
every prompt set, the mean squared velocity error

    matched   with each scene's own caption,
    shuffled  with the captions rolled by ``roll`` scenes within the batch (same distribution of
              captions, wrong scene),
    empty     with the empty prompt (the unconditional branch of guidance),

and reports ``shuffled - matched`` (the *text gain*: what the specific prompt is worth; 0 for a
model that ignores its text) and ``empty - matched``. A freshly initialised adaLN-Zero MMDiT
outputs 0 for every prompt, so both gains are exactly 0 there.

The text gain is dominated by what fills most pixels (the background a long caption names).
``attribute_gain`` asks about one attribute at a time: each scene against the same scene with
its colour, shape or position changed (``data/world_pairs.perturb``), the error with the changed
caption minus the error with the true one, averaged only over the latent cells where the two
scenes' renderings differ (the object that changed), so a model that paints the prompted colour
where the object is scores above 0 and one that ignores colour words scores 0.
"""
import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.data import synthetic, world_pairs
from seedream_jax.eval.suite import LANGUAGES, SuiteItem
from seedream_jax.models.conditioner import tokenize_prompts
from seedream_jax.models.vae import scale_latents
from seedream_jax.sampling import schedules

DEFAULT_TIMES = (0.4, 0.8, 0.95)


def suite_batch(items: Sequence[SuiteItem], size: int):
    """(images float32 [2N, size, size, 3] in [-1, 1], captions [2N]): every item rendered once per
    language, with that language's caption."""
    images, captions = [], []
    for item in items:
        pixels = synthetic.render_scene(item.scene, size).astype(np.float32) / 127.5 - 1.0
        for lang in LANGUAGES:
            images.append(pixels)
            captions.append(item.prompt(lang))
    return np.stack(images), captions


def text_use(pipe, params, images: np.ndarray, captions: Sequence[str], *, times=DEFAULT_TIMES,
             roll: int = 7, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """{f"{t:.2f}": {"matched", "shuffled", "empty", "text_gain", "empty_gain"}} for a TextToImage
    ``pipe`` and its ``params`` (the VAE encodes ``images`` [B, H, W, 3] in [-1, 1] to the
    posterior mean). MSE per latent element, float32."""
    n = len(captions)
    if n < 2 or roll % n == 0:
        raise ValueError(f"need at least 2 captions and a roll that moves them (got {n} captions, roll {roll})")
    x0 = _encode_program(pipe)(params, jnp.asarray(images))
    eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape, jnp.float32)
    prompt_sets = {"matched": list(captions), "shuffled": [captions[(i + roll) % n] for i in range(n)],
                   "empty": [""] * n}
    tokens = {k: tokenize_prompts(v, pipe.tokenizer, pipe.conditioner_cfg) for k, v in prompt_sets.items()}
    mse = _mse_program(pipe)
    out = {}
    for t in times:
        row = {k: float(mse(params, tok, x0, eps, jnp.float32(t))) for k, tok in tokens.items()}
        row["text_gain"] = row["shuffled"] - row["matched"]
        row["empty_gain"] = row["empty"] - row["matched"]
        out[f"{float(t):.2f}"] = row
    return out


def attribute_gain(pipe, params, scenes: Sequence[synthetic.Scene], image_size: int, *,
                   kinds=("colour", "shape", "position"), times=DEFAULT_TIMES,
                   seed: int = 0) -> Dict[str, Dict[str, float]]:
    """{kind: {"pairs": n, f"{t:.2f}": {"matched", "gain"}}}: for each scene where ``kind`` applies, the squared
    velocity error with the perturbed scene's caption minus with the true caption (both languages,
    the caption type of ``world_pairs.EVAL_CAPTION``; same noise), averaged over the latent cells
    where the true and the perturbed renderings (at ``image_size`` px) differ; ``matched`` is the
    error with the true caption over the same cells."""
    size = int(image_size)
    rng = np.random.default_rng(seed)
    out = {}
    for kind in kinds:
        images, masks, true, wrong = [], [], [], []
        for scene in scenes:
            other = world_pairs.perturb(scene, kind, rng, allow_heldout=True)
            if other is None:
                continue
            a, b = synthetic.render_scene(scene, size), synthetic.render_scene(other, size)
            changed = np.any(np.abs(a.astype(np.int16) - b.astype(np.int16)) > 24, axis=-1)
            for lang in LANGUAGES:
                images.append(a.astype(np.float32) / 127.5 - 1.0)
                masks.append(changed)
                kind_caption = world_pairs.EVAL_CAPTION[kind]
                true.append(synthetic.captions(scene)[lang][kind_caption])
                wrong.append(synthetic.captions(other)[lang][kind_caption])
        if not images:
            out[kind] = {"pairs": 0}
            continue
        x0 = _encode_program(pipe)(params, jnp.asarray(np.stack(images)))
        f = size // x0.shape[1]
        cells = np.stack(masks).reshape(len(masks), x0.shape[1], f, x0.shape[2], f).any(axis=(2, 4))
        eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape, jnp.float32)
        tok_true, tok_wrong = (tokenize_prompts(c, pipe.tokenizer, pipe.conditioner_cfg) for c in (true, wrong))
        err = _error_map_program(pipe)
        row = {"pairs": len(true) // len(LANGUAGES)}
        for t in times:
            matched = np.asarray(err(params, tok_true, x0, eps, jnp.float32(t)))
            wrong_err = np.asarray(err(params, tok_wrong, x0, eps, jnp.float32(t)))
            row[f"{float(t):.2f}"] = {"matched": float(matched[cells].mean()),
                                      "gain": float((wrong_err - matched)[cells].mean())}
        out[kind] = row
    return out


@functools.lru_cache(maxsize=4)
def _encode_program(pipe):
    """params, images [B, H, W, 3] -> normalised posterior means [B, h, w, C] (one compile per pipe)."""
    def encode(params, images):
        mean, _ = pipe.vae.apply({"params": params["vae"]}, images, method=pipe.vae.encode)
        return scale_latents(mean, pipe.vae_cfg).astype(jnp.float32)

    return jax.jit(encode)


def _error_map(pipe, params, tokens, x0, eps, t):
    """Squared velocity error per latent cell [B, h, w] (mean over channels) at time t."""
    n = x0.shape[0]
    cond = pipe.encode_prompts(params, tokens)
    x_t = schedules.flow_interpolate(x0, eps, jnp.full((n,), t))
    v = pipe.velocity(params, x_t, jnp.full((n,), t), cond).astype(jnp.float32)
    return jnp.mean(jnp.square(v - schedules.velocity_target(x0, eps)), axis=-1)


@functools.lru_cache(maxsize=4)
def _mse_program(pipe):
    """params, prompt tokens, x0, eps, t -> mean squared velocity error (one compile per pipe and shape)."""
    return jax.jit(lambda params, tokens, x0, eps, t: jnp.mean(_error_map(pipe, params, tokens, x0, eps, t)))


@functools.lru_cache(maxsize=4)
def _error_map_program(pipe):
    """params, prompt tokens, x0, eps, t -> squared velocity error per latent cell [B, h, w]."""
    return jax.jit(functools.partial(_error_map, pipe))
