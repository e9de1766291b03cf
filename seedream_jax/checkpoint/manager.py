"""Orbax checkpointing of a TrainState plus the data-iterator position.

Layout: ``<stage_dir>/checkpoints/<step>/{state,data}``. Saves are asynchronous (training
continues while the previous save is written); the last ``keep`` are kept.
"""
import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp


def _item_handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for (TrainState, data-state dict) pairs."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_item_handlers())

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Start an (async) save of ``state`` and the JSON-able ``data_state`` at ``step``."""
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, dict]:
        """Restore (state, data_state) at ``step`` (default latest) into the shardings of
        ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with ``.sharding``)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out.state, dict(out.data)

    def wait(self):
        """Block until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


def restore_subset(stage_dir: str, target: Any, step: Optional[int] = None) -> Any:
    """Restore only some leaves of a stage's saved TrainState, straight into their shardings.

    ``target`` is a nested dict mirroring the saved state's keys (e.g. ``{'ema_params': {'vae':
    {...}}}``) whose leaves are ``jax.ShapeDtypeStruct`` with ``.sharding``; leaves it leaves out
    are not read. Returns the same tree of ``jax.Array`` (each process reads only its shards).
    """
    directory = os.path.join(os.path.abspath(stage_dir), "checkpoints")
    manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True)))
    finally:
        manager.close()
    return out.state


def restore_raw_state(stage_dir: str, step: Optional[int] = None, *, metadata_only: bool = False) -> Tuple[dict, int]:
    """Restore a stage's saved TrainState as a nested dict of host NumPy arrays.

    Used where the reader's tree differs from the writer's (cross-stage initialisation, sampling,
    eval, export). ``stage_dir`` is the stage's directory (holding ``checkpoints/``); ``step``
    defaults to the latest. With ``metadata_only`` the tree holds Orbax array metadata (shape,
    dtype) instead of arrays and nothing is read.
    Returns (state dict with keys step/params/frozen/opt_state/ema_params/rng, step).
    """
    directory = os.path.join(os.path.abspath(stage_dir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints directory at {directory}")
    manager = ocp.CheckpointManager(directory, item_handlers=_item_handlers())
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        meta = manager.item_metadata(step).state
        if metadata_only:
            return dict(meta), step
        cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), meta)
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    finally:
        manager.close()
    return jax.tree_util.tree_map(lambda x: jax.device_get(x), restored.state), step
