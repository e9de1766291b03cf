"""One process of the two-process host-reward test (tests/test_multihost.py).

    python tests/host_reward_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID

Each process holds its own rows of a 16-row batch (its prompts, Chinese and English, and images)
on its 4 devices of an 8-device mesh and scores them with a host-callback reward inside one jitted
program (``rewards/in_graph``). Every process prints one line ``RESULT {json}``: the gathered
scores in global row order and the row counts its own callbacks saw.
"""
import json
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from seedream_jax import config_lib, rewards
from seedream_jax.parallel import distributed
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.rewards import in_graph

ROWS = 16


def batch_rows():
    """The global batch: prompts [16] and images float32 [16, 4, 4, 3]."""
    prompts = [f"{i} red circles" if i % 2 else "一" * (i + 1) for i in range(ROWS)]
    images = np.random.default_rng(0).uniform(-1, 1, size=(ROWS, 4, 4, 3)).astype(np.float32)
    return prompts, images


def prompt_bytes_score(images, prompts) -> np.ndarray:
    """The test reward [B]: each prompt's UTF-8 length plus its image's mean pixel."""
    return np.array([len(p.encode("utf-8")) + float(np.mean(im)) for im, p in zip(images, prompts)])


def counting_host_reward(name: str) -> list:
    """Register ``prompt_bytes_score`` as the host reward ``name``; returns the list that each call
    appends its row count to."""
    calls = []

    def reward(images, prompts):
        calls.append(len(prompts))
        return prompt_bytes_score(images, prompts)

    rewards.register(name, reward, differentiable=False, replace=True)
    return calls


def main(coordinator: str, num_processes: int, process_id: int):
    cfg = config_lib.base_config("tiny")
    cfg.distributed.update(dict(coordinator_address=coordinator, num_processes=num_processes,
                                process_id=process_id, initialization_timeout=60))
    distributed.initialize(cfg)
    calls = counting_host_reward("prompt_bytes")
    reward = in_graph.graph_reward("prompt_bytes")
    prompts, images = batch_rows()
    local = slice(process_id * ROWS // num_processes, (process_id + 1) * ROWS // num_processes)
    batch = in_graph.prepare_all([reward], prompts[local])
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    with jax.set_mesh(mesh):
        def put(x):
            return jax.make_array_from_process_local_data(mesh_lib.batch_sharding(mesh, x.ndim), x)
        _, per = jax.jit(lambda x, b: in_graph.score_all([reward], {reward.name: 1.0}, x, b))(
            put(images[local]), {k: put(v) for k, v in batch.items()})
        scores = multihost_utils.process_allgather(per[reward.name], tiled=True)
    print("RESULT " + json.dumps({"process_index": jax.process_index(), "scores": np.asarray(scores).tolist(),
                                  "calls": calls}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
