"""DiT training-step throughput: our jitted JAX step vs the same architecture in PyTorch.

Both sides train the same MMDiT weights (diffusers ``FluxTransformer2DModel`` on the PyTorch
side) on the same tokens with the flow-matching MSE and AdamW (lr 1e-4, wd 0.01), fp32 master
weights. On CPU both compute in fp32; on GPU both compute in bf16 (ours: bf16 compute dtype;
PyTorch: autocast), ours with cuDNN attention, PyTorch with SDPA (optionally torch.compile).

    python benchmarks/dit_train_step.py --size cpu46m --batch 4             # CPU, issue 6a
    python benchmarks/dit_train_step.py --size small --batch 8 --gpu        # H100, issue 6c
    python benchmarks/dit_train_step.py --size tiny --batch 16 --style-adapter --skip-torch  # CT's cost

Our step is timed with optax's per-tensor AdamW and with the framework's flat AdamW
(``optimizer.flatten``); ``--style-adapter`` adds our step with the CT stage's style adapter.
Prints a table: step time (median), image tokens/s, model TFLOP/s, MFU against the peak and
against the matmul rate measured in the same run, and the JAX / PyTorch speed ratio.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
import bench_lib  # noqa: E402
from seedream_jax.models.mmdit import MMDiT  # noqa: E402
from seedream_jax.training import optimizer as optimizer_lib  # noqa: E402

H100_BF16_PEAK = 989.4e12  # dense bf16 FLOP/s, H100 SXM datasheet


def jax_step_fn(setup, batch: int, flat: bool = False):
    """step() -> loss: one donated, jitted AdamW update of the MMDiT on fixed inputs; ``flat``: the
    framework's ``flat_adamw`` (one update over all parameters raveled into a vector, the lever of
    ``optimizer.flatten``) instead of optax's per-tensor AdamW (same arithmetic)."""
    model = MMDiT(setup.cfg)
    if flat:
        tx = optimizer_lib.flat_adamw(optax.constant_schedule(1e-4), b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    else:
        tx = optax.adamw(1e-4, weight_decay=0.01, mask=lambda p: jax.tree_util.tree_map(lambda x: x.ndim > 1, p))
    x0, t, ctx, mask, pooled = (jnp.asarray(a) for a in bench_lib.random_inputs(
        setup.cfg, batch, setup.latent_side, setup.text_tokens))
    eps = jax.random.normal(jax.random.PRNGKey(7), x0.shape)
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps
    target = eps - x0

    tags = {}
    if setup.cfg.style_tag_sizes:  # every attribute given: ids 1..n, drawn once
        r = np.random.default_rng(3)
        tags["style_tags"] = jnp.asarray(np.stack([r.integers(1, n + 1, size=batch) for n in setup.cfg.style_tag_sizes],
                                                  axis=1), jnp.int32)

    def loss_fn(params):
        v = model.apply({"params": params}, x_t, t, ctx, mask, pooled, **tags)
        return jnp.mean(jnp.square(v.astype(jnp.float32) - target))

    def update(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    update = jax.jit(update, donate_argnums=(0, 1))
    state = {"params": jax.device_put(setup.params)}
    state["opt"] = tx.init(state["params"])

    def step():
        state["params"], state["opt"], loss = update(state["params"], state["opt"])
        return loss

    return step


def torch_step_fn(setup, batch: int, device: str, compile_model: bool):
    """step() -> loss: one AdamW update of the diffusers twin on the same inputs."""
    import torch
    model = bench_lib.torch_flux(setup, device)
    model.train()
    inputs = bench_lib.torch_inputs(setup, batch, device)
    x0 = inputs["hidden_states"]
    t = inputs["timestep"]
    eps = torch.randn_like(x0)
    inputs["hidden_states"] = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
    target = eps - x0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=device == "cuda")
    forward = torch.compile(model) if compile_model else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            v = forward(**inputs).sample
        loss = torch.mean(torch.square(v.float() - target))
        loss.backward()
        opt.step()
        return loss

    return step


def main():
    ap = bench_lib.base_parser(__doc__, batch=4, iters=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile(model)")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--style-adapter", action="store_true",
                    help="also time our step with the CT stage's style adapter (data/style_tags.TAG_SIZES, every tag given)")
    ap.add_argument("--profile", metavar="DIR", help="also trace two of our steps into DIR and print time per XLA op kind")
    args = ap.parse_args()

    import torch
    setup, device, matmul = bench_lib.setup_from_args(args, remat_policy=args.remat)
    flops = bench_lib.model_flops_per_sample(setup) * args.batch
    print(f"{args.size}: {bench_lib.num_params(setup.params) / 1e6:.1f}M params, batch {args.batch}, "
          f"{setup.image_tokens} image + {setup.text_tokens} text tokens, {flops / 1e12:.3f} model TFLOP/step, "
          f"device {jax.devices()[0].device_kind}, matmul rate {matmul / 1e12:.2f} TFLOP/s", flush=True)

    runs = [("jax (ours)", lambda: jax_step_fn(setup, args.batch), jax.block_until_ready),
            ("jax (ours), flat AdamW", lambda: jax_step_fn(setup, args.batch, flat=True), jax.block_until_ready)]
    if args.style_adapter:
        from seedream_jax.data.style_tags import TAG_SIZES
        styled = bench_lib.make_setup(args.size, dtype=setup.cfg.dtype, attention_impl=setup.cfg.attention_impl,
                                      remat_policy=args.remat, style_tag_sizes=TAG_SIZES)
        runs.append(("jax (ours) + style adapter", lambda: jax_step_fn(styled, args.batch), jax.block_until_ready))
    if not args.skip_torch:
        sync = (lambda r: torch.cuda.synchronize()) if args.gpu else (lambda r: r.item())
        runs.append(("pytorch diffusers", lambda: torch_step_fn(setup, args.batch, device, False), sync))
        if args.torch_compile:
            runs.append(("pytorch diffusers + compile", lambda: torch_step_fn(setup, args.batch, device, True), sync))
    rows = []
    for name, build, sync in runs:
        step = build()
        t = bench_lib.median(bench_lib.time_calls(step, warmup=args.warmup, iters=args.iters, sync=sync))
        row = {"implementation": name, "step s": t, "image tokens/s": args.batch * setup.image_tokens / t,
               "model TFLOP/s": flops / t / 1e12, "of matmul rate": flops / t / matmul}
        if args.gpu:
            row["MFU (989 TF peak)"] = flops / t / H100_BF16_PEAK
        rows.append(row)
        print(f"  {name}: {t * 1e3:.1f} ms/step", flush=True)
        del step
    for row in rows:  # > 1: ours is that many times faster than this row
        row["time / ours"] = row["step s"] / rows[0]["step s"]
    bench_lib.print_table(rows, f"DiT training step, {args.size}, batch {args.batch}, {device}")
    if args.profile:
        ops = bench_lib.profile_ops(jax_step_fn(setup, args.batch), jax.block_until_ready, args.profile)
        bench_lib.print_table(ops, f"Our step by XLA op kind (profile in {args.profile})")


if __name__ == "__main__":
    main()
