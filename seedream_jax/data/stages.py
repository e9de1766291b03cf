"""Stages ``data`` (build the synthetic bilingual world) and ``tokenizer`` (train SentencePiece)."""
import logging
import os

from seedream_jax.data import synthetic
from seedream_jax.data.tokenizer import train_sentencepiece
from seedream_jax.training.stages.common import resolve


def world_config(cfg) -> "synthetic.SyntheticWorldConfig":
    """The synthetic world of ``cfg.data`` (size, seed) and ``cfg.data.world`` (the scene mix)."""
    d = cfg.data
    return synthetic.SyntheticWorldConfig(num_images=int(d.num_images), image_size=int(d.image_size), seed=int(d.seed),
                                          **d.world.to_dict())


def run_data(cfg, workdir: str) -> dict:
    """Write the synthetic dataset unless an identical one is already there."""
    out_dir = resolve(workdir, cfg.data.dir)
    synthetic.write_dataset(world_config(cfg), out_dir)
    images, records = synthetic.load_dataset(out_dir)
    return {"data_dir": out_dir, "num_images": len(records), "image_shape": tuple(images.shape[1:])}


def run_tokenizer(cfg, workdir: str) -> dict:
    """Train the SentencePiece model on every caption of the dataset (skipped if present)."""
    if cfg.tokenizer.kind != "sentencepiece":
        return {"tokenizer": resolve(workdir, cfg.tokenizer.path), "trained": False}
    path = resolve(workdir, cfg.tokenizer.path)
    if os.path.exists(path):
        logging.info("tokenizer: %s exists, not retraining", path)
        return {"tokenizer": path, "trained": False}
    _, records = synthetic.load_dataset(resolve(workdir, cfg.data.dir))
    texts = synthetic.caption_texts(records)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Chinese has no spaces: the template words as user symbols keep BPE from merging whole phrases.
    model_path = train_sentencepiece(texts, path[:-len(".model")] if path.endswith(".model") else path,
                                     int(cfg.tokenizer.vocab_size), user_defined_symbols=synthetic.zh_caption_words())
    return {"tokenizer": model_path, "trained": True, "num_texts": len(texts)}
