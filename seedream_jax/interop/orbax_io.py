"""Training checkpoints (Orbax) as export sources and as import targets.

``OrbaxSource`` reads a stage's checkpoint (``<stage_dir>/checkpoints/<step>/state``) leaf by
leaf: the metadata gives every shape without reading data, and each ``read`` is a partial
restore of just the leaves asked for, straight into NumPy. The optimizer state is never read,
and a model never needs to fit in host memory twice.

``write_params_checkpoint`` writes imported parameters as a stage directory that
``checkpoint.init_from`` (``pretrain.init_from = {'conditioner/text_encoder/llm': dir}``) and
``checkpoint.manager.restore_raw_state`` read like any trained stage's.
"""
import logging
import os
from typing import Dict, Optional, Sequence

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from seedream_jax.checkpoint.manager import reading
from seedream_jax.interop import convert

STATE_ITEM = "state"


def checkpoint_steps(stage_dir: str) -> list:
    """Finished checkpoint steps of a stage directory, ascending (Orbax's temporary dirs ignored)."""
    directory = os.path.join(os.path.abspath(stage_dir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{stage_dir}: no checkpoints directory at {directory} "
                                "(pass a stage directory such as <workdir>/pretrain)")
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d, STATE_ITEM)))


class OrbaxSource(convert.ParamSource):
    """The parameters of one checkpoint of a training stage, read lazily.

    The tree is that of ``checkpoint.init_from.load_component``: the EMA parameters (or the raw
    ones) merged with the frozen parameters, e.g. {'conditioner': ..., 'mmdit': ..., 'vae': ...}
    for the pretrain stage.

    Args:
      stage_dir: the stage directory (holding ``checkpoints/``).
      step: which checkpoint (default: the latest).
      weights: 'ema' (the EMA where the checkpoint has one; a stage trained without EMA, such as
        the VAE stage, has only raw weights and those are used, see ``used_ema``) or 'raw'.
    """

    def __init__(self, stage_dir: str, *, step: Optional[int] = None, weights: str = "ema"):
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
        steps = checkpoint_steps(stage_dir)
        if not steps:
            raise FileNotFoundError(f"{stage_dir}/checkpoints holds no finished checkpoint")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(f"{stage_dir}: no checkpoint at step {step} (have {steps})")
        self.step, self.stage_dir = step, os.path.abspath(stage_dir)
        self._checkpoints = os.path.join(self.stage_dir, "checkpoints")
        self.path = os.path.join(self._checkpoints, str(step), STATE_ITEM)
        self._ckptr = ocp.PyTreeCheckpointer()
        # The item's own metadata: Checkpointer.metadata(<step>/state) would also look for the
        # step's _CHECKPOINT_METADATA inside the item and warn that it does not exist.
        handler = ocp.PyTreeCheckpointHandler()
        try:
            with reading(self._checkpoints, step):  # a damaged step fails here, naming the file
                tree = handler.metadata(epath.Path(self.path)).tree
        finally:
            handler.close()
        if "params" not in tree:
            raise ValueError(f"{self.path}: not a training state (top-level keys {sorted(tree)}; expected 'params')")
        self.used_ema = weights == "ema" and bool(convert.flatten(tree.get("ema_params") or {}))
        if weights == "ema" and not self.used_ema:
            logging.warning("%s has no EMA parameters: exporting the raw parameters", self.path)
        self.describe = f"checkpoint {self.path} ({'EMA' if self.used_ema else 'raw'} weights)"
        self._where: Dict[tuple, tuple] = {}
        self._shapes: Dict[tuple, jax.ShapeDtypeStruct] = {}
        for top in ("ema_params" if self.used_ema else "params", "frozen"):
            for path, meta in convert.flatten(tree.get(top) or {}).items():
                if path in self._where:
                    raise ValueError(f"{self.path}: {'/'.join(path)} is both trainable and frozen")
                self._where[path] = (top,) + path
                self._shapes[path] = jax.ShapeDtypeStruct(tuple(meta.shape), np.dtype(meta.dtype))

    def shapes(self):
        return dict(self._shapes)

    def read(self, paths: Sequence[tuple]) -> Dict[tuple, np.ndarray]:
        """Restore just ``paths`` (one partial Orbax restore) as NumPy arrays."""
        if not paths:
            return {}
        unknown = [p for p in paths if p not in self._where]
        if unknown:
            raise KeyError(f"{self.describe} has no parameters {['/'.join(p) for p in unknown]}")
        item = flax.traverse_util.unflatten_dict({self._where[p]: self._shapes[p] for p in paths})
        restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        with reading(self._checkpoints, self.step, verify=False):  # verified when opened
            out = self._ckptr.restore(self.path, args=ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True))
        flat = flax.traverse_util.flatten_dict(out)
        return {p: np.asarray(flat[self._where[p]]) for p in paths}


def write_params_checkpoint(stage_dir: str, params: dict, *, step: int = 0, info: Optional[dict] = None) -> str:
    """Write ``params`` (nested dict of arrays, e.g. {'conditioner': {'text_encoder': {'llm': ...}}})
    as a finished checkpoint of a stage directory: ``<stage_dir>/checkpoints/<step>/`` with a
    ``state`` item {'step', 'params'} and a ``data`` item holding ``info``. Returns the step dir.
    Refuses a stage directory that already has checkpoints."""
    from seedream_jax.checkpoint.manager import Checkpointer

    directory = os.path.join(os.path.abspath(stage_dir), "checkpoints")
    if os.path.isdir(directory) and checkpoint_steps(stage_dir):
        raise FileExistsError(f"{directory} already holds checkpoints {checkpoint_steps(stage_dir)}; "
                              "choose an empty output directory")
    state = {"step": np.asarray(step, np.int32),
             "params": jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)}
    ckpt = Checkpointer(directory, keep=1, async_save=False)
    try:
        ckpt.save(step, state, dict(info or {}), force=True)
        ckpt.wait()
    finally:
        ckpt.close()
    return os.path.join(directory, str(step))
