"""TextToImage as pure parts: the host call equals encode_prompts -> sample_latents -> decode_latents,
and a loss on decoded images differentiates through the last sampling steps."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models.conditioner import ConditionerConfig, tokenize_prompts
from seedream_jax.models.mmdit import MMDiTConfig
from seedream_jax.models.text_encoder import Qwen2Config, TextEncoderConfig
from seedream_jax.models.vae import VAEConfig
from seedream_jax.sampling import sampler as sampler_lib
from seedream_jax.sampling.generate import TextToImage


def char_tokenizer(texts, max_length):
    """ids = character codes mod 64 (0 = padding), padded / cut to ``max_length``."""
    ids = np.zeros((len(texts), max_length), np.int32)
    for i, t in enumerate(texts):
        codes = [ord(ch) % 63 + 1 for ch in t][:max_length]
        ids[i, :len(codes)] = codes
    return ids, ids > 0


def tiny_pipeline():
    llm = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, rope_theta=10000.0)
    conditioner = ConditionerConfig(text_encoder=TextEncoderConfig(llm=llm, adapter="none"), byt5=None,
                                    context_dim=32, llm_max_length=8)
    mmdit = MMDiTConfig(in_channels=4, patch_size=2, num_heads=2, head_dim=16, num_double_blocks=1,
                        num_single_blocks=0, context_dim=32, pooled_dim=32, axes_dims=(4, 6, 6), rope_base_grid=4)
    vae = VAEConfig(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                    scaling_factor=1.3, shift_factor=0.1, mid_block_add_attention=False)
    pipe = TextToImage(conditioner, mmdit, vae, char_tokenizer)
    tokens = tokenize_prompts(["a"], char_tokenizer, conditioner)
    lat = jnp.zeros((1,) + pipe.latent_shape(16, 16))

    def init_all(rng):
        cond = pipe.conditioner.init(rng, **tokens)
        ctx, mask, pooled = pipe.conditioner.apply(cond, **tokens)
        return {"conditioner": cond, "mmdit": pipe.mmdit.init(rng, lat, jnp.zeros((1,)), ctx, mask, pooled),
                "vae": pipe.vae.init(rng, lat, method=pipe.vae.decode)}

    return pipe, random_params(init_all)


def random_params(init_fn):
    """Random weights of the shapes ``init_fn`` gives, drawn on the host (no init program to compile):
    norm scales 1 + N(0, 0.1^2), all else N(0, 0.1^2), so that the adaLN-Zero DiT is not zero."""
    shapes = nn.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(base + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)

    return {k: v["params"] for k, v in jax.tree_util.tree_map_with_path(draw, shapes).items()}


def test_host_call_is_the_composition_of_pure_parts_and_they_differentiate():
    pipe, params = tiny_pipeline()
    prompts = ["red circle", "blue square"]
    images = pipe(params, prompts, height=16, width=16, num_steps=3, guidance_scale=3.0, seed=7)
    assert images.dtype == np.uint8 and images.shape == (2, 16, 16, 3)

    tokens = tokenize_prompts(prompts, char_tokenizer, pipe.conditioner_cfg)
    uncond_tokens = tokenize_prompts([""], char_tokenizer, pipe.conditioner_cfg)
    noise = sampler_lib.initial_noise(jax.random.PRNGKey(7), 2, pipe.latent_shape(16, 16))
    cfg = sampler_lib.SamplerConfig(num_steps=3, guidance_scale=3.0, shift=pipe.mu(16, 16))

    def reward_loss(mmdit_params):  # a differentiable 'reward' on the decoded images (DRaFT-style, K = 1)
        p = {**params, "mmdit": mmdit_params}
        cond, uncond = pipe.encode_prompts(p, tokens), pipe.encode_prompts(p, uncond_tokens)
        z, _, _ = pipe.sample_latents(p, noise, cond, uncond, cfg, grad_last_k=1)
        decoded = pipe.decode_latents(p, z)
        return -jnp.mean(decoded[..., 0]), decoded

    (_, decoded), grads = jax.jit(jax.value_and_grad(reward_loss, has_aux=True))(params["mmdit"])
    assert decoded.dtype == jnp.float32 and float(decoded.min()) >= -1.0 and float(decoded.max()) <= 1.0
    inside = float(jnp.mean(jnp.abs(decoded) < 1.0))
    assert inside > 0.5, f"only {inside:.0%} of the decoded values are unclipped: the comparison would be vacuous"
    by_parts = np.round((np.asarray(decoded) + 1.0) * 127.5).astype(np.uint8)
    diff = int(np.max(np.abs(by_parts.astype(int) - images.astype(int))))
    print(f"host call vs pure parts: max uint8 diff {diff} ({inside:.0%} of values unclipped)")
    assert diff <= 1
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0
