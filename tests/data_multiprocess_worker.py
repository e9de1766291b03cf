"""One process of tests/test_multiprocess_data.py: the record pipeline under jax.distributed.

    python tests/data_multiprocess_worker.py DATASET OUT_DIR COORDINATOR NUM_PROCESSES PROCESS_ID

Each process builds ``RecordPipeline`` with its ``jax.process_index()``, turns its per-process
batches into global arrays with ``jax.make_array_from_process_local_data`` on a ``data`` mesh of
all devices, gathers them, and (process 0) writes ``OUT_DIR/global.npz`` (indices [STEPS, G],
images [STEPS, G, h, w, 3] of the first STEPS global batches). Every process also checks that a
pipeline restored from the state after step 1 yields its own next batches, and prints
``RESULT {json}``.
"""
import json
import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seedream_jax.data import arrayrecord_io
from seedream_jax.data.pipeline import PipelineConfig, RecordPipeline

CFG = PipelineConfig(global_batch=8, seed=3, base_resolution=32, bucket_multiple=8, num_workers=2)
STEPS = 3


def main(dataset: str, out_dir: str, coordinator: str, num_processes: int, process_id: int):
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=60)
    source = arrayrecord_io.ArrayRecordSource(dataset)
    pipe = RecordPipeline(source, CFG)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    indices, images, local, state = [], [], [], None
    for k in range(STEPS):
        batch = next(pipe)
        local.append(batch)
        if k == 0:
            state = pipe.get_state()
        for name, out in (("index", indices), ("image", images)):
            arr = jax.make_array_from_process_local_data(sharding, batch[name])
            out.append(np.asarray(multihost_utils.process_allgather(arr, tiled=True)))
    resumed = RecordPipeline(source, CFG)
    resumed.set_state(json.loads(json.dumps(state)))
    again = [next(resumed) for _ in local[1:]]
    resume_ok = all(np.array_equal(a[key], want[key]) for a, want in zip(again, local[1:]) for key in ("index", "image"))
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        np.savez(os.path.join(out_dir, "global.npz"), indices=np.stack(indices),
                 **{f"images{k}": im for k, im in enumerate(images)})
    print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                                  "devices": jax.device_count(), "resume_ok": bool(resume_ok),
                                  "local_indices": [b["index"].tolist() for b in local]}), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
