"""Print parameter counts per component for each model size preset.

    python tools/param_count.py            # tiny, small, full
    python tools/param_count.py --sizes full

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse

from seedream_jax import config_lib
from seedream_jax.models.param_count import component_parameter_counts


def _fmt(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(config_lib.MODEL_SIZES), choices=list(config_lib.MODEL_SIZES))
    args = parser.parse_args()
    rows = {}
    for size in args.sizes:
        model = config_lib.model_config(size)
        rows[size] = component_parameter_counts(*config_lib.build_model_configs(model), resolution=model.resolution)
    names = list(next(iter(rows.values())))
    print(f"{'component':20s}" + "".join(f"{s:>16s}" for s in rows))
    for n in names:
        print(f"{n:20s}" + "".join(f"{_fmt(rows[s][n]):>10s} {rows[s][n]/max(rows[s]['total'],1)*100:4.0f}%" for s in rows))


if __name__ == "__main__":
    main()
