"""Sampler latency: 28 Euler steps with classifier-free guidance, our compiled sampler (the
whole loop one XLA program) vs a diffusers-style Python loop over FluxTransformer2DModel calls
with the same weights. The one-time compile cost of ours is reported separately.

    python benchmarks/sampler_latency.py --size cpu46m            # CPU, issue 6b
    python benchmarks/sampler_latency.py --size small --gpu       # H100
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import bench_lib  # noqa: E402
from seedream_jax.models.mmdit import MMDiT  # noqa: E402
from seedream_jax.sampling import schedules  # noqa: E402
from seedream_jax.sampling.sampler import make_sampler  # noqa: E402


def jax_sampler(setup, batch: int, steps: int, guidance: float):
    """(sample() -> latents, compile seconds)."""
    model = MMDiT(setup.cfg)
    x, _, ctx, mask, pooled = (jnp.asarray(a) for a in bench_lib.random_inputs(
        setup.cfg, batch, setup.latent_side, setup.text_tokens))
    velocity = lambda p, x, t, c: model.apply({"params": p}, x, t, c["ctx"], c["mask"], c["pooled"])
    sample = jax.jit(make_sampler(velocity, num_steps=steps, guidance_scale=guidance))
    cond = {"ctx": ctx, "mask": mask, "pooled": pooled}
    uncond = {"ctx": jnp.zeros_like(ctx[:1]), "mask": mask[:1], "pooled": jnp.zeros_like(pooled[:1])}
    params = jax.device_put(setup.params)
    mu = schedules.resolution_shift(setup.image_tokens)
    t0 = time.perf_counter()
    compiled = sample.lower(params, x, cond, uncond, mu).compile()
    compile_s = time.perf_counter() - t0
    return (lambda: compiled(params, x, cond, uncond, mu)), compile_s


def torch_sampler(setup, batch: int, steps: int, guidance: float, device: str, dtype):
    """sample() -> latents: the Euler/CFG loop as diffusers pipelines write it."""
    import torch
    model = bench_lib.torch_flux(setup, device, dtype).eval()
    inp = bench_lib.torch_inputs(setup, batch, device)
    x = inp["hidden_states"].to(dtype)
    ctx = torch.cat([torch.zeros_like(inp["encoder_hidden_states"]), inp["encoder_hidden_states"]]).to(dtype)
    pooled = torch.cat([torch.zeros_like(inp["pooled_projections"]), inp["pooled_projections"]]).to(dtype)
    times = torch.from_numpy(np.asarray(schedules.sampling_times(steps, schedules.resolution_shift(
        setup.image_tokens)))).to(device)

    @torch.no_grad()
    def sample():
        lat = x
        for i in range(steps):
            t = times[i].expand(2 * batch).to(dtype)
            v = model(hidden_states=torch.cat([lat, lat]), encoder_hidden_states=ctx, pooled_projections=pooled,
                      timestep=t, img_ids=inp["img_ids"], txt_ids=inp["txt_ids"]).sample
            v_u, v_c = v.float().chunk(2)
            lat = (lat.float() + (times[i + 1] - times[i]) * (v_u + guidance * (v_c - v_u))).to(dtype)
        return lat

    return sample


def main():
    ap = bench_lib.base_parser(__doc__, batch=1, iters=3)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--guidance", type=float, default=4.0)
    args = ap.parse_args()

    import torch
    setup, device, matmul = bench_lib.setup_from_args(args)
    flops = bench_lib.model_flops_per_sample(setup, training=False) * 2 * args.batch * args.steps
    print(f"{args.size}: {bench_lib.num_params(setup.params) / 1e6:.1f}M params, batch {args.batch} (x2 for CFG), "
          f"{args.steps} steps, {flops / 1e12:.3f} model TFLOP per sample call, matmul rate {matmul / 1e12:.2f} TFLOP/s",
          flush=True)
    ours, compile_s = jax_sampler(setup, args.batch, args.steps, args.guidance)
    sync_t = (lambda r: torch.cuda.synchronize()) if args.gpu else (lambda r: None)
    theirs = torch_sampler(setup, args.batch, args.steps, args.guidance, device,
                           torch.bfloat16 if args.gpu else torch.float32)
    rows = []
    for name, fn, sync in [("jax compiled sampler (ours)", ours, jax.block_until_ready),
                           ("diffusers-style Euler loop", theirs, sync_t)]:
        t = bench_lib.median(bench_lib.time_calls(fn, warmup=1, iters=args.iters, sync=sync))
        rows.append({"implementation": name, "latency s": t, "model TFLOP/s": flops / t / 1e12,
                     "of matmul rate": flops / t / matmul})
        print(f"  {name}: {t:.3f} s", flush=True)
    for row in rows:
        row["time / ours"] = row["latency s"] / rows[0]["latency s"]
    rows[0]["compile s (once)"] = compile_s
    rows[1]["compile s (once)"] = 0.0
    bench_lib.print_table(rows, f"Sampler, {args.size}, {args.steps} steps, CFG {args.guidance}, {device}")


if __name__ == "__main__":
    main()
