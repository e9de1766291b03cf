"""One process of the multi-host test (tests/test_multihost.py); also its single-process reference.

    python tests/multihost_worker.py OUT_DIR STEPS COORDINATOR NUM_PROCESSES PROCESS_ID
    python tests/multihost_worker.py OUT_DIR STEPS reference 1 0   # one process, same batches

Trains the toy task through ``loop.train`` on a mesh fsdp=<all global devices> (the first layer's
kernel is sharded across processes), then restores the last checkpoint into a fresh abstract
state and compares it with the trained state shard by shard. Process 0 writes
``OUT_DIR/result.npz`` (every state leaf gathered to host, plus the final loss) and every process
prints one line ``RESULT {json}``.
"""
import json
import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from seedream_jax.checkpoint.manager import Checkpointer
from seedream_jax.data.batches import IndexedBatches
from seedream_jax.parallel import distributed
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.parallel import sharding as sharding_lib
from seedream_jax.training import loop
from seedream_jax.training import optimizer as optimizer_lib
from toy_task import toy_stage_config, toy_task

PROCESSES_SIMULATED = 2  # the reference builds each global batch in the 2-process row order


def deterministic_task(reference: bool) -> loop.Task:
    """The toy task with noise-free batches. Each of P processes holds rows ``p::P`` of a global
    batch, placed in process order; the reference builds the global batch in that same order."""
    task = toy_task()
    base = task.data.make_batch

    def make_batch(idx, _rng):
        if reference:
            idx = np.concatenate([idx[p::PROCESSES_SIMULATED] for p in range(PROCESSES_SIMULATED)])
        batch = base(idx, np.random.default_rng(0))
        return {"x": batch["x"], "y": np.sin(batch["x"].sum(-1, keepdims=True))}

    task.data = IndexedBatches(task.data.num_records, task.data.global_batch, task.data.seed, make_batch)
    return task


def main(out_dir: str, steps: int, coordinator: str, num_processes: int, process_id: int):
    cfg, stage = toy_stage_config(steps)
    reference = coordinator == "reference"
    if not reference:
        cfg.distributed.update(dict(coordinator_address=coordinator, num_processes=num_processes,
                                    process_id=process_id, initialization_timeout=60))
    info = distributed.initialize(cfg)
    cfg.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    stage.train.checkpoint_every = 2
    task = deterministic_task(reference)
    result = loop.train(task, cfg, stage, out_dir)

    # Restore the saved step into a fresh abstract state laid out like the trained one.
    mesh = mesh_lib.make_mesh(cfg.mesh)
    tx = optimizer_lib.make_optimizer(stage.optimizer, steps)
    layout = loop.state_layout(task, tx, float(stage.train.ema_decay) > 0,
                               jax.random.PRNGKey(int(stage.train.seed)), mesh,
                               sharding_lib.resolve_rules(cfg.sharding.rules))
    ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"))
    restored, data_state = ckpt.restore(layout.abstract)
    ckpt.close()
    leaves = jax.tree_util.tree_leaves_with_path(result.state)
    restored_leaves = jax.tree_util.tree_leaves(restored)
    mismatches = []
    for (path, a), b in zip(leaves, restored_leaves):
        for sa, sb in zip(a.addressable_shards, b.addressable_shards):
            if sa.index != sb.index or not np.array_equal(np.asarray(sa.data), np.asarray(sb.data)):
                mismatches.append(jax.tree_util.keystr(path))
    kernel = result.state.params["toy"]["fc1"]["kernel"]
    gathered = multihost_utils.process_allgather(result.state, tiled=True)
    if info.process_index == 0:
        flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(gathered)}
        np.savez(os.path.join(out_dir, "result.npz"), loss=result.last_metrics["loss"], **flat)
    print("RESULT " + json.dumps(dict(
        process_index=info.process_index, process_count=info.process_count,
        global_devices=info.global_device_count, local_devices=info.local_device_count,
        step=result.step, restored_step=int(np.asarray(restored.step.addressable_shards[0].data)),
        data_position=data_state["position"], mismatches=mismatches,
        kernel_fully_addressable=kernel.is_fully_addressable,
        kernel_local_shards=len(kernel.addressable_shards),
        kernel_sharding=str(kernel.sharding.spec), loss=result.last_metrics["loss"])), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
