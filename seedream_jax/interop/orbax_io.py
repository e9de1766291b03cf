"""Training checkpoints (Orbax) as export sources and as import targets.

``OrbaxSource`` reads a stage's checkpoint (``<stage_dir>/checkpoints/<step>/state``) leaf by
leaf: the metadata gives every shape without reading data, and each ``read`` is a partial
restore of just the leaves asked for, straight into NumPy (one per checkpoint: components the
stage stores at their source are read from that stage's checkpoint). The optimizer state is never
read, and a model never needs to fit in host memory twice.

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

from seedream_jax.checkpoint.init_from import source_leaves
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
    for the pretrain stage, including the components the stage stores at their source (its frozen
    VAE at the VAE stage: ``frozen_sources.json``), read from there at the recorded step and
    weights (``init_from.source_leaves``).

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
        self.path = os.path.join(self.stage_dir, "checkpoints", str(step), STATE_ITEM)
        # Each checkpoint read is verified here (a damaged step fails, naming the file).
        leaves, _ = source_leaves(self.stage_dir, "", weights == "ema", step)
        self.used_ema = any(saved == (self.stage_dir, step, "ema_params") for saved, _, _ in leaves.values())
        if weights == "ema" and not self.used_ema:
            logging.warning("%s has no EMA parameters: exporting the raw parameters", self.path)
        self.describe = f"checkpoint {self.path} ({'EMA' if self.used_ema else 'raw'} weights)"
        # {path: ((stage dir, step) of the checkpoint holding it, its key in that saved state)}
        self._where = {path: (saved[:2], (saved[2],) + key) for path, (saved, key, _) in leaves.items()}
        self._shapes = {path: jax.ShapeDtypeStruct(tuple(meta.shape), np.dtype(meta.dtype))
                        for path, (_, _, meta) in leaves.items()}
        self._ckptr = ocp.PyTreeCheckpointer()

    def shapes(self):
        return dict(self._shapes)

    def read(self, paths: Sequence[tuple]) -> Dict[tuple, np.ndarray]:
        """Restore just ``paths`` as NumPy arrays: one partial Orbax restore per checkpoint holding some."""
        unknown = [p for p in paths if p not in self._where]
        if unknown:
            raise KeyError(f"{self.describe} has no parameters {['/'.join(p) for p in unknown]}")
        groups: Dict[tuple, list] = {}
        for p in paths:
            groups.setdefault(self._where[p][0], []).append(p)
        out = {}
        for (stage_dir, step), group in groups.items():
            item = flax.traverse_util.unflatten_dict({self._where[p][1]: self._shapes[p] for p in group})
            restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            checkpoints = os.path.join(stage_dir, "checkpoints")
            with reading(checkpoints, step, verify=False):  # verified when opened
                restored = self._ckptr.restore(os.path.join(checkpoints, str(step), STATE_ITEM),
                                               args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                           partial_restore=True))
            flat = flax.traverse_util.flatten_dict(restored)
            out.update({p: np.asarray(flat[self._where[p][1]]) for p in group})
        return out


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
