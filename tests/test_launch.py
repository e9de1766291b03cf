"""Launchers in --dry-run: exact commands, quoting that survives spaces and quotes, clear errors."""
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from launch import slurm, tpu_vm  # noqa: E402

NASTY = 'sample.prompts=("a red circle", "it\'s 红色 $HOME `x`")'
BASE = ["--name", "seedream", "--zone", "us-east5-a", "--dry-run"]


def _dry(main, argv, capsys):
    assert main(argv) == 0
    return capsys.readouterr().out


def _remote_argv(line: str):
    """Split a printed gcloud ssh line, return (gcloud argv, argv of the remote python command)."""
    argv = shlex.split(line)
    remote = next(a for a in argv if a.startswith("--command="))[len("--command="):]
    words = shlex.split(remote)
    start = words.index("python3")
    end = words.index("2>&1") if "2>&1" in words else len(words)
    return argv, words[start:end]


def test_run_quotes_overrides_through_two_shells(capsys):
    out = _dry(tpu_vm.main, ["run", *BASE, "--config", "configs/tiny.py", "--workdir", "/mnt/gcs/runs/my run",
                             "--set", "mesh.fsdp=32", "--set", NASTY], capsys)
    lines = out.strip().splitlines()
    assert len(lines) == 1
    argv, python = _remote_argv(lines[0])
    assert argv[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "seedream", "--zone=us-east5-a"]
    assert "--worker=all" in argv
    assert python == ["python3", "-m", "seedream_jax.main", "--config=configs/tiny.py",
                      "--workdir=/mnt/gcs/runs/my run", "--config.distributed.mode=cluster",
                      "--config.mesh.fsdp=32", "--config." + NASTY]


def test_run_detached_and_logs(capsys):
    out = _dry(tpu_vm.main, ["run", *BASE, "--config", "configs/tiny.py", "--workdir", "/mnt/gcs/r",
                             "--set", "distributed.initialization_timeout=600", "--detach"], capsys)
    remote = next(a for a in shlex.split(out) if a.startswith("--command="))
    assert "nohup python3 -m seedream_jax.main" in remote and "> logs/run.log 2>&1 &" in remote
    assert "distributed.mode=cluster" not in remote  # the user's distributed.* override is kept alone
    out = _dry(tpu_vm.main, ["logs", *BASE, "--worker", "3"], capsys)
    assert shlex.split(out)[-2:] == ["--worker=3", "--command=tail -n 200 -F ~/seedream-jax/logs/run.log"]


def test_create_queued_and_direct(capsys):
    out = _dry(tpu_vm.main, ["create", *BASE, "--accelerator-type", "v5p-64", "--queued", "--spot",
                             "--project", "my-proj"], capsys)
    create, describe = [shlex.split(line) for line in out.strip().splitlines()]
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "seedream", "--project=my-proj",
                      "--node-id=seedream", "--zone=us-east5-a", "--accelerator-type=v5p-64",
                      "--runtime-version=v2-alpha-tpuv5", "--spot"]
    assert describe[3:6] == ["queued-resources", "describe", "seedream"]
    out = _dry(tpu_vm.main, ["create", *BASE, "--accelerator-type", "v4-8"], capsys)
    assert shlex.split(out) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "seedream", "--zone=us-east5-a",
                                "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]


def test_install_mount_delete(capsys):
    out = _dry(tpu_vm.main, ["install", *BASE, "--repo", "https://example.com/o/seedream-jax.git",
                             "--ref", "v1.0"], capsys)
    remote = next(a for a in shlex.split(out) if a.startswith("--command="))
    assert "git clone --quiet --depth 1 --branch v1.0 https://example.com/o/seedream-jax.git ~/seedream-jax" in remote
    assert remote.endswith("python3 -m pip install -q -U 'jax[tpu]' && bash install.sh")
    out = _dry(tpu_vm.main, ["install", *BASE, "--copy"], capsys)
    assert [shlex.split(line)[:2] for line in out.strip().splitlines()] == [
        ["git", "archive"], ["gcloud", "compute"], ["gcloud", "compute"]]
    out = _dry(tpu_vm.main, ["mount", *BASE, "--bucket", "my-bucket"], capsys)
    assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs" in out
    out = _dry(tpu_vm.main, ["delete", *BASE, "--queued"], capsys)
    assert shlex.split(out) == ["gcloud", "compute", "tpus", "queued-resources", "delete", "seedream",
                                "--zone=us-east5-a", "--force", "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["run", *BASE, "--config", "c.py", "--workdir", "gs://bucket/run"], "do not understand gs:// URLs"),
    (["run", *BASE, "--config", "c.py", "--workdir", "/w", "--set", "steps"], "expected KEY=VALUE"),
    (["run", *BASE, "--config", "c.py", "--workdir", "/w", "--set", "a..b=1"], "expected KEY=VALUE"),
    (["create", *BASE, "--accelerator-type", "v5p"], "expected <generation>-<cores>"),
    (["create", *BASE, "--accelerator-type", "v5p-8", "--reserved"], "--reserved needs --queued"),
    (["mount", *BASE, "--bucket", "gs://b"], "bare bucket name"),
    (["create", "--name", "Bad_Name", "--zone", "z", "--accelerator-type", "v5p-8", "--dry-run"], "--name 'Bad_Name'"),
    (["install", *BASE], "one of the arguments --repo --copy is required"),
])
def test_tpu_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        tpu_vm.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


SLURM = ["--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--account", "proj",
         "--config", "configs/tiny.py", "--workdir", "/shared/runs/gpu 32", "--set", NASTY, "--dry-run"]


def test_slurm_script_one_task_per_gpu(capsys):
    out = _dry(slurm.main, SLURM, capsys)
    script, submit = out.rsplit("\n", 2)[0], out.strip().splitlines()[-1]
    assert submit == "sbatch seedream.sbatch"
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 'export SEEDREAM_NUM_PROCESSES="$SLURM_NTASKS"'):
        assert line in script.splitlines(), line
    assert ':12355"' in script and "scontrol show hostnames" in script
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "bash", "-c"]
    inner = shlex.split(srun[4].split("exec ", 1)[1])
    assert srun[4].startswith("export SEEDREAM_PROCESS_ID=$SLURM_PROCID; export SEEDREAM_LOCAL_DEVICE_IDS=$SLURM_LOCALID;")
    assert inner == ["python", "-m", "seedream_jax.main", "--config=configs/tiny.py", "--workdir=/shared/runs/gpu 32",
                     "--config.distributed.mode=cluster", "--config." + NASTY]


def test_slurm_script_runs_in_bash_with_the_override_intact(tmp_path, capsys):
    """Execute the generated srun line with stand-ins for srun and python: argv arrives unchanged."""
    out = _dry(slurm.main, SLURM[:-1] + ["--per", "node", "--python", "fakepython", "--dry-run"], capsys)
    assert "#SBATCH --ntasks-per-node=1" in out and "SEEDREAM_LOCAL_DEVICE_IDS" not in out
    srun_line = next(line for line in out.splitlines() if line.startswith("srun "))
    for name, body in (("srun", 'shift\n"$@"'), ("fakepython", 'echo "rank=$SEEDREAM_PROCESS_ID"; printf "%s\\n" "$@"')):
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", SLURM_PROCID="3")
    printed = subprocess.run(["bash", "-c", srun_line], capture_output=True, text=True, env=env,
                             check=True).stdout.splitlines()
    assert printed == ["rank=3", "-m", "seedream_jax.main", "--config=configs/tiny.py",
                       "--workdir=/shared/runs/gpu 32", "--config.distributed.mode=cluster", "--config." + NASTY]


@pytest.mark.parametrize("extra, message", [
    (["--time", "forever"], "--time 'forever'"),
    (["--nodes", "0"], "must be >= 1"),
    (["--job-name", "my job"], "--job-name 'my job'"),
    (["--set", "=3"], "expected KEY=VALUE"),
])
def test_slurm_bad_arguments(extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        slurm.main(SLURM + extra)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_entry_point_dry_run():
    out = subprocess.run([sys.executable, "-m", "launch.tpu_vm", "delete", *BASE], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "gcloud compute tpus tpu-vm delete seedream --zone=us-east5-a --quiet"
