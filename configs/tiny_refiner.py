"""The tiny chain with the refiner: a second MMDiT taking the base's 64 px images to 128 px.

python -m seedream_jax.main --config configs/tiny_refiner.py --workdir runs/chain

configs/tiny_chain.py's stages (data, tokenizer, vae, eval_vae, pretrain, sample, eval_pretrain),
then: refiner (initialised from pretrain's DiT with the conditioning rows of its patch embedding at
zero; trained on the world's scenes rendered at 128 px against their 64 px degraded copies,
``stages/refiner.py``), sample_refined (the grid through the cascade, 128 px) and eval_refined (the
objective eval of the cascade's 128 px images, same prompts and seeds as eval_pretrain). A workdir
where the chain already ran resumes after its last finished stage.

Sized for a 2-core CPU: 1200 steps of batch 8 at 128 px on the world's first 256 scenes (37 epochs
of fixed pairs; the learning rate is constant, so a run resumed with more steps is one longer run);
at the start the VAE encodes every HR image and its upsampled LR copy once. Measured 2026-12-06 on
this 2-core machine: the first 400 steps 427 s beside another training job, the next 800 442 s
alone (2.66 steps/s). The cascade samples at strength 0.2 (``refiner.sample_strength``, recorded in
stage.json): it starts from the base image, upsampled, encoded and noised to the grid's time 4
steps before the end, rather than from pure noise. What it reaches: benchmarks/RESULTS.md (i).
"""
import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_chain  # noqa: E402


def add_refiner(c: ConfigDict) -> ConfigDict:
    """``c`` (a chain config) with the refiner stage, a cascade sample grid and the cascade's eval."""
    # strength 0.2: the last 4 of 20 steps, from the upsampled image's noised latent (RESULTS (i):
    # shape 0.875 -> 0.958 and text exact 0.329 -> 0.892 on perfect 64 px inputs against strength 1)
    c.refiner.update(dict(base="pretrain", hr_size=2 * c.model.resolution, max_records=256, num_eval_images=4,
                          sample_strength=0.2))
    c.refiner.train.update(dict(steps=1200, batch_size=8, log_every=25, checkpoint_every=200, eval_every=400))
    c.sample_refined = ConfigDict(dict(c.sample.to_dict(), kind="sample", refiner="refiner", output="samples_refined"))
    c.eval_refined = ConfigDict(dict(c.eval.to_dict(), kind="eval", checkpoint="pretrain", refiner="refiner"))
    c.stages = tuple(c.stages) + ("refiner", "sample_refined", "eval_refined")
    return c


def get_config():
    return add_refiner(tiny_chain.get_config())
