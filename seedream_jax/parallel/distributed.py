"""Multi-process start-up: ``jax.distributed.initialize`` from the config or the environment.

One JAX process runs per host (TPU VM worker) or per GPU/node (SLURM task). Before anything
touches a device, every process calls :func:`initialize`, which connects it to the
coordinator (process 0) so that ``jax.devices()`` lists the devices of all processes and one
mesh spans them. Where the settings come from, first match wins:

1. ``cfg.distributed.mode == "single"``: never initialise (one process; the laptop default
   needs no change, since ``"auto"`` finds nothing to join either).
2. explicit config: ``cfg.distributed.coordinator_address`` ("host:port") with
   ``num_processes`` and ``process_id`` (and optionally ``local_device_ids``);
3. environment: ``SEEDREAM_COORDINATOR_ADDRESS``, ``SEEDREAM_NUM_PROCESSES``,
   ``SEEDREAM_PROCESS_ID`` (and optionally ``SEEDREAM_LOCAL_DEVICE_IDS="0,1"``), for launchers
   that are not auto-detected;
4. cluster auto-detection: ``mode == "cluster"``, or ``"auto"`` with a multi-task SLURM job
   (``SLURM_NTASKS`` > 1) or an Open MPI job (``OMPI_COMM_WORLD_SIZE`` > 1): JAX's own
   detection (``jax.distributed.initialize()`` without arguments) reads the coordinator and
   ranks from SLURM / Open MPI / the Cloud TPU metadata server. Multi-host TPU slices are not
   guessed from the environment: ``launch/tpu_vm.py`` passes ``--config.distributed.mode=cluster``.
5. otherwise a single process.

Calling it again is a no-op (the first call's result is returned).
"""
import dataclasses
import logging
import os
from typing import Mapping, Optional, Tuple

import jax

MODES = ("auto", "single", "cluster")
ENV_PREFIX = "SEEDREAM_"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: ``source`` says how it was set up
    ('single', 'config', 'env', 'cluster' or 'already-initialized')."""
    process_index: int
    process_count: int
    local_device_count: int
    global_device_count: int
    source: str


def _int_env(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def _device_ids(value) -> Optional[Tuple[int, ...]]:
    if value is None or value == "" or (not isinstance(value, str) and len(value) == 0):
        return None
    items = value.split(",") if isinstance(value, str) else value
    return tuple(int(v) for v in items)


def resolve(dist_cfg, environ: Mapping[str, str] = os.environ) -> Tuple[str, dict]:
    """Decide how to start: returns (source, keyword arguments for ``jax.distributed.initialize``).

    ``source`` is 'single' (do not initialise), 'config', 'env' or 'cluster' (no arguments:
    JAX auto-detects). Raises ValueError naming the key for incomplete or contradictory settings.
    """
    mode = str(dist_cfg.get("mode", "auto"))
    if mode not in MODES:
        raise ValueError(f"distributed.mode {mode!r} is not one of {MODES}")
    if mode == "single":
        return "single", {}
    timeout = int(dist_cfg.get("initialization_timeout", 300))
    address = str(dist_cfg.get("coordinator_address", "") or "")
    if address:
        num, pid = int(dist_cfg.get("num_processes", 0)), int(dist_cfg.get("process_id", -1))
        if num < 1 or not 0 <= pid < num:
            raise ValueError(f"distributed.coordinator_address={address!r} needs distributed.num_processes >= 1 "
                             f"and 0 <= distributed.process_id < num_processes (got {num}, {pid})")
        return "config", dict(coordinator_address=address, num_processes=num, process_id=pid,
                              local_device_ids=_device_ids(dist_cfg.get("local_device_ids", ())),
                              initialization_timeout=timeout)
    env_address = environ.get(ENV_PREFIX + "COORDINATOR_ADDRESS", "")
    if env_address:
        num = _int_env(environ, ENV_PREFIX + "NUM_PROCESSES")
        pid = _int_env(environ, ENV_PREFIX + "PROCESS_ID")
        if num < 1 or not 0 <= pid < num:
            raise ValueError(f"{ENV_PREFIX}COORDINATOR_ADDRESS is set: {ENV_PREFIX}NUM_PROCESSES ({num}) must be "
                             f">= 1 and {ENV_PREFIX}PROCESS_ID ({pid}) in [0, NUM_PROCESSES)")
        return "env", dict(coordinator_address=env_address, num_processes=num, process_id=pid,
                           local_device_ids=_device_ids(environ.get(ENV_PREFIX + "LOCAL_DEVICE_IDS")),
                           initialization_timeout=timeout)
    multi_task = (int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1")) or 1) > 1
                  or int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1)
    if mode == "cluster" or multi_task:
        return "cluster", dict(initialization_timeout=timeout)
    return "single", {}


_INFO: Optional[ProcessInfo] = None


def initialize(cfg) -> ProcessInfo:
    """Join the multi-process run described by ``cfg.distributed`` (see module docstring).

    Must run before the first use of a device; later calls return the first result.
    Logs process index/count and local/global device counts.
    """
    global _INFO
    if _INFO is not None:
        return _INFO
    source, kwargs = resolve(cfg.distributed if "distributed" in cfg else {})
    if jax.distributed.is_initialized():
        source = "already-initialized"
    elif source != "single":
        logging.info("jax.distributed.initialize(%s) [%s]",
                     ", ".join(f"{k}={v!r}" for k, v in kwargs.items()), source)
        jax.distributed.initialize(**kwargs)
    _INFO = ProcessInfo(process_index=jax.process_index(), process_count=jax.process_count(),
                        local_device_count=jax.local_device_count(), global_device_count=jax.device_count(),
                        source=source)
    logging.info("process %d of %d (%s): %d local device(s), %d global device(s) [%s]",
                 _INFO.process_index, _INFO.process_count, jax.default_backend(), _INFO.local_device_count,
                 _INFO.global_device_count, source)
    return _INFO


def is_primary() -> bool:
    """True on the process that writes shared files (TensorBoard, PNGs, summaries): process 0."""
    return jax.process_index() == 0
