"""Prompts -> images: conditioner, compiled flow sampler with CFG, VAE decode, in one XLA program.

``TextToImage`` holds only static configs and modules; its ``encode_prompts``, ``sample_latents``
and ``decode_latents`` are pure functions of the parameters that losses can differentiate through
(reward backprop, policy gradients); ``__call__`` composes them in one jitted program and does the
host work (tokenising, noise, the uint8 cast).
"""
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

    One compiled program per (batch, height, width, ``SamplerConfig``) runs text encoding of
    prompts and the empty prompt, the whole denoising loop (a ``lax.scan``) and the VAE decode.
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

    def encode_prompts(self, params, tokens: Dict[str, jax.Array]):
        """Conditioner forward (pure) -> {'context' [B, L, D], 'mask' [B, L], 'pooled' [B, D]}."""
        context, mask, pooled = self.conditioner.apply({"params": params["conditioner"]}, **tokens)
        return {"context": context, "mask": mask, "pooled": pooled}

    encode = encode_prompts  # the name the training stages and the text cache use

    def velocity(self, params, x, t, cond):
        return self.mmdit.apply({"params": params["mmdit"]}, x, t, cond["context"], cond["mask"], cond["pooled"])

    def sample_latents(self, params, noise, cond, uncond, sampler_cfg: sampler_lib.SamplerConfig, *,
                       grad_last_k: int = 0, rng=None, return_trajectory: bool = False):
        """Normalised latents from ``noise`` [B, h, w, C] (pure): ``sampler.sample_trajectory`` over
        the MMDiT; returns (z0, trajectory, logps) as it does, with its gradient window
        ``grad_last_k``. ``sampler_cfg.shift`` should be ``self.mu(height, width)``."""
        return sampler_lib.sample_trajectory(self.velocity, params, noise, cond, uncond, sampler_cfg,
                                             grad_last_k=grad_last_k, rng=rng, return_trajectory=return_trajectory)

    def decode_latents(self, params, z):
        """Normalised latents [B, h, w, C] -> float32 images [B, H, W, 3] clipped to [-1, 1] (pure)."""
        images = self.vae.apply({"params": params["vae"]}, unscale_latents(z, self.vae_cfg), method=self.vae.decode)
        return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)

    @functools.lru_cache(maxsize=8)
    def _program(self, sampler_cfg: sampler_lib.SamplerConfig):
        def run(params, tokens, uncond_tokens, noise):
            cond = self.encode_prompts(params, tokens)
            uncond = self.encode_prompts(params, uncond_tokens) if sampler_cfg.guidance_scale != 1.0 else None
            z, _, _ = self.sample_latents(params, noise, cond, uncond, sampler_cfg)
            return self.decode_latents(params, z)

        return jax.jit(run)

    def __call__(self, params, prompts: Sequence[str], *, height: int, width: int, num_steps: int = 28,
                 solver: str = "euler", guidance_scale: float = 4.0, seed: int = 0) -> np.ndarray:
        """Generate uint8 images [B, height, width, 3]; sample i uses noise fold_in(PRNGKey(seed), i)."""
        tokens = tokenize_prompts(prompts, self.tokenizer, self.conditioner_cfg)
        uncond = tokenize_prompts([""], self.tokenizer, self.conditioner_cfg)
        noise = sampler_lib.initial_noise(jax.random.PRNGKey(seed), len(prompts), self.latent_shape(height, width))
        sampler_cfg = sampler_lib.SamplerConfig(num_steps=int(num_steps), solver=str(solver),
                                                guidance_scale=float(guidance_scale), shift=self.mu(height, width))
        images = self._program(sampler_cfg)(params, tokens, uncond, noise)
        return np.asarray(jnp.round((images + 1.0) * 127.5)).astype(np.uint8)
