"""Two JAX processes (4 CPU devices each) train through the real loop on one 8-device fsdp mesh.

The processes join through ``seedream_jax.parallel.distributed.initialize`` (coordinator on
127.0.0.1), shard the toy model's first kernel across both of them, write one Orbax checkpoint
together and restore it exactly; the result equals a single-process run on 8 devices fed the
same global batches (fp32 tolerance: the cross-process reductions add in another order). A second
pair of processes scores a host-callback reward in one jitted program over both
(``tests/host_reward_worker.py``).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST_COMPILE
from seedream_jax.parallel import distributed

HERE = os.path.dirname(__file__)
STEPS = 6
TIMEOUT_S = 120  # a coordinator that never gets its peer fails the test instead of hanging


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(script: str, *args: str):
    """Run ``script`` (in tests/) as processes 0 and 1 of a two-process JAX run on loopback, with
    ``args`` before the coordinator, process count and process id; each process's RESULT json."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}",
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    for var in ("SLURM_NTASKS", "SLURM_NPROCS", "OMPI_COMM_WORLD_SIZE", "SEEDREAM_COORDINATOR_ADDRESS"):
        env.pop(var, None)
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, script), *args, address, "2", str(pid)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for pid in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"multi-process run did not finish in {TIMEOUT_S}s:\n" +
                    "\n".join(p.communicate()[0][-3000:] for p in procs))
    results = []
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-5000:]
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, out[-5000:]
        results.append(json.loads(lines[0][len("RESULT "):]))
    return results


def test_two_processes_train_checkpoint_restore_and_match_one_process(tmp_path, capsys):
    import multihost_worker

    results = _run_two_processes("multihost_worker.py", str(tmp_path / "multi"), str(STEPS))
    for pid, r in enumerate(results):
        assert (r["process_index"], r["process_count"]) == (pid, 2)
        assert (r["global_devices"], r["local_devices"]) == (8, 4)
        assert r["step"] == r["restored_step"] == r["data_position"] == STEPS
        assert r["mismatches"] == [], r["mismatches"]
        # The kernel really is split across the processes: 4 of its 8 shards live here.
        assert not r["kernel_fully_addressable"] and r["kernel_local_shards"] == 4
        assert r["kernel_sharding"] == "P('fsdp', None)"
    assert results[0]["loss"] == results[1]["loss"]

    multihost_worker.main(str(tmp_path / "single"), STEPS, "reference", 1, 0)
    single = json.loads(capsys.readouterr().out.split("RESULT ", 1)[1].splitlines()[0])
    assert single["process_count"] == 1 and single["global_devices"] == 8 and single["mismatches"] == []
    multi = np.load(tmp_path / "multi" / "result.npz")
    ref = np.load(tmp_path / "single" / "result.npz")
    assert sorted(multi.files) == sorted(ref.files) and len(ref.files) > 5
    for key in ref.files:
        np.testing.assert_allclose(multi[key], ref[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert float(ref["loss"]) > 0


def test_resolve_prefers_config_then_environment_then_cluster():
    cfg = {"mode": "auto", "coordinator_address": "", "num_processes": 0, "process_id": -1,
           "local_device_ids": (), "initialization_timeout": 30}
    assert distributed.resolve(cfg, environ={}) == ("single", {})
    assert distributed.resolve(dict(cfg, mode="single"), environ={"SLURM_NTASKS": "8"}) == ("single", {})
    source, kwargs = distributed.resolve(dict(cfg, coordinator_address="10.0.0.1:1234", num_processes=4,
                                              process_id=3, local_device_ids=(0, 1)), environ={})
    assert source == "config" and kwargs == dict(coordinator_address="10.0.0.1:1234", num_processes=4,
                                                 process_id=3, local_device_ids=(0, 1), initialization_timeout=30)
    env = {"SEEDREAM_COORDINATOR_ADDRESS": "h0:99", "SEEDREAM_NUM_PROCESSES": "2", "SEEDREAM_PROCESS_ID": "1",
           "SEEDREAM_LOCAL_DEVICE_IDS": "2,3"}
    assert distributed.resolve(cfg, environ=env) == ("env", dict(
        coordinator_address="h0:99", num_processes=2, process_id=1, local_device_ids=(2, 3),
        initialization_timeout=30))
    assert distributed.resolve(cfg, environ={"SLURM_NTASKS": "16"}) == ("cluster", {"initialization_timeout": 30})
    assert distributed.resolve(cfg, environ={"SLURM_NTASKS": "1"}) == ("single", {})
    assert distributed.resolve(dict(cfg, mode="cluster"), environ={})[0] == "cluster"


def test_resolve_rejects_incomplete_settings():
    cfg = {"mode": "auto", "coordinator_address": "h:1", "num_processes": 2, "process_id": 2}
    with pytest.raises(ValueError, match="process_id < num_processes"):
        distributed.resolve(cfg, environ={})
    with pytest.raises(ValueError, match="distributed.mode 'multi'"):
        distributed.resolve({"mode": "multi"}, environ={})
    with pytest.raises(ValueError, match="SEEDREAM_NUM_PROCESSES=''"):
        distributed.resolve({"mode": "auto"}, environ={"SEEDREAM_COORDINATOR_ADDRESS": "h:1"})


def test_a_host_callback_reward_scores_each_processs_own_rows_and_prompts():
    """A host-callback reward (e.g. the objective scorer in GRPO) inside one jitted program over two
    processes: each process's callbacks see only its devices' rows (2 per device), and every row is
    scored with its own prompt, whichever process made it."""
    import host_reward_worker

    results = _run_two_processes("host_reward_worker.py")
    prompts, images = host_reward_worker.batch_rows()
    want = host_reward_worker.prompt_bytes_score(images, prompts)
    for pid, r in enumerate(results):
        assert r["process_index"] == pid
        np.testing.assert_allclose(r["scores"], want, rtol=1e-6)
        assert r["calls"] == [2, 2, 2, 2]
