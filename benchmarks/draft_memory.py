"""DRaFT-K memory versus K, with and without remat of the last K sampler steps (issue 15).

DRaFT-K (``training/rlhf_losses.draft_latents``, the rlhf stage's ``method='draft'``) backpropagates
through the sampler's last K steps: ``sampler.sample_trajectory(grad_last_k=K)`` runs steps
0..N-K-1 without gradient and the last K inside a ``lax.scan`` under ``jax.checkpoint``, so the
backward pass should keep one latent per step rather than K steps of DiT activations. This
benchmark compiles the DRaFT gradient

    d/d(DiT params) reward_loss(score(VAE decode(x0))),  x0 = sampler with gradient through its last K steps

for each K of ``--ks`` with that remat on and off (``sample_trajectory(remat=...)``) and reads XLA's
buffer assignment of the compiled program (``compiled.memory_analysis()``, read by
``stages/plan.compiled_memory`` as the planner does): temp (scratch: what the backward pass keeps, and
workspaces) and total = arguments + outputs - aliased + temp + generated code. No accelerator is
needed: these are XLA:CPU's numbers, the same buffer assignment ``tools/plan.py`` reads.

    python benchmarks/draft_memory.py                          # configs/tiny.py's DiT and VAE, 64 px, batch 2
    python benchmarks/draft_memory.py --size cpu46m --depth 2  # the mid size: bench_lib's cpu46m DiT at 2 + 2 blocks
    python benchmarks/draft_memory.py --run                    # also one timed execution per row

The program is the rlhf stage's DRaFT step without the optimizer: the pipeline's ``velocity`` and
``decode_latents`` (``sampling/generate.TextToImage``), ``sample_trajectory`` called directly for its
``remat`` switch (``draft_latents`` is its x0 with remat on), 28 Euler steps with classifier-free guidance
4 (the model runs on [uncond; cond], batch 2B), the stage's ``relu`` ``reward_loss``. The reward
is a simple differentiable image score (``redness``: mean of R - (G + B) / 2, the score of
tests/test_rlhf.py), not the stage's learned alignment reward, which needs trained weights (its
memory would not depend on K). The text conditioning is fixed random embeddings (the conditioner
is frozen in the stage, outside the gradient). Weights are random: memory depends on shapes only.

The claim checked (the issue's): with remat off, temp memory grows with K (each step keeps the
DiT's activations); with remat on it does not (one latent per step). PASS (exit 0) when remat-off
temp grows from the smallest K to the largest and remat-on temp grows by at most ``--tolerance``
(a fraction, default 5%) of that; otherwise FAIL (exit 1).

Sets ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot`` unless the flag is given: the
framework's default ``dot,eltwise`` crashed XLA:CPU on the ReFL/DRaFT step (README, RLHF section).
"""
import dataclasses
import os
import sys
import time
from typing import Any, Dict, List, Sequence

YNN = "--xla_cpu_experimental_ynn_fusion_type"
if __name__ == "__main__" and YNN not in os.environ.get("XLA_FLAGS", ""):  # before JAX starts; not on import
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {YNN}=dot".strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # noqa: E402
from seedream_jax import config_lib  # noqa: E402
from seedream_jax.models.mmdit import MMDiT  # noqa: E402
from seedream_jax.models.vae import AutoencoderKL  # noqa: E402
from seedream_jax.sampling import sampler as sampler_lib  # noqa: E402
from seedream_jax.sampling.generate import TextToImage  # noqa: E402
from seedream_jax.stages.plan import compiled_memory  # noqa: E402
from seedream_jax.training import rlhf_losses  # noqa: E402

TINY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py")
MIB = 2.0 ** 20


def redness(images):
    """The reward: mean of R - (G + B) / 2 per image, [B] of images [B, H, W, 3] in [-1, 1]."""
    return jnp.mean(images[..., 0] - 0.5 * (images[..., 1] + images[..., 2]), axis=(1, 2))


@dataclasses.dataclass
class Problem:
    """One DRaFT step's inputs: the pipeline; params {'mmdit', 'vae'} (only 'mmdit' is differentiated;
    leaves may be ``jax.ShapeDtypeStruct``, compiling needs shapes only); noise [B, h, w, C]; cond
    {'context' [B, L, D], 'mask' [B, L], 'pooled' [B, D]}; uncond (the same, batch 1); the sampler config."""
    name: str
    pipe: TextToImage
    params: Dict[str, Any]
    noise: jax.Array
    cond: Dict[str, jax.Array]
    uncond: Dict[str, jax.Array]
    sampler_cfg: sampler_lib.SamplerConfig


def make_problem(size: str = "tiny", *, batch: int = 2, resolution: int = 64, steps: int = 28,
                 guidance: float = 4.0, **mmdit_overrides) -> Problem:
    """The DRaFT problem at ``size``: 'tiny' is configs/tiny.py's model (``load_run_config``), any
    other name a ``bench_lib.SIZES`` DiT (``make_setup``, e.g. 'cpu46m') with the tiny config's VAE
    given that DiT's latent channels. ``mmdit_overrides``: ``MMDiTConfig`` fields (tests shrink it)."""
    model = config_lib.load_run_config(TINY_CONFIG).model
    _, mmdit_cfg, vae_cfg = config_lib.build_model_configs(model)
    rng = jax.random.PRNGKey(0)
    if size == "tiny":
        mmdit_cfg = dataclasses.replace(mmdit_cfg, **mmdit_overrides)
        text_tokens, mmdit_params = model.llm_max_length + model.byt5_max_length, None
    else:
        setup = bench_lib.make_setup(size, **mmdit_overrides)
        mmdit_cfg, text_tokens, mmdit_params = setup.cfg, setup.text_tokens, setup.params
        vae_cfg = dataclasses.replace(vae_cfg, latent_channels=mmdit_cfg.in_channels)
    pipe = TextToImage(None, mmdit_cfg, vae_cfg, tokenizer=None)
    side = pipe.latent_shape(resolution, resolution)[0]
    x, t, ctx, mask, pooled = (jnp.asarray(a) for a in bench_lib.random_inputs(mmdit_cfg, batch, side, text_tokens))
    if mmdit_params is None:
        init = MMDiT(mmdit_cfg).init
        mmdit_params = jax.eval_shape(init, rng, x[:1], t[:1], ctx[:1], mask[:1], pooled[:1])["params"]
    vae_params = jax.eval_shape(AutoencoderKL(vae_cfg).init, rng, jnp.zeros((1, resolution, resolution, 3)))
    params = nn.meta.unbox({"mmdit": mmdit_params, "vae": vae_params["params"]})
    cond = {"context": ctx, "mask": mask, "pooled": pooled}
    uncond = {"context": jnp.zeros_like(ctx[:1]), "mask": mask[:1], "pooled": jnp.zeros_like(pooled[:1])}
    cfg = sampler_lib.SamplerConfig(num_steps=steps, guidance_scale=guidance, shift=pipe.mu(resolution, resolution))
    name = (f"{size} DiT ({mmdit_cfg.num_double_blocks} double + {mmdit_cfg.num_single_blocks} single blocks, width "
            f"{mmdit_cfg.num_heads * mmdit_cfg.head_dim}), {resolution} px, batch {batch}, {steps} Euler steps, "
            f"CFG {guidance:g}")
    return Problem(name, pipe, params, x, cond, uncond, cfg)


def draft_grad_fn(problem: Problem, k: int, remat: bool):
    """grad(mmdit params, vae params, noise, cond, uncond) -> d loss / d mmdit params: the DRaFT-K
    loss (``reward_loss`` of ``redness`` of the decoded sample) with remat of the last K steps on/off."""
    pipe = problem.pipe

    def loss(mmdit, vae, noise, cond, uncond):
        p = {"mmdit": mmdit, "vae": vae}
        x0 = sampler_lib.sample_trajectory(pipe.velocity, p, noise, cond, uncond, problem.sampler_cfg,
                                           grad_last_k=k, remat=remat)[0]
        return rlhf_losses.reward_loss(redness(pipe.decode_latents(p, x0)))

    return jax.grad(loss)


def measure(problem: Problem, ks: Sequence[int] = (1, 2, 4, 8), *, run: bool = False,
            compiler_options=None) -> List[Dict[str, Any]]:
    """One row per (K, remat), remat on first: {'K', 'remat', 'temp MiB', 'total MiB', 'compile s'}
    (+ 'run s', one execution after compiling, with ``run``) and the raw '_memory' bytes
    (``stages/plan.compiled_memory``: arguments, outputs, aliased, temp, generated_code, total).
    ``compiler_options``: XLA options for ``compile`` (tests pass
    ``{'xla_backend_optimization_level': 0}``: half the compile time, the same buffer assignment)."""
    p = problem
    args = (p.params["mmdit"], p.params["vae"], p.noise, p.cond, p.uncond)
    if run:  # abstract leaves -> N(0, 0.02^2) arrays (bench_lib.make_setup's scale); values do not matter here
        fill = lambda a: 0.02 * jax.random.normal(jax.random.PRNGKey(a.size % 9973), a.shape, a.dtype)
        args = jax.tree_util.tree_map(lambda a: fill(a) if isinstance(a, jax.ShapeDtypeStruct) else a, args)
    rows = []
    for remat in (True, False):
        for k in ks:
            t0 = time.perf_counter()
            compiled = jax.jit(draft_grad_fn(p, k, remat)).lower(*args).compile(compiler_options)
            compile_s = time.perf_counter() - t0
            mem = compiled_memory(compiled)
            row = {"K": k, "remat": "on" if remat else "off", "temp MiB": mem["temp"] / MIB,
                   "total MiB": mem["total"] / MIB, "compile s": compile_s}
            if run:
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                row["run s"] = time.perf_counter() - t0
            row["_memory"] = mem
            rows.append(row)
            print(f"  K={k} remat={row['remat']}: temp {row['temp MiB']:.1f} MiB, total {row['total MiB']:.1f} MiB, "
                  f"compile {compile_s:.1f} s" + (f", run {row['run s']:.1f} s" if run else ""), flush=True)
    return rows


def check_claim(rows: List[Dict[str, Any]], tolerance: float):
    """(passed, message). growth = temp bytes at the largest K minus at the smallest, for remat on
    and off; passes when remat off grows (> 0) and remat on grows by at most ``tolerance`` times
    that (a fraction: remat on may keep one latent per step, not a step's activations)."""
    ks = sorted({r["K"] for r in rows})
    temp = {(r["K"], r["remat"]): r["_memory"]["temp"] for r in rows}
    growth = {remat: temp[ks[-1], remat] - temp[ks[0], remat] for remat in ("on", "off")}
    passed = growth["off"] > 0 and growth["on"] <= tolerance * growth["off"]
    describe = lambda remat: f"remat {remat} {growth[remat] / MIB:+.1f} MiB ({growth[remat] / temp[ks[0], remat]:+.1%})"
    return passed, (f"temp growth K={ks[0]} -> {ks[-1]}: {describe('on')}, {describe('off')}; on / off = "
                    f"{growth['on'] / max(growth['off'], 1):.2%}, tolerance {tolerance:.0%}: "
                    f"{'PASS' if passed else 'FAIL'} (claim: remat off grows with K, remat on does not)")


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny"] + sorted(s for s in bench_lib.SIZES if s != "tiny"),
                    help="'tiny': configs/tiny.py's model; else a bench_lib DiT (cpu46m: the mid size)")
    ap.add_argument("--depth", type=int, default=0,
                    help="double and single blocks each of the DiT (0: the size's own; fewer compile faster)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=64, help="image side in pixels")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="largest temp growth over K allowed with remat on, as a fraction of remat off's")
    ap.add_argument("--run", action="store_true", help="also time one execution per row")
    args = ap.parse_args()

    depth = dict(num_double_blocks=args.depth, num_single_blocks=args.depth) if args.depth else {}
    problem = make_problem(args.size, batch=args.batch, resolution=args.resolution, steps=args.steps,
                           guidance=args.guidance, **depth)
    n_dit = bench_lib.num_params(problem.params["mmdit"])
    print(f"DRaFT-K memory: {problem.name}; DiT {n_dit / 1e6:.2f}M params, VAE "
          f"{bench_lib.num_params(problem.params['vae']) / 1e6:.2f}M; reward: redness (a simple differentiable "
          f"image score, not a learned reward). Memory is XLA:CPU's buffer assignment of the compiled gradient "
          f"(memory_analysis; what tools/plan.py reads), jax {jax.__version__}, XLA_FLAGS={os.environ['XLA_FLAGS']!r}",
          flush=True)
    rows = measure(problem, [int(k) for k in args.ks.split(",")], run=args.run)
    passed, message = check_claim(rows, args.tolerance)
    bench_lib.print_table([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                          f"DRaFT-K gradient memory, {problem.name}")
    print(message)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
