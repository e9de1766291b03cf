"""Prompts -> images: conditioner, compiled flow sampler with CFG, VAE decode, in one XLA program."""
import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models.conditioner import Conditioner, ConditionerConfig, tokenize_prompts
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig
from seedream_jax.models.vae import AutoencoderKL, VAEConfig, unscale_latents
from seedream_jax.sampling import sampler as sampler_lib
from seedream_jax.sampling import schedules


class TextToImage:
    """A text-to-image pipeline over parameters {'conditioner', 'mmdit', 'vae'}.

    One compiled program per (batch, height, width, steps, solver, guidance) runs text
    encoding of prompts and the empty prompt, the whole denoising loop (a ``lax`` loop) and
    the VAE decode.
    """

    def __init__(self, conditioner_cfg: ConditionerConfig, mmdit_cfg: MMDiTConfig, vae_cfg: VAEConfig,
                 tokenizer, *, shift_base_tokens: int = 256, shift_max_tokens: int = 4096,
                 shift_base: float = 0.5, shift_max: float = 1.15):
        self.conditioner_cfg, self.mmdit_cfg, self.vae_cfg = conditioner_cfg, mmdit_cfg, vae_cfg
        self.conditioner, self.mmdit, self.vae = Conditioner(conditioner_cfg), MMDiT(mmdit_cfg), AutoencoderKL(vae_cfg)
        self.tokenizer = tokenizer
        self.shift = dict(base_tokens=shift_base_tokens, max_tokens=shift_max_tokens,
                          base_shift=shift_base, max_shift=shift_max)

    def latent_shape(self, height: int, width: int):
        f = self.vae_cfg.downsample_factor * self.mmdit_cfg.patch_size
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} must be a multiple of {f} "
                             f"(VAE factor x patch size)")
        d = self.vae_cfg.downsample_factor
        return (height // d, width // d, self.vae_cfg.latent_channels)

    def mu(self, height: int, width: int) -> float:
        """The resolution shift for this image size (same rule as training)."""
        h, w, _ = self.latent_shape(height, width)
        p = self.mmdit_cfg.patch_size
        return float(schedules.resolution_shift((h // p) * (w // p), **self.shift))

    def encode(self, params, tokens: Dict[str, jax.Array]):
        """Conditioner forward -> {'context', 'mask', 'pooled'}."""
        context, mask, pooled = self.conditioner.apply({"params": params["conditioner"]}, **tokens)
        return {"context": context, "mask": mask, "pooled": pooled}

    def velocity(self, params, x, t, cond):
        return self.mmdit.apply({"params": params["mmdit"]}, x, t, cond["context"], cond["mask"], cond["pooled"])

    @functools.lru_cache(maxsize=8)
    def _program(self, num_steps: int, solver: str, guidance_scale: float):
        sample = sampler_lib.make_sampler(self.velocity, num_steps=num_steps, solver=solver,
                                          guidance_scale=guidance_scale)

        def run(params, tokens, uncond_tokens, noise, mu):
            cond = self.encode(params, tokens)
            uncond = self.encode(params, uncond_tokens) if guidance_scale != 1.0 else None
            z = sample(params, noise, cond, uncond, mu)
            z = unscale_latents(z, self.vae_cfg)
            images = self.vae.apply({"params": params["vae"]}, z, method=self.vae.decode)
            return jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5, 0, 255)

        return jax.jit(run)

    def __call__(self, params, prompts: Sequence[str], *, height: int, width: int, num_steps: int = 28,
                 solver: str = "euler", guidance_scale: float = 4.0, seed: int = 0) -> np.ndarray:
        """Generate uint8 images [B, height, width, 3]; sample i uses noise fold_in(PRNGKey(seed), i)."""
        tokens = tokenize_prompts(prompts, self.tokenizer, self.conditioner_cfg)
        uncond = tokenize_prompts([""], self.tokenizer, self.conditioner_cfg)
        noise = sampler_lib.initial_noise(jax.random.PRNGKey(seed), len(prompts), self.latent_shape(height, width))
        program = self._program(int(num_steps), str(solver), float(guidance_scale))
        images = program(params, tokens, uncond, noise, jnp.float32(self.mu(height, width)))
        return np.asarray(jnp.round(images)).astype(np.uint8)
