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


def restore_raw_state(stage_dir: str, step: Optional[int] = None) -> Tuple[dict, int]:
    """Restore another stage's saved TrainState as a nested dict of host NumPy arrays.

    Used for cross-stage initialisation, where the target tree differs from the source.
    ``stage_dir`` is the source stage's directory (holding ``checkpoints/``).
    Returns (state dict with keys step/params/frozen/opt_state/ema_params/rng, step).
    """
    directory = os.path.join(os.path.abspath(stage_dir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"init_from: no checkpoints directory at {directory}")
    manager = ocp.CheckpointManager(directory, item_handlers=_item_handlers())
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"init_from: {directory} holds no finished checkpoint")
    meta = manager.item_metadata(step).state
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), meta)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    manager.close()
    return jax.tree_util.tree_map(lambda x: jax.device_get(x), restored.state), step
