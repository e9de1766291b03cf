"""AOT planner: will the pretrain step fit, and what does it cost, on a given mesh?

Compiles the real pretrain train step (the loop's own step, state layout and shardings) for
abstract inputs on N virtual CPU devices and prints parameters per component, FLOPs per step
(XLA's count and the analytic 6·N·T estimate) and per-device memory against accelerator chips.
Nothing is allocated: a 10B-parameter config plans on a laptop (compiling it takes minutes).

    python tools/plan.py                                       # full size, 64 devices, 1024 px
    python tools/plan.py --resolution 512 --batch 256 --mesh data=1,fsdp=64,tensor=1
    python tools/plan.py --size tiny --devices 8 --resolution 64 --batch 8
    python tools/plan.py --dtype bfloat16 --remat dots --frozen vae conditioner/text_encoder/llm

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import os
import sys


def parse_mesh(text: str) -> dict:
    """'data=1,fsdp=64,tensor=1' -> {'data': 1, 'fsdp': 64, 'tensor': 1} (-1 = the rest)."""
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"--mesh item {item!r} is not axis=size (e.g. data=1,fsdp=64,tensor=1)")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="full", choices=("tiny", "small", "full"), help="model size preset")
    p.add_argument("--devices", type=int, default=64, help="virtual CPU devices (sets XLA_FLAGS before JAX starts)")
    p.add_argument("--mesh", type=parse_mesh, default=None,
                   help="mesh axes, e.g. data=1,fsdp=64,tensor=1 (default: fsdp over all devices)")
    p.add_argument("--resolution", type=int, default=1024, help="image side in pixels")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: 4 per device)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="compute dtype (model.dtype)")
    p.add_argument("--remat", default=None, help='model.remat_policy: none | full | dots | "double=dots,single=full"')
    p.add_argument("--attention", default=None, help="model.attention_impl: xla | cudnn | splash (TPU only)")
    p.add_argument("--rules", default=None, help="sharding rules preset: fsdp | data_parallel")
    p.add_argument("--frozen", nargs="*", default=None, help="pretrain.frozen path prefixes (default: vae)")
    return p


def _gb(n: float) -> str:
    return f"{n / 1e9:8.2f} GB"


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_plan(plan) -> str:
    """The printed report of a ``seedream_jax.stages.plan.Plan``."""
    from seedream_jax.stages.plan import CHIP_MEMORY
    lines = [f"pretrain step: {plan.resolution}x{plan.resolution} px, global batch {plan.batch}, dtype {plan.dtype}, "
             f"remat {plan.remat_policy}, attention {plan.attention_impl or 'xla'}, rules {plan.rules}, "
             f"frozen {list(plan.frozen)}",
             f"mesh: {plan.mesh} = {plan.devices} devices (compiled for {plan.backend})", "",
             "parameters"]
    for name, n in plan.params.items():
        lines.append(f"  {name:20s} {_count(n):>10s}")
    xla_total = plan.flops_per_device * plan.devices
    a = plan.flops_analytic
    lines += ["", "FLOPs per step (global batch)",
              f"  XLA cost_analysis    {xla_total:10.3e}  ({plan.flops_per_device:.3e} per device x {plan.devices})",
              f"  analytic             {a['total']:10.3e}  (6·N·T: mmdit {a['mmdit']:.2e} + attention "
              f"{a['attention']:.2e} + text encoders {a['text']:.2e}; frozen parts 2·N·T)",
              f"  XLA / analytic       {xla_total / a['total']:10.2f}", "",
              "memory per device (XLA memory_analysis)"]
    m = plan.memory
    for key in ("arguments", "outputs", "aliased", "temp", "generated_code", "total"):
        label = {"aliased": "aliased (donated)", "total": "total = args + out - aliased + temp + code"}.get(key, key)
        lines.append(f"  {label:44s} {_gb(m[key])}")
    lines += ["", "verdict (per chip)"]
    for chip, capacity in CHIP_MEMORY.items():
        headroom = capacity - m["total"]
        verdict = "fits" if headroom > 0 else "does NOT fit"
        lines.append(f"  {chip:8s} {capacity / 1e9:5.0f} GB: {verdict}, headroom {headroom / 1e9:+.2f} GB "
                     f"({headroom / capacity * 100:+.0f}%)")
    if plan.backend == "cpu":
        lines += ["", "note: compiled for virtual CPU devices. The shardings and array sizes are those of the "
                  "TPU/GPU program, but XLA:CPU fuses, lays out and schedules differently, so 'temp' (and the total) "
                  "is an estimate of the accelerator's; plan with margin."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.devices < 1:
        raise SystemExit("--devices must be >= 1")
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                       if not f.startswith("--xla_force_host_platform_device_count")) + " " + flag
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    from seedream_jax import config_lib
    from seedream_jax.stages.plan import plan_pretrain

    if jax.device_count() < args.devices:
        raise SystemExit(f"JAX already started with {jax.device_count()} devices (< --devices {args.devices}); "
                         "run tools/plan.py in a fresh process")
    devices = jax.devices()[:args.devices]
    cfg = config_lib.base_config(args.size)
    for key, value in (("dtype", args.dtype), ("remat_policy", args.remat), ("attention_impl", args.attention)):
        if value is not None:
            cfg.model[key] = value
    if args.rules is not None:
        cfg.sharding.rules = args.rules
    if args.frozen is not None:
        cfg.pretrain.frozen = tuple(args.frozen)
    mesh = args.mesh or {"data": 1, "fsdp": -1, "tensor": 1}
    batch = args.batch or 4 * args.devices
    try:
        plan = plan_pretrain(cfg, resolution=args.resolution, batch=batch, mesh_spec=mesh, devices=devices)
    except ValueError as e:
        raise SystemExit(f"plan: {e}") from None
    print(format_plan(plan))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
