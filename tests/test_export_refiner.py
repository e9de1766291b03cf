"""The refiner in the export: an MMDiT with conditioning latents as diffusers'
``FluxTransformer2DModel(in_channels=(C + Cc) p^2, out_channels=C p^2)`` (Flux Fill's layout),
float32 parity with our JAX forward, and its import back; the whole cascade (random base and
refiner stages of a micro model) exported and sampled with ``seedream_torch.SeedreamPipeline``
within the export's documented tolerance (``interop/verify.PIXEL_TOLERANCE``) of JAX's ``Cascade``;
and ``benchmarks/refiner_quality.py`` run on that workdir."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import torch

from conftest import max_abs_diff, micro_config, write_random_pretrain_stage
from seedream_jax.interop import convert, flux, torch_pipeline
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig
from test_export_components import random_params

REFINER = MMDiTConfig(in_channels=4, cond_channels=3, patch_size=2, num_heads=2, head_dim=16, num_double_blocks=1,
                      num_single_blocks=1, context_dim=40, pooled_dim=40, axes_dims=(4, 6, 6), rope_base_grid=4)


def test_conditioned_mmdit_matches_diffusers_flux_and_imports_back(tmp_path):
    from diffusers import FluxTransformer2DModel
    r = np.random.default_rng(0)
    lat = r.normal(size=(2, 8, 12, 4)).astype(np.float32)
    cond = r.normal(size=(2, 8, 12, 3)).astype(np.float32)
    t = np.array([0.8, 0.3], np.float32)
    ctx = r.normal(size=(2, 5, 40)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    pooled = r.normal(size=(2, 40)).astype(np.float32)
    params = random_params(flux.abstract_params(REFINER), seed=4)
    assert params["x_embedder"]["kernel"].shape == (7 * 4, 32) and params["proj_out"]["kernel"].shape == (32, 4 * 4)
    forward = jax.jit(lambda c: MMDiT(REFINER).apply({"params": params}, lat, t, ctx, mask, pooled, cond_latents=c))
    ours = forward(cond)
    flux.export_mmdit(params, REFINER, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    assert (config["in_channels"], config["out_channels"]) == (28, 16)
    model = FluxTransformer2DModel.from_pretrained(str(tmp_path), use_safetensors=True).eval()
    img_ids, txt_ids = flux.flux_position_ids(REFINER, 8, 12, 5)
    pack = lambda x: torch_pipeline.pack_latents(torch.from_numpy(x))
    out = torch_pipeline.flux_velocity(model, pack(lat), torch.from_numpy(t), torch.from_numpy(ctx),
                                       torch.from_numpy(mask), torch.from_numpy(pooled), torch.from_numpy(img_ids),
                                       torch.from_numpy(txt_ids), cond_packed=pack(cond))
    d = max_abs_diff(ours, torch_pipeline.unpack_latents(out, 8, 12))
    print(f"MMDiT with cond_latents (C=4, Cc=3) vs diffusers Flux (in 28, out 16): max abs diff {d:.2e} "
          f"(max |v| {float(np.abs(np.asarray(ours)).max()):.2f})")
    assert d <= 1e-5
    # The conditioning channels matter: zeroing them changes the output.
    assert max_abs_diff(ours, forward(0 * cond)) > 1e-2
    cfg, back = flux.load_mmdit(str(tmp_path), patch_size=2, rope_base_grid=4)
    assert (cfg.in_channels, cfg.cond_channels) == (4, 3)
    np.testing.assert_array_equal(back["x_embedder"]["kernel"], params["x_embedder"]["kernel"])
    np.testing.assert_array_equal(back["proj_out"]["kernel"], params["proj_out"]["kernel"])


def test_flux_config_channels_are_checked():
    base = {"patch_size": 1, "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 1,
            "num_single_layers": 1, "joint_attention_dim": 40, "pooled_projection_dim": 40, "axes_dims_rope": [4, 6, 6]}
    plain = flux.mmdit_config_from_diffusers({**base, "in_channels": 16, "out_channels": None})
    assert (plain.in_channels, plain.cond_channels) == (4, 0)
    assert flux.mmdit_to_diffusers_config(plain)["out_channels"] is None
    cfg = flux.mmdit_config_from_diffusers({**base, "in_channels": 28, "out_channels": 16})
    assert (cfg.in_channels, cfg.cond_channels) == (4, 3)
    for bad in ((30, 16), (16, 28), (28, 18)):
        with pytest.raises(ValueError, match=f"in_channels {bad[0]} / out_channels {bad[1]}"):
            flux.mmdit_config_from_diffusers({**base, "in_channels": bad[0], "out_channels": bad[1]})


# ------------------------------------------------------------------ the cascade, exported and sampled in PyTorch

SIZE = 16  # the base's size; the refiner doubles it


def _config():
    """conftest.micro_config at 16 px with a refiner section of 3 Euler steps at guidance 2."""
    c = micro_config(SIZE, num_images=8)
    c.refiner.update(dict(hr_size=2 * SIZE, sample_steps=3, sample_guidance_scale=2.0))
    return c


def write_random_refiner_stage(cfg, workdir: str, seed: int = 5) -> str:
    """A ``refiner`` stage beside the workdir's ``pretrain`` one: its stage.json from
    ``stages.refiner.describe`` and one checkpoint whose conditioned MMDiT is random (every leaf
    N(0, 0.1^2), norm scales near 1), conditioner and VAE the base's. Returns its directory."""
    from seedream_jax.checkpoint.manager import Checkpointer
    from seedream_jax.checkpoint.stage_dir import open_stage, write_stage_meta
    from seedream_jax.stages import refiner as refiner_stage
    stage_dir = os.path.join(workdir, "refiner")
    description = refiner_stage.describe(cfg, cfg.refiner, workdir, stage_dir)
    base = open_stage(os.path.join(workdir, "pretrain")).params("raw")
    mmdit = random_params(flux.abstract_params(description.components["mmdit"][1]), seed=seed)
    ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), keep=1, async_save=False)
    ckpt.save(1, {"params": {"mmdit": mmdit}, "frozen": {k: base[k] for k in ("conditioner", "vae")}},
              {"position": 0}, force=True)
    ckpt.wait()
    ckpt.close()
    write_stage_meta(stage_dir, "refiner", "refiner", description)
    return stage_dir


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory):
    """(config, workdir, export folder): a world, tokenizer, random base and refiner stages, and
    their whole-pipeline export (raw weights) with the refiner."""
    from seedream_jax.interop import pipeline
    from seedream_jax.stages import data as data_stage, tokenizer as tokenizer_stage
    wd = str(tmp_path_factory.mktemp("cascade"))
    cfg = _config()
    data_stage.run(cfg, cfg.data, wd)
    tokenizer_stage.run(cfg, None, wd)
    write_random_pretrain_stage(cfg, wd, SIZE)
    write_random_refiner_stage(cfg, wd)
    out = str(tmp_path_factory.mktemp("export"))
    pipeline.export_checkpoint(cfg, wd, out, weights="raw", refiner="refiner")
    return cfg, wd, out


@pytest.fixture(scope="module")
def bench():
    """benchmarks/refiner_quality.py as a module."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "refiner_quality.py")
    spec = importlib.util.spec_from_file_location("refiner_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The JAX sampler settings of the cascade test, which the benchmark test repeats (3 prompts a batch,
# 2 steps, guidance 3): the two share the compiled base and refiner programs (``bench.load`` is cached).
BASE_SAMPLER = dict(num_steps=2, guidance_scale=3.0)
BATCH = 3


def test_cascade_export_samples_in_pytorch_like_jax(cascade_run, bench):
    from seedream_jax.interop.verify import PIXEL_TOLERANCE
    from seedream_jax.sampling import sampler as sampler_lib
    from seedream_jax.sampling.generate import refine
    _, wd, out = cascade_run
    prompts = ["a large red circle", '一个蓝色正方形和文字“你好”', "two small green triangles"]
    seed = 3
    base, base_params, cascade, params = bench.load(wd, raw=True)  # stages.sample.with_refiner's Cascade
    refiner, refiner_params, settings = cascade.refiner, params["refiner"], cascade.settings
    assert (settings.num_steps, settings.guidance_scale) == (3, 2.0)  # as the refiner stage recorded them
    jax_images = cascade(params, prompts, height=SIZE, width=SIZE, seed=seed, **BASE_SAMPLER)
    jax_low = base(base_params, prompts, height=SIZE, width=SIZE, seed=seed, **BASE_SAMPLER)
    assert jax_images.shape == (3, 2 * SIZE, 2 * SIZE, 3) and jax_images.std() > 1.0

    pipe = torch_pipeline.SeedreamPipeline.from_pretrained(out)
    noise = np.asarray(sampler_lib.initial_noise(jax.random.PRNGKey(seed), 3, base.latent_shape(SIZE, SIZE)))
    refiner_noise = np.asarray(refiner.noise(seed, 3, SIZE, SIZE))
    torch_images = pipe(prompts, height=SIZE, width=SIZE, noise=noise, refine=True, refiner_noise=refiner_noise,
                        **BASE_SAMPLER)
    diff = np.abs(torch_images.astype(np.int16) - jax_images.astype(np.int16))
    # The refiner alone, on the same uint8 base images (its defaults: the stage's 3 steps, guidance 2).
    alone = pipe.refine(jax_low, prompts, noise=refiner_noise)
    jax_alone = refine(refiner, refiner_params, jax_low, prompts, seed=seed, **dataclasses.asdict(settings))
    alone_diff = np.abs(alone.astype(np.int16) - jax_alone.astype(np.int16))
    print(f"cascade 16 -> 32 px, PyTorch export vs JAX Cascade: max pixel diff {diff.max()} (mean {diff.mean():.2e}); "
          f"refiner alone on the JAX base images: max {alone_diff.max()} (mean {alone_diff.mean():.2e})")
    assert diff.max() <= PIXEL_TOLERANCE and alone_diff.max() <= PIXEL_TOLERANCE
    # Part-way from the upsampled image (strength 0.5: the last 1 of the 3 steps, from the noised
    # conditioning latent): the same in both, and not the images sampled from the noise.
    jax_half = refine(refiner, refiner_params, jax_low, prompts, seed=seed,
                      **dict(dataclasses.asdict(settings), strength=0.5))
    half_diff = np.abs(pipe.refine(jax_low, prompts, noise=refiner_noise, strength=0.5).astype(np.int16)
                       - jax_half.astype(np.int16))
    print(f"refiner at strength 0.5, PyTorch vs JAX: max pixel diff {half_diff.max()} (mean {half_diff.mean():.2e})")
    assert half_diff.max() <= PIXEL_TOLERANCE
    assert np.abs(jax_half.astype(np.int16) - jax_alone.astype(np.int16)).max() > 10
    # The conditioning matters: another base image gives another refinement from the same noise.
    other = pipe.refine(jax_low[::-1].copy(), prompts, noise=refiner_noise)
    assert np.abs(other.astype(np.int16) - alone.astype(np.int16)).max() > 10


def test_cascade_export_records_the_refiner_and_imports_back(cascade_run):
    from seedream_jax.checkpoint.stage_dir import open_stage
    from seedream_jax.interop import pipeline
    cfg, wd, out = cascade_run
    with open(os.path.join(out, pipeline.PIPELINE_FILE)) as f:
        info = json.load(f)
    r, stage = info["refiner"], open_stage(os.path.join(wd, "refiner"))
    assert info["components"]["refiner"] == "refiner" and r["source"]["step"] == 1
    assert (r["scale"], r["num_steps"], r["guidance_scale"], r["strength"], r["cond_channels"]) == (2, 3, 2.0, 1.0, 4)
    assert r["schedule"] == stage.meta["schedule"]
    readme = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert "| `refiner/` | diffusers `FluxTransformer2DModel` (the refiner: step 7)" in readme
    assert "7. **Refiner**" in readme and "refine=True" in readme
    refiner_cfg, params, settings = pipeline.import_refiner(out)
    assert pipeline.config_differences(refiner_cfg, stage.component("mmdit")[1],
                                       ignore=("dtype", "attention_impl", "remat_policy", "style_dim")) == []
    flat, want = convert.flatten(params), convert.flatten(stage.params("raw")["mmdit"])
    assert flat.keys() == want.keys() and all(np.array_equal(flat[k], want[k]) for k in want)
    assert settings == r
    # A stage that is not a refiner, a refiner on other latents: refused before anything is written.
    with pytest.raises(ValueError, match="is a 'pretrain' stage, not a refiner stage"):
        pipeline.export_checkpoint(cfg, wd, out + "_bad", weights="raw", refiner="pretrain")
    assert not os.path.exists(out + "_bad")
    vae_cfg = open_stage(os.path.join(wd, "pretrain")).component("vae")[1]
    with pytest.raises(ValueError, match="cond_channels 3 != the VAE's latent channels 4"):
        pipeline.check_refiner(pipeline.RefinerExport(params, dataclasses.replace(refiner_cfg, cond_channels=3)),
                               vae_cfg)
    with pytest.raises(ValueError, match="refiner: strength 0.01 of 20 steps runs no step"):
        pipeline.check_refiner(pipeline.RefinerExport(params, refiner_cfg, strength=0.01), vae_cfg)
    # Without a refiner: no entry, import_refiner None, refine refused.
    plain = out + "_plain"
    pipeline.export_checkpoint(cfg, wd, plain, weights="raw")
    assert pipeline.import_refiner(plain) is None
    with pytest.raises(ValueError, match="this export has no refiner"):
        torch_pipeline.SeedreamPipeline.from_pretrained(plain).refine(np.zeros((1, 16, 16, 3), np.uint8), ["x"])


def test_refiner_quality_benchmark_runs_on_a_micro_workdir(cascade_run, bench, tmp_path, capsys):
    from PIL import Image
    from seedream_jax.data import synthetic
    from seedream_jax.eval import sharpness
    _, wd, _ = cascade_run
    out = str(tmp_path / "quality")
    assert bench.main(["--workdir", wd, "--per-group", "1", "--size", str(SIZE), "--raw", "--grid-items", "2",
                       "--num-steps", str(BASE_SAMPLER["num_steps"]), "--guidance-scale",
                       str(BASE_SAMPLER["guidance_scale"]), "--batch-size", str(BATCH), "--output", out]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert all(f"| {row} |" in printed for row in bench.ROWS)
    with open(os.path.join(out, "refiner_quality.json")) as f:
        result = json.load(f)
    items = bench.suite_items(1)
    assert result["size"] == 2 * SIZE and result["items"] == [i.id for i in items]
    assert {i.kind for i in items} == {"single", "text"} and list(result["rows"]) == list(bench.ROWS)
    truth = np.stack([synthetic.render_scene(i.scene, 2 * SIZE) for lang in ("en", "zh") for i in items])
    assert result["rows"]["ground truth"]["edge_slope"] == pytest.approx(float(sharpness.edge_slope(truth).mean()),
                                                                         rel=1e-12)
    assert all(r["shape"] is not None and r["text_ra"] is not None for r in result["rows"].values())
    grid = np.asarray(Image.open(os.path.join(out, "grid.png")))
    assert grid.shape[1] > 4 * 2 * SIZE * (256 // (2 * SIZE))  # four images of 32 px at 8x side by side
    # Its refiner row is the eval's cascade: refine_batches of the base images == Cascade, same seeds.
    base, base_params, cascade, params = bench.load(wd, raw=True)
    prompts = [i.prompt("en") for i in items[:BATCH]]
    low = base(base_params, prompts, height=SIZE, width=SIZE, seed=0, **BASE_SAMPLER)
    np.testing.assert_array_equal(
        bench.refine_batches(cascade.refiner, params["refiner"], cascade.settings, low, prompts, batch_size=BATCH,
                             seed=0),
        cascade(params, prompts, height=SIZE, width=SIZE, seed=0, **BASE_SAMPLER))
