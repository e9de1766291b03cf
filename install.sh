#!/usr/bin/env bash
# Set up seedream-jax on a fresh machine.
#   bash install.sh          # the framework (JAX CPU build; see README for TPU/GPU)
#   bash install.sh --test   # plus PyTorch (CPU), transformers, diffusers and pytest for the test suite
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# A CJK-capable font renders the synthetic world's Chinese text and the sample-grid captions.
if ! fc-list 2>/dev/null | grep -qi "wqy"; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[install] fonts-wqy-microhei (CJK font) via apt"
    apt-get update -qq && apt-get install -y -qq fonts-wqy-microhei fonts-dejavu-core fontconfig >/dev/null
  else
    echo "[install] WARNING: no CJK font found; install fonts-wqy-microhei or set SEEDREAM_CJK_FONT=/path/to/font.ttc"
  fi
fi

if [ "${1:-}" = "--test" ]; then
  # Pin torch first: an unpinned torch pulls a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q -e ".[torch,test]"
else
  "$PY" -m pip install -q -e .
fi
echo "[install] done: $("$PY" -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())')"
