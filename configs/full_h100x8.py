"""The full size pretraining on a node of 8 H100 GPUs (80 GB HBM each; the same on 8 H200, 141 GB), 512 px.

    python -m seedream_jax.main --config configs/full_h100x8.py --workdir runs/h100x8
    python tools/plan.py --config configs/full_h100x8.py --text-cache --depths 1,2 --check-depth 3   # the plan

More nodes: ``python -m launch.slurm`` with ``--config.mesh.fsdp=<gpus>`` and
``--config.pretrain.train.batch_size=<4 x gpus>`` (the table in benchmarks/RESULTS.md plans 4 and 16 nodes).

What makes the 10.4B-parameter full size fit (benchmarks/RESULTS.md, "issue 18: the full size
fits"): only the 2.8B MMDiT trains. The VAE and the whole conditioner (the 7B LLM, its adapter,
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
from seedream_jax import config_lib

RESOLUTION = 512
CHIPS = 8           # one node of 8 GPUs, one JAX device (and one process, or one per node) each
PER_CHIP_BATCH = 4


def get_config():
    c = config_lib.base_config("full")
    c.stages = ("pretrain",)                  # data, tokenizer, VAE and caches prepared once
    c.mesh.update(dict(data=1, fsdp=CHIPS, tensor=1))
    c.model.dtype = "bfloat16"                # compute; parameters, AdamW state and EMA stay fp32
    c.model.remat_policy = "dots"
    c.model.attention_impl = "cudnn"          # cuDNN fused flash attention for the MMDiT's joint attention
    # the text cache named explicitly: a run without it would put the 7B LLM back into the step
    c.data.update(dict(format="arrayrecord", path="data/world", image_size=RESOLUTION,
                       cache_dir="data/world-latents", text_cache_dir="data/world-text"))
    c.pretrain.frozen = ("vae", "conditioner")  # the text cache serves only a frozen conditioner
    # the stage dir holding the conditioner the text cache was encoded with (e.g. imported Qwen2.5-7B + ByT5)
    c.pretrain.init_from.update(dict(conditioner="conditioner"))
    c.pretrain.train.batch_size = PER_CHIP_BATCH * CHIPS  # 32: divisible by fsdp (8)
    c.pretrain.train.checkpoint_every = 500
    return c
