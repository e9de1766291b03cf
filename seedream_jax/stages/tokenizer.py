"""Stage kind ``tokenizer``: train the SentencePiece model on the dataset's captions."""
import logging
import os

from seedream_jax.data import synthetic
from seedream_jax.data.tokenizer import train_sentencepiece
from seedream_jax.stages.common import resolve


def run(cfg, stage_cfg, workdir: str, name: str = "tokenizer") -> dict:
    """Train the SentencePiece model on every caption of the dataset (skipped if present)."""
    if cfg.tokenizer.format != "sentencepiece":
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
