"""XLA flags the framework sets by default, before JAX creates its CPU backend.

``--xla_cpu_experimental_ynn_fusion_type=dot,eltwise`` lets XLA:CPU hand elementwise
fusions to YNNPACK as well as matmuls. Without it, XLA:CPU duplicates the elementwise
backward of an activation (e.g. tanh-GELU) into a transposing loop fusion that feeds the
weight-gradient matmul; that fusion alone took 47-62 ms of a 105 ms MLP backward (B=4, T=320,
384 -> 1536 -> 384). With it the cpu46m MMDiT AdamW step runs 1.7-1.9x faster on a 2-core CPU
(benchmarks/RESULTS.md). The flag only touches the CPU backend; GPU and TPU are unaffected.

It is applied only to a single-device CPU process: with several virtual CPU devices
(``--xla_force_host_platform_device_count``, used for mesh tests), SPMD partitioning produces
layouts YNNPACK rejects (observed on a 1x1x8 tensor-parallel step: "Instruction with unsupported
layout in YNN fusion"), so those processes keep XLA's own fusions.

A flag the user already put in ``XLA_FLAGS`` wins; ``SEEDREAM_XLA_DEFAULTS=0`` turns this off.
Setting flags has no effect once JAX's backend exists, so ``seedream_jax`` applies them at import.
"""
import os
import re

CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "dot,eltwise"}


def _virtual_cpu_devices(flags: str) -> int:
    found = re.search(r"--xla_force_host_platform_device_count=(\d+)", flags)
    return int(found.group(1)) if found else 1


def apply(environ=os.environ) -> str:
    """Append the default flags missing from ``environ['XLA_FLAGS']``; returns the new value."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("SEEDREAM_XLA_DEFAULTS", "1") != "0" and _virtual_cpu_devices(flags) == 1:
        extra = [f"--{name}={value}" for name, value in CPU_FLAGS.items() if f"--{name}" not in flags]
        flags = " ".join([flags] + extra).strip() if extra else flags
        environ["XLA_FLAGS"] = flags
    return flags
