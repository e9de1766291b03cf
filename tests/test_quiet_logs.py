"""Quiet logs: a CPU run prints no libtpu probe, reading a checkpoint for export no Orbax
"Metadata file does not exist" warning; real backend failures still log."""
import logging
import os
import subprocess
import sys

import numpy as np

from seedream_jax import log_filters
from seedream_jax.interop import orbax_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord(log_filters.JAX_BACKEND_LOGGER, logging.INFO, __file__, 1, message, None, None)


def test_only_the_missing_libtpu_probe_is_dropped():
    keep = log_filters.NoLibtpuProbe().filter
    assert not keep(_record("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: libtpu.so: "
                            "cannot open shared object file: No such file or directory"))
    assert keep(_record("Unable to initialize backend 'tpu': ABORTED: The TPU is already in use by process 1234"))
    assert keep(_record("Unable to initialize backend 'cuda': no supported devices found for platform CUDA"))
    assert keep(_record("A Google TPU may be present on this machine, but either a TPU-enabled jaxlib or libtpu is "
                        "not installed. Falling back to cpu."))


def test_a_cpu_run_prints_no_libtpu_probe(tmp_path):
    """JAX picks its platform itself (JAX_PLATFORMS unset), logging at INFO as main.py does."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = REPO
    code = ("import logging\n"
            "logging.basicConfig(level=logging.DEBUG)\n"
            "import seedream_jax, jax\n"
            "print('devices', jax.devices())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "devices [" in out.stdout
    assert "libtpu" not in out.stderr and "Unable to initialize backend 'tpu'" not in out.stderr, out.stderr


def test_export_source_logs_no_missing_metadata_warning(tmp_path, caplog):
    stage_dir = str(tmp_path / "stage")
    orbax_io.write_params_checkpoint(stage_dir, {"toy": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        source = orbax_io.OrbaxSource(stage_dir, weights="raw")
        read = source.read([("toy", "w")])
    np.testing.assert_array_equal(read[("toy", "w")], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
