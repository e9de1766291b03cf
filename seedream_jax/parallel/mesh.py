"""Device mesh construction: one mesh ``('data', 'fsdp', 'tensor')`` everywhere."""
import math
from typing import Mapping

import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# Batch dimensions are split over both data-parallel axes.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple:
    """Resolve a config ``{'data': -1, 'fsdp': 1, 'tensor': 1}`` to sizes multiplying to num_devices.

    At most one axis may be -1 (it takes the remaining devices).
    """
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh config has unknown axes {sorted(unknown)}; expected {MESH_AXES}")
    sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh config {dict(spec)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh config {dict(spec)} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh config {dict(spec)} -> {tuple(sizes)} uses {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(spec: Mapping[str, int], devices=None) -> Mesh:
    """Build the ('data', 'fsdp', 'tensor') mesh over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(spec, len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a batch-leading array of rank ``ndim``: batch over ('data', 'fsdp')."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def check_batch_splits(mesh: Mesh, global_batch: int, what: str) -> None:
    """Raise a ValueError naming ``what`` unless ``global_batch`` rows split evenly over the mesh's
    batch axes ('data' x 'fsdp'): an uneven split has no batch sharding to place it with."""
    devices = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if global_batch % devices:
        raise ValueError(f"{what}: a global batch of {global_batch} does not split over the {devices} devices "
                         f"of the mesh's batch axes (data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); "
                         f"make it a multiple of {devices}")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
