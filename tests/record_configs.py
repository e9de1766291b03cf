"""A tiny pretrain config on an ArrayRecord world, shared by the record-training tests."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_record_config(dataset_dir: str):
    """configs/tiny.py shrunk for tests (32 px, one block per stack, narrow VAE, 512-token vocab),
    training the MMDiT only (VAE and conditioner frozen) on the ArrayRecord dataset ``dataset_dir``."""
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny
    cfg = tiny.get_config()
    cfg.model.resolution = 32
    cfg.model.mmdit.rope_base_grid = 4
    cfg.model.mmdit.update(num_double_blocks=1, num_single_blocks=1)
    cfg.model.llm.num_hidden_layers = cfg.model.byt5.num_layers = 1
    cfg.model.vae.block_out_channels = (8, 8, 8)  # a 4x VAE, read in 2x2 patches
    cfg.model.mmdit.patch_size = 2
    cfg.tokenizer.vocab_size = 512
    cfg.pretrain.frozen = ("vae", "conditioner")
    cfg.data.update(dict(format="arrayrecord", path=str(dataset_dir), image_size=32, bucket_multiple=8))
    return cfg
