"""Two real JAX processes read the record pipeline and assemble global batches with
``make_array_from_process_local_data``: the shards are disjoint, cover each global batch, and the
global batches equal a one-process pipeline's (rows in process order); resume is exact per process."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST_COMPILE
from seedream_jax.data import arrayrecord_io
from seedream_jax.data import synthetic as S
from seedream_jax.data import synthetic_records as SR
from seedream_jax.data.pipeline import RecordPipeline

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data_multiprocess_worker as worker  # noqa: E402

TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_shard_and_assemble_global_batches(tmp_path):
    dataset = str(tmp_path / "ds")
    SR.write_record_world(SR.RecordWorldConfig(S.SyntheticWorldConfig(num_images=48, image_size=32, seed=4),
                                               sizes=((32, 32), (24, 40))), dataset, records_per_shard=16)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}",
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "data_multiprocess_worker.py"), dataset,
                               str(tmp_path / "out"), address, "2", str(pid)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for pid in range(2)]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"2-process data run did not finish in {TIMEOUT_S}s")
    results = []
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
        results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][0][len("RESULT "):]))
    assert [r["process"] for r in results] == [0, 1] and all(r["devices"] == 4 for r in results)
    assert all(r["resume_ok"] for r in results)

    reference = RecordPipeline(arrayrecord_io.ArrayRecordSource(dataset), worker.CFG, 0, 1)
    got = np.load(str(tmp_path / "out" / "global.npz"))
    order = np.concatenate([np.arange(p, 8, 2) for p in range(2)])  # process 0's rows, then process 1's
    for k in range(worker.STEPS):
        ref = reference.__next__()
        local = [set(r["local_indices"][k]) for r in results]
        assert not local[0] & local[1] and local[0] | local[1] == set(ref["index"].tolist())
        np.testing.assert_array_equal(got["indices"][k], ref["index"][order])
        np.testing.assert_array_equal(got[f"images{k}"], ref["image"][order])
        assert got[f"images{k}"].shape[1:3] == reference.bucket_of(k)
