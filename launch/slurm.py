"""SLURM launcher for multi-node GPU runs: writes an sbatch script and submits it.

    python -m launch.slurm --nodes 4 --gpus-per-node 8 --partition gpu --time 24:00:00 \\
        --config configs/tiny.py --workdir /shared/runs/gpu32 --set mesh.fsdp=32 --set mesh.data=1
    python -m launch.slurm ... --dry-run      # print the script and the sbatch command only

One JAX process per GPU (``--per gpu``, default: each task drives GPU ``$SLURM_LOCALID``) or per
node (``--per node``: each task drives all the node's GPUs). Every task gets the coordinator
(first node of the allocation), the process count and its rank through
``SEEDREAM_COORDINATOR_ADDRESS`` / ``SEEDREAM_NUM_PROCESSES`` / ``SEEDREAM_PROCESS_ID``
(read by ``seedream_jax.parallel.distributed``). The repository must be on a filesystem every node
sees, with the environment installed (``--venv`` activates a virtualenv first).
"""
import argparse
import os
import re
import shlex
import sys
from typing import List

from launch.common import LaunchError, add_run_arguments, execute, main_command

_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


def task_command(args) -> List[str]:
    """The command ``srun`` starts once per task: set this task's rank, then exec the trainer."""
    train = shlex.join(main_command(args.config, args.workdir, args.set, python=args.python))
    per_task = ["export SEEDREAM_PROCESS_ID=$SLURM_PROCID"]
    if args.per == "gpu":
        per_task.append("export SEEDREAM_LOCAL_DEVICE_IDS=$SLURM_LOCALID")
    return ["bash", "-c", "; ".join(per_task + [f"exec {train}"])]


def sbatch_script(args) -> str:
    """The sbatch script text."""
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise LaunchError(f"--nodes ({args.nodes}) and --gpus-per-node ({args.gpus_per_node}) must be >= 1")
    if not _TIME.match(args.time):
        raise LaunchError(f"--time {args.time!r}: expected SLURM time like 24:00:00 or 2-00:00:00")
    if not 1024 <= args.port <= 65535:
        raise LaunchError(f"--port {args.port}: expected 1024..65535")
    tasks_per_node = args.gpus_per_node if args.per == "gpu" else 1
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={args.job_name}",
             f"#SBATCH --nodes={args.nodes}",
             f"#SBATCH --ntasks-per-node={tasks_per_node}",
             f"#SBATCH --gpus-per-node={args.gpus_per_node}",
             f"#SBATCH --time={args.time}",
             f"#SBATCH --output={args.output}"]
    lines += [f"#SBATCH --partition={args.partition}"] if args.partition else []
    lines += [f"#SBATCH --account={args.account}"] if args.account else []
    lines += [f"#SBATCH --cpus-per-task={args.cpus_per_task}"] if args.cpus_per_task else []
    lines += ["set -euo pipefail", f"cd {shlex.quote(os.path.abspath(args.repo_dir))}"]
    lines += [f"source {shlex.quote(os.path.join(args.venv, 'bin', 'activate'))}"] if args.venv else []
    lines += ["# process 0 runs on the first node; every task connects to it",
              "export SEEDREAM_COORDINATOR_ADDRESS=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)"
              f":{args.port}\"",
              "export SEEDREAM_NUM_PROCESSES=\"$SLURM_NTASKS\"",
              shlex.join(["srun", "--kill-on-bad-exit=1", *task_command(args)]), ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.slurm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--per", choices=("gpu", "node"), default="gpu", help="one JAX process per GPU or per node")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--time", default="24:00:00")
    p.add_argument("--cpus-per-task", type=int, default=0)
    p.add_argument("--job-name", default="seedream")
    p.add_argument("--output", default="logs/%x-%j.out", help="SLURM log file pattern")
    p.add_argument("--port", type=int, default=12355, help="coordinator port on the first node")
    p.add_argument("--repo-dir", default=".", help="the repository on the shared filesystem")
    p.add_argument("--venv", default="", help="virtualenv to activate on each node")
    p.add_argument("--python", default="python")
    add_run_arguments(p, "run directory on the shared filesystem")
    p.add_argument("--script", default="", help="where to write the sbatch script (default <job-name>.sbatch)")
    p.add_argument("--dry-run", action="store_true", help="print the script and the sbatch command, run nothing")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not re.match(r"^[A-Za-z0-9_.-]+$", args.job_name):
        parser.error(f"--job-name {args.job_name!r}: letters, digits, '_', '.', '-' only")
    try:
        script = sbatch_script(args)
    except LaunchError as e:
        parser.error(str(e))
    path = args.script or f"{args.job_name}.sbatch"
    if args.dry_run:
        print(f"# {path}\n{script}")
    else:
        with open(path, "w") as f:
            f.write(script)
        print(f"wrote {path}")
    return execute([["sbatch", path]], args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
