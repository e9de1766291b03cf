"""The full size pretraining on a node of 8 H100 GPUs (80 GB HBM each; the same on 8 H200, 141 GB), 512 px.

    python -m seedream_jax.main --config configs/full_h100x8.py --workdir runs/h100x8
    python tools/plan.py --config configs/full_h100x8.py --text-cache --depths 1,2 --check-depth 3   # the plan

More nodes: ``python -m launch.slurm`` with ``--config.mesh.fsdp=<gpus>`` and
``--config.pretrain.train.batch_size=<4 x gpus>`` (the table in benchmarks/RESULTS.md plans 4 and 16 nodes);
the other stages' batches are configs/full_v5p64.py's multiples of 32, which split over 8, 16 or 32
GPUs (more: ``config_lib.split_batches_over``, or each ``--config.<stage>.train.batch_size``).

configs/full_v5p64.py's run with the node's mesh, batch and attention kernel. What makes the
10.4B-parameter full size fit (benchmarks/RESULTS.md (g)): only the 2.8B MMDiT trains. The VAE and the whole conditioner (the 7B LLM, its adapter,
ByT5) are frozen and their outputs come from the latent and text caches of the ArrayRecord
dataset (``tools/cache_latents.py``), so neither runs in the step; bf16 compute with fp32 master
weights, AdamW moments and EMA; ``dots`` remat (matmul outputs kept, the rest recomputed);
FSDP (ZeRO-3) over the node's 8 GPUs; 4 images per GPU. The planner's CPU compile puts this
step at about 58 GB per GPU (an upper bound: XLA:CPU's schedule keeps more live than the GPU's),
28% headroom on an 80 GB H100.

Prepare once: the record dataset at ``data/world`` in the workdir,
its latent cache (``data/world-latents``) and text cache (``data/world-text``), the tokenizer and
the VAE and conditioner checkpoints the caches were made with (``pretrain.init_from``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import full_v5p64  # noqa: E402  (configs/full_v5p64.py, whatever the working directory)

CHIPS = 8           # one node of 8 GPUs, one JAX device (and one process, or one per node) each
PER_CHIP_BATCH = 4


def get_config():
    c = full_v5p64.get_config()
    c.mesh.update(dict(data=1, fsdp=CHIPS, tensor=1))
    c.model.attention_impl = "cudnn"          # cuDNN fused flash attention for the MMDiT's joint attention
    c.pretrain.train.batch_size = PER_CHIP_BATCH * CHIPS  # 32: divisible by fsdp (8)
    return c
