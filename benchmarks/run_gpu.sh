#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md (issue 6c): one H100, bf16 compute, diffusers on the same GPU.
# Needs a CUDA JAX (pip install 'jax[cuda12]') and the test extras (bash install.sh --test, with a
# CUDA build of torch). Not yet run: no GPU has been available to the project so far.
# Usage: bash benchmarks/run_gpu.sh <small|1b|sampler> [log_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-small}
out=${2:-/tmp}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case $which in
  small) python benchmarks/dit_train_step.py --gpu --size small --batch 16 --torch-compile 2>&1 | tee "$out/train_small.log" ;;
  1b) python benchmarks/dit_train_step.py --gpu --size 1b --batch 8 --torch-compile 2>&1 | tee "$out/train_1b.log" ;;
  sampler) python benchmarks/sampler_latency.py --gpu --size small --batch 4 --iters 5 2>&1 | tee "$out/sampler_small.log" ;;
  *) echo "unknown benchmark '$which' (expected small, 1b or sampler)" >&2; exit 2 ;;
esac
