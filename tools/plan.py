"""AOT planner: will the pretrain (or an rlhf) step fit, and what does it cost, on a given mesh?

Compiles the real train step (the loop's own step, state layout and shardings) for abstract
inputs on N virtual CPU devices and prints parameters per component, FLOPs per step (XLA's count
and the analytic 6·N·T estimate) and per-device memory against accelerator chips. Nothing is
allocated: a 10B-parameter config plans on a laptop (compiling it takes minutes).

    python tools/plan.py                                       # full size, 64 devices, 1024 px
    python tools/plan.py --resolution 512 --batch 256 --mesh data=1,fsdp=64,tensor=1
    python tools/plan.py --size tiny --devices 8 --resolution 64 --batch 8
    python tools/plan.py --dtype bfloat16 --remat dots --frozen vae conditioner/text_encoder/llm
    python tools/plan.py --config configs/full_v5p64.py --text-cache --depths 1,2 --check-depth 3
    python tools/plan.py --table                               # the full size on v5p and H100/H200 pods
    python tools/plan.py --config configs/full_v5p64.py --stage rlhf --method draft --draft-k 4 \
        --resolution 512 --batch 32 --depths 1,2               # one rlhf update (refl | draft | grpo)

--depths A,B compiles the MMDiT at A and B depth units (the full size's 10 double + 20 single
blocks are 10 units of 1 + 2) and extrapolates memory and FLOPs linearly to the config's depth;
--check-depth C compiles a third depth and prints the fit's error there. --table plans the full
size at 512 and 1024 px for TPU v5p-64 / v5p-128 and 1, 4, 16 nodes of 8 H100 / H200 (one row per
pod: per-device memory, XLA FLOPs per step, the step time implied at --mfu of the chip's peak bf16
FLOP/s, the verdict) and compares with MaxDiffusion's published Flux-dev step.

--stage rlhf plans one step of the rlhf stage (``cfg.rlhf``; --method, --num-steps, --draft-k and
--group-size override its method, sampler steps, DRaFT's K and GRPO's group size): refl or draft
is one update, grpo one rollout of group-size samples per prompt and its inner_steps updates;
--batch counts prompts, --resolution sets rlhf.height and width (default the section's). The
frozen reference DiT of grpo's KL is in the state; the learned rewards are replaced by a
weightless pixel score (``stages/plan.PLAN_REWARD``). XLA counts each loop body once, so its
FLOPs for an rlhf step count the sampler's steps as one: the analytic line counts them all.

XLA:CPU removes the optimisation barriers JAX puts around rematerialised code, so its CSE pass
merges the recomputation back into the forward pass, and its default scheduler starts work as
early as it can: a CPU-compiled step keeps the activations remat was meant to drop. The planner
therefore compiles with CSE off and the memory-minimising CPU scheduler (--no-cpu-remat-flags to
compile as XLA:CPU does by default). The CPU schedule still keeps every block's all-gathered
weights live and more activations than a TPU/GPU schedule would: read its memory as an upper bound.

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import math
import os
import sys
import time


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
    p.add_argument("--devices", type=int, default=None,
                   help="virtual CPU devices (sets XLA_FLAGS before JAX starts; default 64, or the config's mesh)")
    p.add_argument("--mesh", type=parse_mesh, default=None,
                   help="mesh axes, e.g. data=1,fsdp=64,tensor=1 (default: fsdp over all devices)")
    p.add_argument("--resolution", type=int, default=None,
                   help="image side in pixels (default 1024, or the config's; rlhf: rlhf.height)")
    p.add_argument("--batch", type=int, default=None,
                   help="global batch (default: 4 per device, or the config's; rlhf: prompts, 1 per device)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="compute dtype (model.dtype)")
    p.add_argument("--remat", default=None, help='model.remat_policy: none | full | dots | "double=dots,single=full"')
    p.add_argument("--attention", default=None, help="model.attention_impl: xla | cudnn | splash (TPU only)")
    p.add_argument("--rules", default=None, help="sharding rules preset: fsdp | data_parallel")
    p.add_argument("--frozen", nargs="*", default=None,
                   help="<stage>.frozen path prefixes (default: pretrain vae; rlhf vae conditioner)")
    p.add_argument("--stage", default="pretrain", choices=("pretrain", "rlhf"), help="the step to plan")
    p.add_argument("--method", default=None, choices=("refl", "draft", "grpo"), help="rlhf.method")
    p.add_argument("--num-steps", type=int, default=None, help="rlhf.num_steps (sampler steps)")
    p.add_argument("--draft-k", type=int, default=None, help="rlhf.draft.k (DRaFT: gradient through the last K steps)")
    p.add_argument("--group-size", type=int, default=None, help="rlhf.grpo.group_size (samples per prompt)")
    p.add_argument("--config", default=None, help="a config file (configs/*.py): its model, sharding, pretrain.frozen, "
                   "mesh, pretrain.train.batch_size and data.image_size (flags given here override them)")
    p.add_argument("--text-cache", action="store_true",
                   help="the batch carries the frozen conditioner's cached outputs (the LLM does not run)")
    p.add_argument("--depths", type=parse_depths, default=None,
                   help="A,B: compile A and B depth units of the MMDiT and extrapolate linearly to its depth")
    p.add_argument("--check-depth", type=int, default=None, help="with --depths: one more depth to check the fit on")
    p.add_argument("--table", action="store_true",
                   help="plan the full size on every pod of POD_TARGETS and print the table")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the implied step time")
    p.add_argument("--cpu-remat-flags", action=argparse.BooleanOptionalAction, default=True,
                   help="compile with XLA:CPU's CSE off and its memory-minimising scheduler (see above)")
    return p


def parse_depths(text: str) -> tuple:
    """'1,2' -> (1, 2)."""
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        out = ()
    if len(out) != 2 or min(out) < 1 or out[0] == out[1]:
        raise argparse.ArgumentTypeError(f"--depths {text!r} is not two different positive depths (e.g. 1,2)")
    return out


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
    size = f"{plan.resolution}x{plan.resolution} px"
    settings = (f"dtype {plan.dtype}, remat {plan.remat_policy}, attention {plan.attention_impl or 'xla'}, "
                f"rules {plan.rules}, frozen {list(plan.frozen)}")
    if plan.rlhf:
        lines = format_rlhf(plan) + [f"{size}, {settings}"]
    else:
        lines = [f"pretrain step: {size}, global batch {plan.batch}, {settings}, "
                 f"text {'from the text cache' if plan.text_cache else 'encoded in the step'}"]
    lines += [f"mesh: {plan.mesh} = {plan.devices} devices (compiled for {plan.backend})", ""]
    if plan.extrapolation:
        lines += format_extrapolation(plan) + [""]
    lines += ["parameters"]
    for name, n in plan.params.items():
        lines.append(f"  {name:20s} {_count(n):>10s}")
    xla_total = plan.flops_per_device * plan.devices
    a = plan.flops_analytic
    xla = f"  XLA cost_analysis    {xla_total:10.3e}  ({plan.flops_per_device:.3e} per device x {plan.devices})"
    if plan.rlhf:
        lines += ["", "FLOPs per step (global batch)",
                  f"  analytic             {a['total']:10.3e}  (every sampler step counted; DiT 2·N·T + attention per "
                  f"image forward, x3 with gradient: sampling {a['sampling']:.2e} + trained {a['trained']:.2e} + "
                  f"reference {a['reference']:.2e} + text encoders {a['text']:.2e}; VAE decode and reward not counted)",
                  xla + ": each loop body counted once (the sampler's steps as one step), so not the step's total"]
    else:
        lines += ["", "FLOPs per step (global batch)", xla,
                  f"  analytic             {a['total']:10.3e}  (6·N·T: mmdit {a['mmdit']:.2e} + attention "
                  f"{a['attention']:.2e} + text encoders {a['text']:.2e}; frozen parts 2·N·T)",
                  f"  XLA / analytic       {xla_total / a['total']:10.2f}"]
    lines += ["", "memory per device (XLA memory_analysis)"]
    m = plan.memory
    for key in ("arguments", "outputs", "aliased", "temp", "generated_code", "total"):
        label = {"aliased": "aliased (donated)", "total": "total = args + out - aliased + temp + code"}.get(key, key)
        lines.append(f"  {label:44s} {_gb(m[key])}")
    lines += ["", f"verdict (per chip; 'fits' = headroom >= {HEADROOM:.0%})"]
    for chip, capacity in CHIP_MEMORY.items():
        headroom = capacity - m["total"]
        lines.append(f"  {chip:8s} {capacity / 1e9:5.0f} GB: {verdict(m['total'], capacity)}, headroom "
                     f"{headroom / 1e9:+.2f} GB ({headroom / capacity * 100:+.0f}%)")
    if plan.backend == "cpu":
        lines += ["", "note: compiled for virtual CPU devices. The shardings and array sizes are those of the "
                  "TPU/GPU program, but XLA:CPU fuses, lays out and schedules differently, so 'temp' (and the total) "
                  "is an estimate of the accelerator's; plan with margin."]
    return "\n".join(lines)


def format_rlhf(plan) -> list:
    """The first lines of an rlhf plan's report: what one step of its method runs."""
    r = plan.rlhf
    sampler = f"{r['num_steps']} {r['solver']} steps, CFG {r['guidance_scale']:g}"
    if r["method"] == "grpo":
        kl = f"KL {r['kl_weight']:g} to the frozen reference DiT" if r["kl_weight"] > 0 else "no KL"
        what = (f"rollout of {plan.batch} prompts x {r['group_size']} = {plan.batch * r['group_size']} SDE samples "
                f"({sampler}, eta {r['eta']:g}), then {r['updates']} updates on {r['train_steps']} of the steps, {kl}")
    elif r["method"] == "draft":
        what = f"{plan.batch} prompts, ODE sampler ({sampler}), gradient through the last {r['k']} (remat), 1 update"
    else:
        first, last = r["window"]
        what = (f"{plan.batch} prompts, ODE sampler ({sampler}) to a step drawn in {first}..{last}, one x0 "
                "prediction with gradient, 1 update")
    return [f"rlhf step, method {r['method']}: {what}",
            f"reward: {r['reward']} (a weightless differentiable stand-in for rlhf.rewards {r['rewards_replaced']})"]


HEADROOM = 0.10  # a plan 'fits' a chip with at least this share of its memory left


def verdict(total: float, capacity: float) -> str:
    """'fits' (headroom >= HEADROOM), 'tight' (fits, less headroom) or 'does NOT fit'."""
    headroom = (capacity - total) / capacity
    return "fits" if headroom >= HEADROOM else ("tight" if headroom >= 0 else "does NOT fit")


def format_extrapolation(plan) -> list:
    """How an extrapolated plan reached its depth: the compiled depths, per-unit costs, the check."""
    e = plan.extrapolation
    d, s = e["unit"]
    depths = ", ".join(f"{k} ({k * d}+{k * s} blocks, {e['compile_seconds'][k]:.0f} s)" for k in e["measured"])
    fit = e["fit"]
    per_unit = fit["arguments"][1] - fit["aliased"][1] + fit["outputs"][1] + fit["temp"][1] + fit["generated_code"][1]
    lines = [f"depth: compiled {depths} units of {d} double + {s} single blocks; "
             f"extrapolated linearly to {e['units']} units = {plan.blocks[0]}+{plan.blocks[1]} blocks",
             f"  per unit: memory {per_unit / 1e9:.3f} GB per device (temp {fit['temp'][1] / 1e9:.3f}), "
             f"XLA FLOPs {fit['flops_per_device'][1]:.3e} per device"]
    if e["check"]:
        c = e["check"]
        lines.append(f"  check at {e['check_depth']} units: predicted - measured = {c['total'] * 100:+.3f}% of memory "
                     f"(temp {c['temp'] * 100:+.3f}%), {c['flops_per_device'] * 100:+.3f}% of FLOPs")
    return lines


# The pods of --table: (name, chip, devices, per-device batch) per resolution. One JAX device is one
# chip (a v5p chip's two TensorCores are one device), so v5p-64 is 32 devices and v5p-128 is 64.
POD_TARGETS = (
    ("v5p-64", "TPU v5p", 32), ("v5p-128", "TPU v5p", 64),
    ("1 x 8 H100", "H100", 8), ("4 x 8 H100", "H100", 32), ("16 x 8 H100", "H100", 128),
    ("1 x 8 H200", "H200", 8), ("4 x 8 H200", "H200", 32), ("16 x 8 H200", "H200", 128),
)
# Per resolution: (per-device batch, remat policy) of the table's plans.
TABLE_SETTINGS = {512: (4, "dots"), 1024: (1, "full")}
# MaxDiffusion's published Flux-dev (12B) training step: v5p-8 (4 chips), 1024 px, global batch 8.
MAXDIFFUSION_FLUX = dict(pod="v5p-8", chips=4, resolution=1024, batch=8, seconds=1.769)


def step_seconds(flops_per_device: float, chip: str, mfu: float) -> float:
    """The step time implied by XLA's FLOPs per device at ``mfu`` of ``chip``'s peak bf16 FLOP/s."""
    from seedream_jax.stages.plan import CHIP_PEAK_BF16
    return flops_per_device / (mfu * CHIP_PEAK_BF16[chip])


def table_rows(plans: dict, mfu: float, targets=POD_TARGETS) -> list:
    """One row per pod of ``targets`` ((name, chip, devices)) and resolution: plans is
    {(resolution, devices): Plan}; a row's verdict is its plan's memory against its chip's."""
    from seedream_jax.stages.plan import CHIP_MEMORY
    rows = []
    for (resolution, devices), plan in sorted(plans.items()):
        for name, chip, n in targets:
            if n != devices:
                continue
            total = plan.memory["total"]
            rows.append(dict(pod=name, chip=chip, devices=n, resolution=resolution, batch=plan.batch,
                             per_device_batch=plan.batch // n, remat=plan.remat_policy, memory=total,
                             capacity=CHIP_MEMORY[chip], headroom=(CHIP_MEMORY[chip] - total) / CHIP_MEMORY[chip],
                             flops=plan.flops_per_device * n, seconds=step_seconds(plan.flops_per_device, chip, mfu),
                             verdict=verdict(total, CHIP_MEMORY[chip])))
    return rows


def format_table(rows: list, mfu: float) -> str:
    head = (f"{'pod':12s} {'chips':>5s} {'px':>5s} {'batch':>9s} {'remat':>5s} {'mem/chip':>9s} {'HBM':>5s} "
            f"{'headroom':>8s} {'XLA FLOPs/step':>14s} {'s/step @' + format(mfu, '.0%'):>11s} {'img/s':>7s}  verdict")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['pod']:12s} {r['devices']:5d} {r['resolution']:5d} {r['batch']:5d} ({r['per_device_batch']})"
                     f" {r['remat']:>5s} {r['memory'] / 1e9:6.1f} GB {r['capacity'] / 1e9:5.0f} {r['headroom']:8.0%} "
                     f"{r['flops']:14.3e} {r['seconds']:11.3f} {r['batch'] / r['seconds']:7.1f}  {r['verdict']}")
    return "\n".join(lines)


CPU_REMAT_FLAGS = ("--xla_disable_hlo_passes=cse", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED")


def _set_xla_flags(devices: int, remat_flags: bool):
    keep = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    extra = [f for f in CPU_REMAT_FLAGS if remat_flags and f.split("=")[0] not in {k.split("=")[0] for k in keep}]
    os.environ["XLA_FLAGS"] = " ".join(keep + extra + [f"--xla_force_host_platform_device_count={devices}"])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _plan(cfg, args, stage: str = "pretrain", **kwargs):
    from seedream_jax.stages.plan import PLANNERS, plan_extrapolated
    if args.depths:
        return plan_extrapolated(cfg, fit_depths=args.depths, check_depth=args.check_depth, stage=stage, **kwargs)
    return PLANNERS[stage](cfg, **kwargs)


def full_table_config():
    """The full size as the table plans it: bf16 compute (fp32 master weights and AdamW state), the
    VAE and the whole conditioner frozen (latents and text from their caches), FSDP over all chips."""
    from seedream_jax import config_lib
    cfg = config_lib.base_config("full")
    cfg.model.dtype = "bfloat16"
    cfg.pretrain.frozen = ("vae", "conditioner")
    return cfg


def run_table(args) -> int:
    import jax
    devices = jax.devices()
    plans, t_all = {}, time.time()
    wanted = sorted({n for _, _, n in POD_TARGETS})
    for resolution, (per_device, remat) in TABLE_SETTINGS.items():
        for n in wanted:
            cfg = full_table_config()
            cfg.model.remat_policy = remat
            t0 = time.time()
            plan = _plan(cfg, args, resolution=resolution, batch=per_device * n,
                         mesh_spec={"data": 1, "fsdp": n, "tensor": 1}, devices=devices[:n], text_cache=True)
            plans[(resolution, n)] = plan
            print(f"[{time.time() - t0:5.0f} s] {resolution} px on {n} devices, batch {plan.batch}:", flush=True)
            print("  " + "\n  ".join(format_extrapolation(plan) if plan.extrapolation else []), flush=True)
    rows = table_rows(plans, args.mfu)
    print()
    print(f"full size ({_count(plans[(1024, 8)].params['total'])} parameters, MMDiT "
          f"{_count(plans[(1024, 8)].params['mmdit'])} trained), bf16 compute, fp32 master weights + AdamW + EMA, "
          f"VAE and conditioner frozen, text from the text cache, FSDP over all chips; "
          f"step time = XLA FLOPs per chip / ({args.mfu:.0%} x peak bf16: v5p 459, H100/H200 989 TFLOP/s)")
    print(format_table(rows, args.mfu))
    print()
    print(format_flux_comparison(args, devices))
    print(f"\ntable wall time {time.time() - t_all:.0f} s")
    return 0


def flux_dev_flops(resolution: int, batch: int) -> float:
    """6 N T + attention for a full-parameter Flux-dev (11.9B; 19 double + 38 single blocks of width
    3072; T5 at 512 tokens) training step: the FLOPs behind MaxDiffusion's published figure."""
    t = (resolution // 16) ** 2 + 512
    return batch * (6 * 11.9e9 * t + 3 * 4 * t * t * 3072 * 57)


def format_flux_comparison(args, devices) -> str:
    from seedream_jax.stages.plan import CHIP_MEMORY, CHIP_PEAK_BF16
    f = MAXDIFFUSION_FLUX
    cfg = full_table_config()
    cfg.model.remat_policy = "full"
    plan = _plan(cfg, args, resolution=f["resolution"], batch=f["batch"],
                 mesh_spec={"data": 1, "fsdp": f["chips"], "tensor": 1}, devices=devices[:f["chips"]], text_cache=True)
    peak = f["chips"] * CHIP_PEAK_BF16["TPU v5p"]
    flux = flux_dev_flops(f["resolution"], f["batch"])
    ours = plan.flops_per_device * f["chips"]
    ours_s = step_seconds(plan.flops_per_device, "TPU v5p", args.mfu)
    return "\n".join([
        f"MaxDiffusion Flux-dev comparison ({f['pod']} = {f['chips']} chips, {f['resolution']} px, global batch "
        f"{f['batch']}: {f['seconds']} s/step published)",
        f"  Flux-dev step, 6·N·T + attention (11.9B, T = 4096 image + 512 T5 tokens): {flux:.3e} FLOPs; "
        f"at {f['seconds']} s that is {flux / f['seconds'] / peak:.0%} of the pod's peak bf16",
        f"  ours (full size, MMDiT {_count(plan.params['mmdit'])} trained, remat full): XLA {ours:.3e} FLOPs "
        f"({ours / flux:.2f}x Flux-dev's), memory {plan.memory['total'] / 1e9:.1f} GB per chip "
        f"-> {verdict(plan.memory['total'], CHIP_MEMORY['TPU v5p'])}; "
        f"implied {ours_s:.3f} s/step at {args.mfu:.0%} MFU ({f['seconds'] / ours_s:.2f}x faster than the published "
        f"Flux-dev step; at Flux-dev's implied utilisation: {ours / (flux / f['seconds']):.3f} s)"])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_depth and not args.depths:
        raise SystemExit("--check-depth needs --depths")
    rlhf = args.stage == "rlhf"
    if rlhf and (args.table or args.text_cache):
        raise SystemExit("--table and --text-cache plan the pretrain step (the rlhf step encodes its prompts)")
    if not rlhf and any(v is not None for v in (args.method, args.num_steps, args.draft_k, args.group_size)):
        raise SystemExit("--method, --num-steps, --draft-k and --group-size need --stage rlhf")
    if args.table:
        if not args.depths:
            args.depths, args.check_depth = (1, 2), args.check_depth or 3
        _set_xla_flags(max(n for _, _, n in POD_TARGETS), args.cpu_remat_flags)
        return run_table(args)
    _set_xla_flags(args.devices or 64, args.cpu_remat_flags)  # before seedream_jax's import-time XLA defaults
    from seedream_jax import config_lib  # starts no JAX backend: XLA_FLAGS can still change below
    cfg = (config_lib.load_run_config(args.config) if args.config else config_lib.base_config(args.size))
    mesh = args.mesh or (dict(cfg.mesh) if args.config else {"data": 1, "fsdp": -1, "tensor": 1})
    n_devices = args.devices or (math.prod(mesh.values()) if args.config and -1 not in mesh.values() else 64)
    if n_devices < 1:
        raise SystemExit("--devices must be >= 1")
    _set_xla_flags(n_devices, args.cpu_remat_flags)
    import jax

    if jax.device_count() < n_devices:
        raise SystemExit(f"JAX already started with {jax.device_count()} devices (< --devices {n_devices}); "
                         "run tools/plan.py in a fresh process")
    devices = jax.devices()[:n_devices]
    for key, value in (("dtype", args.dtype), ("remat_policy", args.remat), ("attention_impl", args.attention)):
        if value is not None:
            cfg.model[key] = value
    if args.rules is not None:
        cfg.sharding.rules = args.rules
    if args.frozen is not None:
        cfg[args.stage].frozen = tuple(args.frozen)
    for key, value in (("method", args.method), ("num_steps", args.num_steps)):
        if value is not None:
            cfg.rlhf[key] = value
    if args.draft_k is not None:
        cfg.rlhf.draft.k = args.draft_k
    if args.group_size is not None:
        cfg.rlhf.grpo.group_size = args.group_size
    note = ""
    if cfg.model.attention_impl in ("splash", "cudnn") and jax.default_backend() == "cpu":
        note = (f"\nnote: attention_impl {cfg.model.attention_impl!r} needs its accelerator; planned with XLA's "
                "attention, which materialises the T x T scores the fused kernel never stores (more memory)")
        cfg.model.attention_impl = None
    if rlhf:
        resolution = args.resolution or int(cfg.rlhf.height)
        batch = args.batch or (int(cfg.rlhf.train.batch_size) if args.config else n_devices)
        kwargs = {}
    else:
        resolution = args.resolution or (int(cfg.data.image_size) if args.config else 1024)
        batch = args.batch or (int(cfg.pretrain.train.batch_size) if args.config else 4 * n_devices)
        kwargs = {"text_cache": args.text_cache}
    t0 = time.time()
    try:
        plan = _plan(cfg, args, args.stage, resolution=resolution, batch=batch, mesh_spec=mesh, devices=devices,
                     **kwargs)
    except ValueError as e:
        raise SystemExit(f"plan: {e}") from None
    print(format_plan(plan) + note)
    print(f"\nplanned in {time.time() - t0:.0f} s")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
