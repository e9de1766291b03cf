"""VAE: parity with diffusers AutoencoderKL (encode and decode), export, key checks, shapes, bf16,
``attention_impl`` reaching the mid-block attention."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import max_abs_diff
from seedream_jax import config_lib
from seedream_jax.interop import convert, safetensors_io
from seedream_jax.interop.autoencoder_kl import export_vae, load_vae, vae_to_diffusers_config
from seedream_jax.models.vae import AutoencoderKL, VAEConfig, scale_latents, unscale_latents

CFG = VAEConfig(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                scaling_factor=0.5, shift_factor=0.1)


def _diffusers(cfg, path):
    from diffusers import AutoencoderKL as DAE
    torch.manual_seed(0)
    model = DAE(**{k: v for k, v in vae_to_diffusers_config(cfg).items() if not k.startswith("_")}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # non-trivial norms and biases too
    model.save_pretrained(path)
    return model


def _images(h, w, b=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, size=(b, h, w, 3)).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    d = tmp_path_factory.mktemp("vae")
    return str(d), _diffusers(CFG, d)


@pytest.mark.parametrize("h,w", [(16, 16), (16, 24)])
def test_parity_with_diffusers(ref, h, w):
    path, model = ref
    cfg, params = load_vae(path)
    assert cfg == CFG
    x = _images(h, w)
    vae = AutoencoderKL(cfg)
    mean, logvar = vae.apply({"params": params}, x, method=vae.encode)
    with torch.no_grad():
        dist = model.encode(_nchw(x)).latent_dist
        dec = model.decode(dist.mean).sample.numpy().transpose(0, 2, 3, 1)
    d_enc = max(max_abs_diff(mean, dist.mean.numpy().transpose(0, 2, 3, 1)),
                max_abs_diff(logvar, dist.logvar.numpy().transpose(0, 2, 3, 1)))
    d_dec = max_abs_diff(vae.apply({"params": params}, mean, method=vae.decode), dec)
    print(f"VAE {h}x{w} vs diffusers AutoencoderKL: encode max abs diff {d_enc:.2e}, decode {d_dec:.2e}")
    assert d_enc <= 1e-5 and d_dec <= 1e-5


def test_sixteen_channel_three_level_parity(tmp_path):
    cfg = VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=16, norm_num_groups=4,
                    use_quant_conv=False, use_post_quant_conv=False)
    model = _diffusers(cfg, tmp_path)
    loaded, params = load_vae(str(tmp_path))
    x = _images(16, 16, b=1)
    vae = AutoencoderKL(loaded)
    recon, mean, _ = vae.apply({"params": params}, x)
    with torch.no_grad():
        ref_mean = model.encode(_nchw(x)).latent_dist.mean
        ref_rec = model.decode(ref_mean).sample.numpy().transpose(0, 2, 3, 1)
    assert mean.shape == (1, 4, 4, 16)
    d = max(max_abs_diff(mean, ref_mean.numpy().transpose(0, 2, 3, 1)), max_abs_diff(recon, ref_rec))
    print(f"VAE 16-channel x4 vs diffusers: max abs diff {d:.2e}")
    assert d <= 1e-5


def test_export_round_trip_and_mismatch(ref, tmp_path):
    from diffusers import AutoencoderKL as DAE
    cfg, params = load_vae(ref[0])
    export_vae(params, cfg, str(tmp_path / "exp"))
    model = DAE.from_pretrained(str(tmp_path / "exp")).eval()
    x = _images(16, 16)
    recon, _, _ = AutoencoderKL(cfg).apply({"params": params}, x)
    with torch.no_grad():
        ref_rec = model.decode(model.encode(_nchw(x)).latent_dist.mean).sample.numpy().transpose(0, 2, 3, 1)
    d = max_abs_diff(recon, ref_rec)
    print(f"VAE export -> diffusers from_pretrained: max abs diff {d:.2e}")
    assert d <= 1e-5
    t = safetensors_io.load_tensors(str(tmp_path / "exp"))
    del t["decoder.conv_out.bias"]
    t["encoder.extra.weight"] = np.zeros(1, np.float32)
    t["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    safetensors_io.save_tensors(t, str(tmp_path / "exp"), basename="diffusion_pytorch_model")
    with pytest.raises(convert.CheckpointMismatchError) as err:
        load_vae(str(tmp_path / "exp"))
    assert err.value.missing == ["decoder.conv_out.bias"] and err.value.unexpected == ["encoder.extra.weight"]
    assert err.value.misshaped == [("quant_conv.weight", (8, 8, 3, 3), (8, 8, 1, 1))]


def test_shapes_bf16_and_latent_scaling(ref):
    cfg, params = load_vae(ref[0])
    for h, w in ((8, 8), (16, 32), (24, 8)):
        recon, mean, logvar = AutoencoderKL(cfg).apply({"params": params}, _images(h, w, b=1), rng=jax.random.PRNGKey(0))
        assert recon.shape == (1, h, w, 3) and mean.shape == logvar.shape == (1, h // 2, w // 2, 4)
    x = _images(16, 16)
    ref_out = AutoencoderKL(cfg).apply({"params": params}, x)[0]
    bf = AutoencoderKL(VAEConfig(**{**cfg.__dict__, "dtype": "bfloat16"})).apply({"params": params}, x)[0]
    rel = max_abs_diff(ref_out, bf) / float(jnp.max(jnp.abs(ref_out)))
    print(f"VAE bf16 vs fp32: max abs diff / max |out| = {rel:.3f}")
    assert rel < 0.05
    z = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 4)), jnp.float32)
    np.testing.assert_allclose(unscale_latents(scale_latents(z, cfg), cfg), z, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the VAE factor"):
        AutoencoderKL(cfg).apply({"params": params}, _images(15, 16, b=1))


def test_attention_impl_reaches_the_mid_block_attention(ref):
    cfg, params = load_vae(ref[0])
    x = _images(16, 16)
    out = lambda impl: AutoencoderKL(dataclasses.replace(cfg, attention_impl=impl)).apply({"params": params}, x)[0]
    d = max_abs_diff(out("splash_interpret"), out(None))
    print(f"VAE with Splash (interpreted) mid-block attention vs XLA: max abs diff {d:.2e}")
    assert d <= 1e-5
    with pytest.raises(ValueError, match="needs a TPU"):
        out("splash")
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        dataclasses.replace(cfg, attention_impl="flash")
    model = config_lib.model_config("tiny")
    for impl, vae_impl in (("cudnn", "cudnn"), ("splash", None), (None, None)):
        model.attention_impl = impl
        assert config_lib.build_model_configs(model)[2].attention_impl == vae_impl
