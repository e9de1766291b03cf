"""LLM tokenizers: a SentencePiece model trained on the synthetic captions, or a local HF tokenizer.

SentencePiece ids: pad 0, unk 1, bos 2, eos 3; ``character_coverage=1.0`` keeps every CJK
character of the corpus and no Unicode normalisation is applied (full-width
punctuation stays as written); ``byte_fallback`` spells anything unseen as UTF-8 bytes, so no
prompt maps to unk. Prompts are encoded without BOS/EOS, right-padded with pad.
"""
import os
from typing import Iterable, Sequence, Tuple

import numpy as np


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int) -> str:
    """Train a unigram SentencePiece model on ``texts``; returns the ``.model`` path.
    ``vocab_size`` is an upper bound (a small corpus may yield fewer pieces)."""
    import sentencepiece as spm

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("train_sentencepiece: no non-empty texts")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=model_prefix, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, byte_fallback=True, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        hard_vocab_limit=False, num_threads=2, minloglevel=2, split_digits=True,
        normalization_rule_name="identity")
    return model_prefix + ".model"


class TextTokenizer:
    """``tok(texts, max_length) -> (ids int32 [B, max_length], mask bool [B, max_length])``."""

    def __init__(self, encode_fn, decode_fn, vocab_size: int, pad_id: int):
        self._encode, self._decode = encode_fn, decode_fn
        self.vocab_size, self.pad_id = vocab_size, pad_id

    @classmethod
    def from_sentencepiece(cls, model_path: str) -> "TextTokenizer":
        import sentencepiece as spm
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"SentencePiece model {model_path} does not exist")
        sp = spm.SentencePieceProcessor(model_file=model_path)
        return cls(lambda texts: sp.encode(list(texts)), sp.decode, sp.get_piece_size(), sp.pad_id())

    @classmethod
    def from_hf(cls, directory: str) -> "TextTokenizer":
        """A tokenizer saved with ``save_pretrained`` in a local folder (no downloads)."""
        from transformers import AutoTokenizer
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"HF tokenizer directory {directory} does not exist")
        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        encode = lambda texts: [tok.encode(t, add_special_tokens=False) for t in texts]
        return cls(encode, lambda ids: tok.decode(ids, skip_special_tokens=True), len(tok), pad)

    def __call__(self, texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_length), bool)
        for i, seq in enumerate(self._encode(texts)):
            seq = seq[:max_length]
            ids[i, :len(seq)] = seq
            mask[i, :len(seq)] = True
        return ids, mask

    def decode(self, ids) -> str:
        return self._decode([int(i) for i in ids])
