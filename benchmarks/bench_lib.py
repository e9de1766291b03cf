"""Shared pieces of the DiT benchmarks: model sizes, the same weights in JAX and in diffusers,
FLOP counting, timing and table printing.

The PyTorch side is diffusers' ``FluxTransformer2DModel`` loaded with exactly our MMDiT's weights
(the interop renames), so both frameworks run the same architecture, tokens and optimizer.
"""
import dataclasses
import os
import statistics
import time
from typing import Callable, Dict, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.interop import convert
from seedream_jax.interop.flux import flux_name_fn, flux_position_ids, mmdit_to_diffusers_config
from seedream_jax.models.mmdit import MMDiT, MMDiTConfig, patchify

# name: (MMDiT config fields, latent side at the benchmark resolution, text tokens)
SIZES = {
    # configs/tiny.py's DiT: width 128, 2 double + 2 single blocks, 32x32x4 latents in 4x4 patches
    # (64 image tokens), 64 text tokens (LLM 48 + ByT5 16); without its sin-cos position embedding
    # (one parameter-free add, which diffusers' Flux does not have).
    "tiny": (dict(in_channels=4, patch_size=4, num_heads=4, head_dim=32, num_double_blocks=2, num_single_blocks=2,
                  context_dim=128, pooled_dim=128, axes_dims=(8, 12, 12), rope_base_grid=8, text_ids="zeros"), 32, 64),
    # The CPU reference: 6 double + 6 single blocks, width 384, 256 image + 64 text tokens.
    "cpu46m": (dict(in_channels=16, num_heads=6, head_dim=64, num_double_blocks=6, num_single_blocks=6,
                    context_dim=384, pooled_dim=384, axes_dims=(16, 24, 24), rope_base_grid=16), 32, 64),
    # config_lib's 'small' DiT at 512 px (64x64x16 latents -> 1024 image tokens).
    "small": (dict(in_channels=16, num_heads=8, head_dim=128, num_double_blocks=6, num_single_blocks=6,
                   context_dim=1024, pooled_dim=1024, axes_dims=(16, 56, 56), rope_base_grid=32), 64, 256),
    # ~1.1B: width 1536 (12 heads of 128), 8 double + 12 single blocks, 512 px.
    "1b": (dict(in_channels=16, num_heads=12, head_dim=128, num_double_blocks=8, num_single_blocks=12,
                context_dim=1536, pooled_dim=1536, axes_dims=(16, 56, 56), rope_base_grid=32), 64, 256),
}


@dataclasses.dataclass
class Setup:
    cfg: MMDiTConfig
    latent_side: int
    text_tokens: int
    params: dict

    @property
    def image_tokens(self) -> int:
        return (self.latent_side // self.cfg.patch_size) ** 2


def make_setup(size: str, *, dtype: str = "float32", attention_impl=None, remat_policy: str = "none",
               seed: int = 0, **fields_override) -> Setup:
    """Random MMDiT weights (N(0, 0.02) matrices, so activations stay finite in bf16);
    ``fields_override``: other ``MMDiTConfig`` fields (e.g. ``style_tag_sizes``)."""
    fields, side, text = SIZES[size]
    cfg = MMDiTConfig(**{**fields, **fields_override}, dtype=dtype, attention_impl=attention_impl,
                      remat_policy=remat_policy)
    model = MMDiT(cfg)
    x, t, ctx, mask, pooled = random_inputs(cfg, 1, side, text, seed)
    params = jax.jit(lambda r: nn.meta.unbox(model.init(r, x, t, ctx, mask, pooled)["params"]))(jax.random.PRNGKey(seed))
    params = jax.tree_util.tree_map(lambda p: p if p.ndim < 2 else 0.02 * jax.random.normal(
        jax.random.PRNGKey(p.size % 9973), p.shape, p.dtype), params)
    return Setup(cfg, side, text, jax.device_get(params))


def random_inputs(cfg: MMDiTConfig, batch: int, side: int, text: int, seed: int = 0):
    """(latents [B, side, side, C], t [B], context [B, L, ctx], mask [B, L], pooled [B, P]) float32."""
    r = np.random.default_rng(seed)
    return (r.normal(size=(batch, side, side, cfg.in_channels)).astype(np.float32),
            r.uniform(0.05, 0.95, size=(batch,)).astype(np.float32),
            r.normal(size=(batch, text, cfg.context_dim)).astype(np.float32),
            np.ones((batch, text), bool), r.normal(size=(batch, cfg.pooled_dim)).astype(np.float32))


def num_params(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- FLOPs

def _tokens_through(path: Sequence[str], n_img: int, n_txt: int) -> int:
    """How many rows one sample sends through the Dense layer at ``path``."""
    top, name = path[0], "/".join(path)
    if top.startswith("time_text_embed") or "norm1" in name or top == "norm_out" or "/norm/" in name:
        return 1  # adaLN / embedders act once per sample
    if top == "context_embedder" or "add_" in name or "context" in name:
        return n_txt
    if top.startswith("single_transformer_blocks"):
        return n_img + n_txt
    return n_img  # x_embedder, proj_out, image stream of double blocks


def model_flops_per_sample(setup: Setup, training: bool = True) -> float:
    """Matmul FLOPs of one sample: 2 x rows x kernel size per Dense, plus joint attention
    (4 T^2 width per block: QK^T and PV); training counts forward + backward as 3x forward."""
    n_img, n_txt, cfg = setup.image_tokens, setup.text_tokens, setup.cfg
    flops = 0.0
    for path, leaf in jax.tree_util.tree_leaves_with_path(setup.params):
        keys = tuple(str(k.key) for k in path)
        if keys[-1] == "kernel":
            flops += 2.0 * _tokens_through(keys, n_img, n_txt) * np.prod(leaf.shape)
    total = n_img + n_txt
    flops += (cfg.num_double_blocks + cfg.num_single_blocks) * 4.0 * total * total * cfg.hidden_size
    return flops * (3.0 if training else 1.0)


# ----------------------------------------------------------------------------- diffusers twin

def torch_flux(setup: Setup, device: str, dtype=None):
    """diffusers FluxTransformer2DModel holding exactly ``setup.params``."""
    import torch
    from diffusers import FluxTransformer2DModel
    kwargs = {k: v for k, v in mmdit_to_diffusers_config(setup.cfg).items() if not k.startswith("_")}
    model = FluxTransformer2DModel(**kwargs)
    state = {name: torch.from_numpy(np.array(arr)) for name, arr in convert.export_params(setup.params, flux_name_fn)}
    model.load_state_dict(state, strict=True)
    model = model.to(device)
    return model.to(dtype) if dtype is not None else model


def torch_inputs(setup: Setup, batch: int, device: str, seed: int = 0):
    """The same inputs as ``random_inputs``, packed the way diffusers Flux takes them."""
    import torch
    x, t, ctx, _, pooled = random_inputs(setup.cfg, batch, setup.latent_side, setup.text_tokens, seed)
    b, h, w, c = x.shape
    packed = torch.from_numpy(np.asarray(patchify(x, setup.cfg.patch_size)))
    img_ids, txt_ids = flux_position_ids(setup.cfg, h, w, setup.text_tokens)
    as_t = lambda a: torch.from_numpy(np.asarray(a)).to(device)
    return dict(hidden_states=packed.to(device), encoder_hidden_states=as_t(ctx), pooled_projections=as_t(pooled),
                timestep=as_t(t), img_ids=as_t(img_ids), txt_ids=as_t(txt_ids))


# ----------------------------------------------------------------------------- command line

def base_parser(doc: str, batch: int, iters: int):
    """The options both benchmarks take: --size, --batch, --iters, --gpu."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="cpu46m", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--gpu", action="store_true", help="bf16 compute, cuDNN attention, PyTorch on cuda")
    return ap


def setup_from_args(args, **kwargs):
    """(Setup, torch device, matmul FLOP/s): bf16 + cuDNN on GPU, fp32 on CPU with PyTorch on every core."""
    import torch
    if not args.gpu:
        torch.set_num_threads(os.cpu_count())
    dtype, impl = ("bfloat16", "cudnn") if args.gpu else ("float32", None)
    setup = make_setup(args.size, dtype=dtype, attention_impl=impl, **kwargs)
    matmul = jax_matmul_rate(8192 if args.gpu else 2048, jnp.bfloat16 if args.gpu else jnp.float32)
    return setup, "cuda" if args.gpu else "cpu", matmul


# ----------------------------------------------------------------------------- timing

def time_calls(fn: Callable[[], object], *, warmup: int, iters: int, sync: Callable[[object], None]) -> List[float]:
    """Seconds per call of ``fn`` (``sync`` blocks on its result), after ``warmup`` calls."""
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def jax_matmul_rate(n: int = 2048, dtype=jnp.float32, iters: int = 10) -> float:
    """FLOP/s of an n x n x n matmul on the default JAX device (random inputs)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    t = median(time_calls(lambda: f(a, b), warmup=2, iters=iters, sync=jax.block_until_ready))
    return 2.0 * n ** 3 / t


def profile_ops(fn: Callable[[], object], sync: Callable[[object], None], trace_dir: str, calls: int = 2,
                top: int = 15) -> List[Dict[str, object]]:
    """Trace ``calls`` calls of ``fn`` with ``jax.profiler`` and sum the XLA ops' time per call,
    grouped by op kind (the op name without its numeric suffix): rows of {op kind, ms/call, count}."""
    import collections
    import glob
    import gzip
    import json
    import re
    sync(fn())
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(calls):
            sync(fn())
    path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True), key=lambda p: os.path.getmtime(p))[-1]
    events = json.load(gzip.open(path))["traceEvents"]
    ms, count = collections.defaultdict(float), collections.Counter()
    for e in events:  # complete events of XLA ops; skip Python frames and runtime bookkeeping
        if e.get("ph") == "X" and not e["name"].startswith(("$", "Thunk", "Pjit", "Common", "Slinky")):
            kind = re.sub(r"[.\d]+$", "", e["name"])
            ms[kind] += e["dur"] / 1e3 / calls
            count[kind] += 1
    rows = [{"op kind": k, "ms/call": v, "ops/call": count[k] // calls} for k, v in ms.items()]
    return sorted(rows, key=lambda r: -r["ms/call"])[:top]


def print_table(rows: List[Dict[str, object]], title: str) -> str:
    """Print ``rows`` (dicts with the same keys) as a Markdown table; returns the text."""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
