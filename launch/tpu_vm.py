"""Cloud TPU VM launcher: create, install, mount a bucket, run a stage on all workers, logs, delete.

    python -m launch.tpu_vm create  --name seedream --zone us-east5-a --accelerator-type v5p-64 --queued --spot
    python -m launch.tpu_vm install --name seedream --zone us-east5-a --repo https://github.com/ORG/seedream-jax
    python -m launch.tpu_vm mount   --name seedream --zone us-east5-a --bucket my-bucket
    python -m launch.tpu_vm run     --name seedream --zone us-east5-a --config configs/tiny.py \\
        --workdir /mnt/gcs/runs/v5p --set mesh.fsdp=32 --set mesh.data=1 --detach
    python -m launch.tpu_vm logs    --name seedream --zone us-east5-a
    python -m launch.tpu_vm delete  --name seedream --zone us-east5-a --queued

Every subcommand takes ``--dry-run``: print the exact commands (shell-quoted) and run nothing.
On a multi-host slice every worker runs the same command; ``run`` adds
``--config.distributed.mode=cluster`` so each process joins the others (JAX reads the slice's
topology from the TPU metadata server).
"""
import argparse
import re
import shlex
import sys
from typing import List

from launch.common import LaunchError, add_run_arguments, execute, main_command

REPO_DIR = "~/seedream-jax"  # on each worker
# Default TPU VM software versions per generation (``gcloud compute tpus versions list``).
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
                    "v6e": "v2-alpha-tpuv6e"}
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ACCEL = re.compile(r"^(v4|v5litepod|v5p|v6e)-(\d+)$")

GCSFUSE_INSTALL = (
    "if ! command -v gcsfuse >/dev/null; then "
    "echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt "
    "gcsfuse-$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; "
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; "
    "sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi")


def _gcloud(args, *words: str) -> List[str]:
    cmd = ["gcloud", "compute", "tpus", *words]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd


def _ssh(args, remote: str, worker: str = "all") -> List[str]:
    """gcloud ssh running the bash command ``remote`` on ``worker`` ('all' or an index)."""
    return _gcloud(args, "tpu-vm", "ssh", args.name) + [f"--zone={args.zone}", f"--worker={worker}",
                                                        f"--command={remote}"]


def create_commands(args) -> List[List[str]]:
    match = _ACCEL.match(args.accelerator_type)
    if not match:
        raise LaunchError(f"--accelerator-type {args.accelerator_type!r}: expected <generation>-<cores>, "
                          f"generation one of {sorted(RUNTIME_VERSIONS)} (e.g. v5p-64)")
    version = args.version or RUNTIME_VERSIONS[match.group(1)]
    if args.spot and args.reserved:
        raise LaunchError("--spot and --reserved exclude each other")
    if args.queued:
        cmd = _gcloud(args, "queued-resources", "create", args.name) + [
            f"--node-id={args.name}", f"--zone={args.zone}", f"--accelerator-type={args.accelerator_type}",
            f"--runtime-version={version}"]
        cmd += ["--spot"] if args.spot else []
        cmd += ["--reserved"] if args.reserved else []
        return [cmd, _gcloud(args, "queued-resources", "describe", args.name) + [f"--zone={args.zone}"]]
    if args.reserved:
        raise LaunchError("--reserved needs --queued (reservations are requested through queued resources)")
    cmd = _gcloud(args, "tpu-vm", "create", args.name) + [
        f"--zone={args.zone}", f"--accelerator-type={args.accelerator_type}", f"--version={version}"]
    return [cmd + (["--spot"] if args.spot else [])]


def install_commands(args) -> List[List[str]]:
    setup = f"cd {REPO_DIR} && python3 -m pip install -q -U 'jax[tpu]' && bash install.sh"
    if args.repo:
        fetch = (f"rm -rf {REPO_DIR} && git clone --quiet --depth 1 --branch {shlex.quote(args.ref)} "
                 f"{shlex.quote(args.repo)} {REPO_DIR}")
        return [_ssh(args, f"set -euo pipefail; {fetch} && {setup}")]
    archive = "seedream-jax.tar.gz"
    return [["git", "archive", "--format=tar.gz", "--prefix=seedream-jax/", "-o", archive, "HEAD"],
            _gcloud(args, "tpu-vm", "scp", archive, f"{args.name}:~/{archive}") + [f"--zone={args.zone}", "--worker=all"],
            _ssh(args, f"set -euo pipefail; rm -rf {REPO_DIR} && tar xzf ~/{archive} -C ~ && {setup}")]


def mount_commands(args) -> List[List[str]]:
    if args.bucket.startswith("gs://") or "/" in args.bucket.rstrip("/"):
        raise LaunchError(f"--bucket {args.bucket!r}: give the bare bucket name (e.g. my-bucket), not a URL or path")
    point = shlex.quote(args.mount_point)
    remote = (f"set -euo pipefail; {GCSFUSE_INSTALL}; sudo mkdir -p {point} && sudo chown \"$USER\" {point} && "
              f"(mountpoint -q {point} || gcsfuse --implicit-dirs {shlex.quote(args.bucket.rstrip('/'))} {point})")
    return [_ssh(args, remote)]


def run_commands(args) -> List[List[str]]:
    train = shlex.join(main_command(args.config, args.workdir, args.set, python="python3"))
    log = f"logs/{args.log_name}.log"
    if args.detach:  # keeps running after the ssh session ends; follow it with 'logs'
        remote = f"cd {REPO_DIR} && mkdir -p logs && (nohup {train} > {log} 2>&1 &)"
    else:  # stream every worker's output here (also kept in the log file)
        remote = f"set -o pipefail; cd {REPO_DIR} && mkdir -p logs && {train} 2>&1 | tee -a {log}"
    return [_ssh(args, remote)]


def logs_commands(args) -> List[List[str]]:
    return [_ssh(args, f"tail -n {args.lines} -F {REPO_DIR}/logs/{args.log_name}.log", worker=str(args.worker))]


def delete_commands(args) -> List[List[str]]:
    if args.queued:  # --force also deletes the TPU VM the queued resource created
        return [_gcloud(args, "queued-resources", "delete", args.name) + [f"--zone={args.zone}", "--force", "--quiet"]]
    return [_gcloud(args, "tpu-vm", "delete", args.name) + [f"--zone={args.zone}", "--quiet"]]


COMMANDS = {"create": create_commands, "install": install_commands, "mount": mount_commands,
            "run": run_commands, "logs": logs_commands, "delete": delete_commands}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.tpu_vm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
    common.add_argument("--zone", required=True, help="e.g. us-east5-a (v5p)")
    common.add_argument("--project", default="", help="GCP project (default: gcloud's configured one)")
    common.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p = sub.add_parser("create", parents=[common], help="create a TPU VM or a queued resource")
    p.add_argument("--accelerator-type", required=True, help="e.g. v5p-64 (32 chips)")
    p.add_argument("--version", default="", help="TPU software version (default: per generation)")
    p.add_argument("--queued", action="store_true", help="request through a queued resource")
    p.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")
    p.add_argument("--reserved", action="store_true", help="use a reservation (with --queued)")
    p = sub.add_parser("install", parents=[common], help="put the code on every worker and install it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--repo", default="", help="git URL to clone on every worker")
    src.add_argument("--copy", action="store_true", help="copy this checkout's HEAD (git archive + scp)")
    p.add_argument("--ref", default="main", help="branch or tag to clone with --repo")
    p = sub.add_parser("mount", parents=[common], help="install gcsfuse and mount a bucket on every worker")
    p.add_argument("--bucket", required=True, help="bucket name, without gs://")
    p.add_argument("--mount-point", default="/mnt/gcs")
    p = sub.add_parser("run", parents=[common], help="run seedream_jax.main on every worker")
    add_run_arguments(p, "shared run directory, e.g. /mnt/gcs/runs/v5p")
    p.add_argument("--detach", action="store_true", help="run in the background (nohup); follow with 'logs'")
    p.add_argument("--log-name", default="run", help="log file logs/<name>.log on each worker")
    p = sub.add_parser("logs", parents=[common], help="follow a worker's log")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--lines", type=int, default=200)
    p.add_argument("--log-name", default="run")
    p = sub.add_parser("delete", parents=[common], help="delete the TPU VM (or the queued resource)")
    p.add_argument("--queued", action="store_true", help="it was created with --queued")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not _NAME.match(args.name):
        parser.error(f"--name {args.name!r}: lowercase letters, digits and hyphens, starting with a letter")
    try:
        commands = COMMANDS[args.command](args)
    except LaunchError as e:
        parser.error(str(e))
    return execute(commands, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
