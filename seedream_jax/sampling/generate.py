"""Prompts -> images: conditioner, compiled flow sampler with CFG, VAE decode, in one XLA program.

``TextToImage`` holds only static configs and modules; its ``encode_prompts``, ``sample_latents``
and ``decode_latents`` are pure functions of the parameters that losses can differentiate through
(reward backprop, policy gradients); ``__call__`` composes them in one jitted program and does the
host work (tokenising, noise, the uint8 cast).

Style tags (an MMDiT with the aesthetic adapter, ``MMDiTConfig.style_tag_sizes``): the
conditioning pytree carries ``style_tags`` int32 [B, A] (``data/style_tags.py``) to the MMDiT; the
unconditional pass is the empty prompt without tags. Negative-tag guidance (the SFT stage's
"generated" tag, ``stages/sft.py``) adds a third pass, batched with the other two in one model call:
v = v_u + g (v_c - v_u) + g_neg (v_c - v_neg), v_neg the conditional velocity with the tags
replaced by the negative tags (by default the same tags with ``source = generated``).

The refiner (Seedream's 512 -> 1024 stage; ``stages/refiner.py`` trains it): ``Refiner`` wraps a
``TextToImage`` whose MMDiT has ``cond_channels`` = the VAE's latent channels. ``refine`` takes
uint8 images [B, h, w, 3] and their prompts: the images are upsampled ``scale`` times
(``data/sr_pairs.upsample``, PyTorch's bicubic), encoded by the VAE (posterior mean, normalised as
the DiT's latents), and that latent is the MMDiT's ``cond_latents`` while it samples a
``scale``-times latent with its own sampler settings (the time shift of the larger size); the VAE
decodes it to uint8 [B, scale h, scale w, 3]. ``strength`` 1 samples from pure noise; below 1 the
sampling starts part-way (SDEdit, diffusers' img2img rule, ``sampler.start_step_for_strength``)
from the conditioning latent noised to that time, so the refiner redraws detail and keeps what the
upsampled image already has. Text conditioning as in the base
(CFG's unconditional pass keeps the same ``cond_latents``). ``Cascade`` runs base -> uint8 ->
``refine``: its images equal ``refine`` of the base's images exactly.
"""
import dataclasses
import functools
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.data import sr_pairs
from seedream_jax.data import style_tags as style_tags_lib
from seedream_jax.models.conditioner import Conditioner, ConditionerConfig, tokenize_prompts
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig
from seedream_jax.models.vae import AutoencoderKL, VAEConfig, scale_latents, unscale_latents
from seedream_jax.sampling import sampler as sampler_lib
from seedream_jax.sampling import schedules


def _uint8(images) -> np.ndarray:
    """float images in [-1, 1] -> uint8, as every pipeline here returns them."""
    return np.asarray(jnp.round((images + 1.0) * 127.5)).astype(np.uint8)


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

    def with_mmdit(self, mmdit_cfg: MMDiTConfig) -> "TextToImage":
        """This pipeline (conditioner, VAE, tokenizer, time shift) with another MMDiT config."""
        sh = self.shift
        return TextToImage(self.conditioner_cfg, mmdit_cfg, self.vae_cfg, self.tokenizer,
                           shift_base_tokens=int(sh["base_tokens"]), shift_max_tokens=int(sh["max_tokens"]),
                           shift_base=float(sh["base_shift"]), shift_max=float(sh["max_shift"]))

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

    @property
    def has_style_adapter(self) -> bool:
        return bool(getattr(self.mmdit_cfg, "style_tag_sizes", ()))

    def velocity(self, params, x, t, cond):
        """The MMDiT's velocity; ``cond`` may carry ``style_tags`` int32 [B, A] (adapter models only)
        and ``cond_latents`` [B, h, w, cond_channels] (a refiner's conditioning latent)."""
        extra = {k: cond[k] for k in ("style_tags", "cond_latents") if cond.get(k) is not None}
        return self.mmdit.apply({"params": params["mmdit"]}, x, t, cond["context"], cond["mask"], cond["pooled"],
                                **extra)

    def style_rows(self, tags, batch: int):
        """int32 [batch, A] of ``tags`` (a {attribute: value} dict, one row [A] or rows [batch, A]),
        checked against this model's adapter; None stays None."""
        if tags is None:
            return None
        if not self.has_style_adapter:
            raise ValueError("style tags were given, but this model has no style adapter "
                             "(mmdit style_tag_sizes is empty: sample a ct or sft stage)")
        style_tags_lib.check_sizes(self.mmdit_cfg.style_tag_sizes)
        return style_tags_lib.batch_rows(tags, batch)

    def sample_latents(self, params, noise, cond, uncond, sampler_cfg: sampler_lib.SamplerConfig, *,
                       grad_last_k: int = 0, rng=None, return_trajectory: bool = False, negative=None):
        """Normalised latents from ``noise`` [B, h, w, C] (pure): ``sampler.sample_trajectory`` over
        the MMDiT; returns (z0, trajectory, logps) as it does, with its gradient window
        ``grad_last_k`` and negative-tag guidance over ``negative``. ``sampler_cfg.shift`` should be
        ``self.mu(height, width)``."""
        return sampler_lib.sample_trajectory(self.velocity, params, noise, cond, uncond, sampler_cfg,
                                             grad_last_k=grad_last_k, rng=rng, return_trajectory=return_trajectory,
                                             negative=negative)

    def decode_latents(self, params, z):
        """Normalised latents [B, h, w, C] -> float32 images [B, H, W, 3] clipped to [-1, 1] (pure)."""
        images = self.vae.apply({"params": params["vae"]}, unscale_latents(z, self.vae_cfg), method=self.vae.decode)
        return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)

    @functools.lru_cache(maxsize=8)
    def _program(self, sampler_cfg: sampler_lib.SamplerConfig):
        def run(params, tokens, uncond_tokens, noise, tags, negative_tags):
            cond = self.encode_prompts(params, tokens)
            uncond = self.encode_prompts(params, uncond_tokens) if sampler_cfg.guidance_scale != 1.0 else None
            negative = None
            if tags is not None:
                cond = {**cond, "style_tags": tags}
                if uncond is not None:  # the unconditional pass: the empty prompt without tags
                    uncond = {**uncond, "style_tags": jnp.zeros((1,) + tags.shape[1:], tags.dtype)}
                if negative_tags is not None:
                    negative = {**cond, "style_tags": negative_tags}
            z, _, _ = self.sample_latents(params, noise, cond, uncond, sampler_cfg, negative=negative)
            return self.decode_latents(params, z)

        return jax.jit(run)

    def __call__(self, params, prompts: Sequence[str], *, height: int, width: int, num_steps: int = 28,
                 solver: str = "euler", guidance_scale: float = 4.0, seed: int = 0, style_tags=None,
                 negative_tags=None, negative_scale: float = 0.0) -> np.ndarray:
        """Generate uint8 images [B, height, width, 3]; sample i uses noise fold_in(PRNGKey(seed), i).

        style_tags: None (no tags), a {attribute: value} dict, one int32 row [A] or rows [B, A]
        (``data/style_tags.py``; adapter models only). negative_scale: g_neg of negative-tag
        guidance, with ``negative_tags`` (same forms; default: ``style_tags`` with
        ``source = generated``); 0 = plain CFG, exactly as without negative tags.
        """
        b = len(prompts)
        tokens = tokenize_prompts(prompts, self.tokenizer, self.conditioner_cfg)
        uncond = tokenize_prompts([""], self.tokenizer, self.conditioner_cfg)
        noise = sampler_lib.initial_noise(jax.random.PRNGKey(seed), b, self.latent_shape(height, width))
        negative_scale = float(negative_scale)
        tags = self.style_rows(style_tags, b)
        if tags is None and self.has_style_adapter:
            tags = style_tags_lib.empty(b)  # one program shape whether tags are given or not
        negative = None
        if negative_scale != 0.0:
            if tags is None:
                raise ValueError("negative_scale != 0 needs a model with a style adapter (negative tags)")
            negative = (self.style_rows(negative_tags, b) if negative_tags is not None
                        else style_tags_lib.with_negative(tags))
        sampler_cfg = sampler_lib.SamplerConfig(num_steps=int(num_steps), solver=str(solver),
                                                guidance_scale=float(guidance_scale), shift=self.mu(height, width),
                                                negative_scale=negative_scale if negative is not None else 0.0)
        images = self._program(sampler_cfg)(params, tokens, uncond, noise, tags, negative)
        return _uint8(images)


class Refiner:
    """``scale``-times super-resolution by ``pipe`` (a ``TextToImage`` over parameters
    {'conditioner', 'mmdit', 'vae'} whose MMDiT takes the VAE's latent as ``cond_latents``);
    module docstring."""
    NOISE_STREAM = 1  # the refiner's noise: fold_in(PRNGKey(seed), NOISE_STREAM), apart from the base's

    def __init__(self, pipe: TextToImage, scale: int = 2):
        cond, latent = pipe.mmdit_cfg.cond_channels, pipe.vae_cfg.latent_channels
        if cond != latent:
            raise ValueError(f"a refiner's MMDiT needs cond_channels = the VAE's latent channels ({latent}), got {cond}")
        if int(scale) < 2:
            raise ValueError(f"refiner scale must be >= 2, got {scale}")
        self.pipe, self.scale = pipe, int(scale)

    def condition(self, params, images):
        """float images [B, h, w, 3] in [-1, 1] -> cond_latents [B, scale h / f, scale w / f, C]:
        upsampled, VAE posterior mean, normalised (pure)."""
        vae = self.pipe.vae
        mean, _ = vae.apply({"params": params["vae"]}, sr_pairs.upsample(images, self.scale), method=vae.encode)
        return scale_latents(mean, self.pipe.vae_cfg)

    def output_size(self, height: int, width: int):
        return self.scale * int(height), self.scale * int(width)

    def noise(self, seed: int, batch: int, height: int, width: int) -> jax.Array:
        """The refiner's starting noise [batch, *latent of the output] for inputs of ``height`` x
        ``width`` px; sample i's depends only on (seed, i)."""
        rng = jax.random.fold_in(jax.random.PRNGKey(int(seed)), self.NOISE_STREAM)
        return sampler_lib.initial_noise(rng, batch, self.pipe.latent_shape(*self.output_size(height, width)))

    def sample_latents(self, params, noise, cond_latents, cond, uncond, sampler_cfg: sampler_lib.SamplerConfig):
        """Normalised latents [B, H/f, W/f, C] from ``noise`` given ``cond_latents`` and the prompt
        conditionings (``uncond`` None = no CFG); with ``sampler_cfg.start_step`` > 0 the sampling
        starts from ``cond_latents`` noised to the grid's time there (``sampler.start_state``) (pure)."""
        start = sampler_lib.start_state(cond_latents, noise, sampler_cfg)
        cond = {**cond, "cond_latents": cond_latents}
        uncond = None if uncond is None else {**uncond, "cond_latents": cond_latents}
        return self.pipe.sample_latents(params, start, cond, uncond, sampler_cfg)[0]

    @functools.lru_cache(maxsize=8)
    def _program(self, sampler_cfg: sampler_lib.SamplerConfig):
        def run(params, images, tokens, uncond_tokens, noise):
            cond = self.pipe.encode_prompts(params, tokens)
            uncond = self.pipe.encode_prompts(params, uncond_tokens) if sampler_cfg.guidance_scale != 1.0 else None
            z = self.sample_latents(params, noise, self.condition(params, images), cond, uncond, sampler_cfg)
            return self.pipe.decode_latents(params, z)

        return jax.jit(run)


def refine(refiner: Refiner, params, images: np.ndarray, prompts: Sequence[str], *, num_steps: int = 20,
           solver: str = "euler", guidance_scale: float = 1.0, strength: float = 1.0, seed: int = 0) -> np.ndarray:
    """uint8 images [B, h, w, 3] and their B prompts -> uint8 [B, scale h, scale w, 3] by
    ``refiner`` with parameters ``params`` ({'conditioner', 'mmdit', 'vae'}); noise
    ``refiner.noise(seed, ...)``, ``num_steps`` steps of ``solver`` at the output size's time
    shift, CFG scale ``guidance_scale`` (1 = none), of which the last int(num_steps * ``strength``)
    run, from the upsampled image's latent noised to their first time (1 = all, from noise)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(prompts):
        raise ValueError(f"refine: expected uint8 images [B, h, w, 3] and B prompts, got {images.dtype} "
                         f"{images.shape} and {len(prompts)} prompts")
    b, h, w, _ = images.shape
    pipe = refiner.pipe
    tokens = tokenize_prompts(list(prompts), pipe.tokenizer, pipe.conditioner_cfg)
    uncond = tokenize_prompts([""], pipe.tokenizer, pipe.conditioner_cfg)
    sampler_cfg = sampler_lib.SamplerConfig(num_steps=int(num_steps), solver=str(solver),
                                            guidance_scale=float(guidance_scale),
                                            shift=pipe.mu(*refiner.output_size(h, w)),
                                            start_step=sampler_lib.start_step_for_strength(num_steps, strength))
    pixels = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    out = refiner._program(sampler_cfg)(params, pixels, tokens, uncond, refiner.noise(seed, b, h, w))
    return _uint8(out)


@dataclasses.dataclass(frozen=True)
class RefinerSettings:
    """The refiner's own sampler in a cascade (``refine``'s keywords)."""
    num_steps: int = 20
    solver: str = "euler"
    guidance_scale: float = 1.0
    strength: float = 1.0


class Cascade:
    """base -> refiner: ``__call__(params, prompts, height=, width=, ...)`` with params
    {'base': the base pipeline's, 'refiner': the refiner's} and ``TextToImage.__call__``'s keywords
    (for the base; ``height`` x ``width`` is the base size) -> uint8 [B, scale height, scale width, 3],
    equal to ``refine`` (same seed, ``settings``) of the base's uint8 images."""

    def __init__(self, base: TextToImage, refiner: Refiner, settings: RefinerSettings = RefinerSettings()):
        self.base, self.refiner, self.settings = base, refiner, settings

    def __call__(self, params, prompts: Sequence[str], *, height: int, width: int, seed: int = 0,
                 **base_settings) -> np.ndarray:
        low = self.base(params["base"], prompts, height=height, width=width, seed=seed, **base_settings)
        return refine(self.refiner, params["refiner"], low, prompts, seed=seed, **dataclasses.asdict(self.settings))
