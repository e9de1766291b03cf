"""Shared by the launchers: the training command line, config overrides, running or printing commands.

Commands are argument lists end to end; they become text only through ``shlex.join`` (the
printed form, and the remote command string given to ``gcloud ... --command``), so values with
spaces or quotes arrive unchanged.
"""
import re
import shlex
import subprocess
import sys
from typing import List, Sequence

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class LaunchError(ValueError):
    """A bad launcher argument; the message says which and what was expected."""


def add_run_arguments(parser, workdir_help: str) -> None:
    """--config, --workdir and repeatable --set KEY=VALUE: what every launcher passes to main."""
    parser.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py")
    parser.add_argument("--workdir", required=True, help=workdir_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable: --set pretrain.train.steps=1000")


def config_overrides(items: Sequence[str]) -> List[str]:
    """``['pretrain.train.steps=100', 'sample.prompts=("a b", "c")']`` -> ``--config.<key>=<value>`` flags."""
    flags = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.match(key):
            raise LaunchError(f"--set {item!r}: expected KEY=VALUE with a dotted config key, "
                              "e.g. --set pretrain.train.steps=100")
        flags.append(f"--config.{key}={value}")
    return flags


def main_command(config: str, workdir: str, overrides: Sequence[str], python: str = "python") -> List[str]:
    """argv of ``python -m seedream_jax.main`` for a multi-process run (distributed.mode=cluster
    unless an override sets distributed.* itself)."""
    if not config:
        raise LaunchError("--config is required (a file in configs/, e.g. configs/tiny.py)")
    if not workdir:
        raise LaunchError("--workdir is required")
    if workdir.startswith("gs://"):
        raise LaunchError(f"--workdir {workdir!r}: seedream_jax.main writes its workdir with os.path/open, which "
                          "do not understand gs:// URLs; mount the bucket with gcsfuse (tpu_vm.py mount) and pass "
                          "the mount path, e.g. /mnt/gcs/runs/v5p (docs/tpu_v5p.md)")
    flags = config_overrides(overrides)
    if not any(f.startswith("--config.distributed.") for f in flags):
        flags = ["--config.distributed.mode=cluster"] + flags
    return [python, "-m", "seedream_jax.main", f"--config={config}", f"--workdir={workdir}"] + flags


def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> int:
    """Print each command (shell-quoted); unless ``dry_run``, run them in order, stopping at a failure.
    Returns the exit status of the last command run (0 for a dry run)."""
    for cmd in commands:
        print(("" if dry_run else "+ ") + shlex.join(cmd), flush=True)
        if not dry_run:
            code = subprocess.call(list(cmd))
            if code:
                print(f"command failed with exit status {code}: {shlex.join(cmd)}", file=sys.stderr)
                return code
    return 0
