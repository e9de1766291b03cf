"""Log records the framework keeps out of a run's output, dropped at their source loggers.

Only records that carry nothing to act on are dropped; every other line of the same loggers
passes. Today that is one:

* JAX probes for a TPU when ``JAX_PLATFORMS`` is unset. Without libtpu installed the probe logs
  ``Unable to initialize backend 'tpu': ... Failed to open libtpu.so: ... cannot open shared object
  file`` (INFO, logger ``jax._src.xla_bridge``), which every CPU or GPU run would print. It is
  dropped only when it says libtpu is absent: a TPU backend that exists and fails still logs, and
  so does JAX's own warning that a TPU seems present while libtpu is missing.

(Orbax's "Metadata file does not exist" warning on export is not filtered: it came from asking
for a step's metadata inside an item directory, and ``interop/orbax_io.py`` no longer does.)
``seedream_jax`` installs the filters at import (``install``; idempotent).
"""
import logging

JAX_BACKEND_LOGGER = "jax._src.xla_bridge"


class NoLibtpuProbe(logging.Filter):
    """Drops JAX's record that the TPU backend did not start because libtpu is not installed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Unable to initialize backend 'tpu'") and "libtpu" in message
                    and ("cannot open shared object file" in message or "No such file" in message))


def install() -> None:
    """Attach the filters to their loggers (once)."""
    logger = logging.getLogger(JAX_BACKEND_LOGGER)
    if not any(isinstance(f, NoLibtpuProbe) for f in logger.filters):
        logger.addFilter(NoLibtpuProbe())
