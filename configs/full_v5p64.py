"""The full size pretraining on a TPU v5p-64 slice (32 chips, 95 GB HBM each), 512 px.

    python -m seedream_jax.main --config configs/full_v5p64.py --workdir /mnt/gcs/runs/v5p64 \
        --config.distributed.mode=cluster
    python tools/plan.py --config configs/full_v5p64.py --text-cache --depths 1,2 --check-depth 3   # the plan

What makes the 10.4B-parameter full size fit (benchmarks/RESULTS.md (g)): only the 2.8B MMDiT
trains. The VAE and the whole conditioner (the 7B LLM, its adapter, ByT5) are frozen and their
outputs come from the latent and text caches of the ArrayRecord dataset
(``tools/cache_latents.py``), so neither runs in the step; bf16 compute with fp32 master weights,
AdamW moments and EMA; ``dots`` remat (matmul outputs kept, the rest recomputed); FSDP (ZeRO-3)
over all 32 chips; 4 images per chip. The planner's CPU compile puts this step at about 51 GB
per chip (an upper bound: XLA:CPU's schedule keeps more live than the TPU's), 47% headroom.

Prepare once (docs/tpu_v5p.md section 4): the record dataset at ``data/world`` in the workdir,
its latent cache (``data/world-latents``) and text cache (``data/world-text``), the tokenizer and
the VAE and conditioner checkpoints the caches were made with (``pretrain.init_from``).
"""
from seedream_jax import config_lib

RESOLUTION = 512
CHIPS = 32          # v5p-64 = 64 TensorCores = 32 chips = 32 JAX devices (8 hosts of 4)
PER_CHIP_BATCH = 4


def get_config():
    c = config_lib.base_config("full")
    c.stages = ("pretrain",)                  # data, tokenizer, VAE and caches prepared once
    c.mesh.update(dict(data=1, fsdp=CHIPS, tensor=1))
    c.model.dtype = "bfloat16"                # compute; parameters, AdamW state and EMA stay fp32
    c.model.remat_policy = "dots"
    c.model.attention_impl = "splash"         # TPU Pallas kernel for the MMDiT's joint attention
    # the text cache named explicitly: a run without it would put the 7B LLM back into the step
    c.data.update(dict(format="arrayrecord", path="data/world", image_size=RESOLUTION,
                       cache_dir="data/world-latents", text_cache_dir="data/world-text"))
    c.pretrain.frozen = ("vae", "conditioner")  # the text cache serves only a frozen conditioner
    # the stage dir holding the conditioner the text cache was encoded with (e.g. imported Qwen2.5-7B + ByT5)
    c.pretrain.init_from.update(dict(conditioner="conditioner"))
    c.pretrain.train.batch_size = PER_CHIP_BATCH * CHIPS  # 128: divisible by fsdp (32) and by 8 hosts
    c.pretrain.train.checkpoint_every = 500
    # every other stage (rlhf, ct, sft, refiner, ...) at one or more examples per chip: rlhf's 8
    # prompts per step become 32
    return config_lib.split_batches_over(c, CHIPS)
