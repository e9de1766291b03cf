"""Check an exported pipeline against the JAX one: same prompts, same noise, same steps and guidance.

JAX side: ``sampling.generate.TextToImage`` (the compiled sampler). PyTorch side:
``interop.torch_pipeline.SeedreamPipeline`` over the exported folder (transformers / diffusers
modules plus the conditioner layers in torch, a plain Euler loop), fed the JAX sampler's initial
noise. The package's own ``torch_pipeline`` module is used, never the folder's copy, so verifying
a folder runs no code from it; it loads every component strictly (a missing, unexpected or
mis-shaped tensor raises ``torch_pipeline.StrictLoadError`` naming it).

Tolerance: a float32 export samples the same images as JAX up to float32 rounding, at most
``PIXEL_TOLERANCE`` (1) uint8 level apart; ``tolerance_failure`` says by how much a report exceeds
a tolerance. A bfloat16 / float16 export rounds the weights, so its samples differ more: pass it a
tolerance of its own.
"""
from typing import Optional, Sequence

import jax
import numpy as np

PIXEL_TOLERANCE = 1  # uint8 levels: float32 rounding between XLA and PyTorch


def tolerance_failure(report: dict, tolerance: int = PIXEL_TOLERANCE) -> Optional[str]:
    """None if ``report['max_pixel_diff'] <= tolerance``, else a sentence saying by how much it is exceeded."""
    diff = int(report["max_pixel_diff"])
    if diff <= tolerance:
        return None
    return (f"max pixel difference {diff} (uint8 levels, mean {report['mean_pixel_diff']:.3g}) exceeds the "
            f"tolerance {tolerance} by {diff - tolerance}")


def compare_with_torch(export_dir: str, pipe, params, prompts: Sequence[str], *, height: int, width: int,
                       num_steps: int, guidance_scale: float, seed: int = 0) -> dict:
    """Sample ``prompts`` with ``pipe`` (a ``TextToImage``) and with the export; returns
    {'max_pixel_diff' (int, uint8 levels), 'mean_pixel_diff', 'max_context_diff' (conditioner
    tokens), 'max_pooled_diff', 'max_abs_context' (their scale), 'jax_images', 'torch_images'}
    (images uint8 [B, H, W, 3])."""
    import torch

    from seedream_jax.interop.torch_pipeline import SeedreamPipeline
    from seedream_jax.models.conditioner import tokenize_prompts
    from seedream_jax.sampling import sampler as sampler_lib

    prompts = list(prompts)
    torch_pipe = SeedreamPipeline.from_pretrained(export_dir, torch_dtype=torch.float32)  # strict: fails first
    jax_images = pipe(params, prompts, height=height, width=width, num_steps=num_steps,
                      guidance_scale=guidance_scale, seed=seed)
    noise = np.asarray(sampler_lib.initial_noise(jax.random.PRNGKey(seed), len(prompts),
                                                 pipe.latent_shape(height, width)))
    torch_images = torch_pipe(prompts, height=height, width=width, num_steps=num_steps,
                              guidance_scale=guidance_scale, noise=noise)
    # The conditioner alone (text inputs built independently on each side).
    cond = jax.jit(pipe.encode)(params, tokenize_prompts(prompts + [""], pipe.tokenizer, pipe.conditioner_cfg))
    t_ctx, t_mask, t_pooled = torch_pipe.encode(torch_pipe.text_inputs(prompts + [""]))
    if not np.array_equal(np.asarray(cond["mask"]), t_mask.numpy()):
        raise AssertionError("the exported pipeline's text masks differ from the JAX ones (tokenizer mismatch)")
    diff = np.abs(jax_images.astype(np.int16) - torch_images.astype(np.int16))
    return {"max_pixel_diff": int(diff.max()), "mean_pixel_diff": float(diff.mean()),
            "max_context_diff": float(np.abs(np.asarray(cond["context"]) - t_ctx.numpy()).max()),
            "max_pooled_diff": float(np.abs(np.asarray(cond["pooled"]) - t_pooled.numpy()).max()),
            "max_abs_context": float(np.abs(np.asarray(cond["context"])).max()),
            "jax_images": jax_images, "torch_images": torch_images}
