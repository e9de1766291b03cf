"""LLM tokenizers: a SentencePiece model trained on the synthetic captions, or a local HF tokenizer.

SentencePiece models trained here are BPE models with ids pad 0, unk 1, bos 2, eos 3, then
the user-defined symbols, then the 256 byte pieces ``<0x00>``..``<0xFF>`` (``byte_fallback``:
anything unseen is spelt as UTF-8 bytes, so no prompt maps to unk), then the learned pieces. ``character_coverage=1.0``
keeps every character of the corpus (all CJK characters of the world) as a piece, and no
Unicode normalisation is applied (full-width punctuation such as “”，。 stays as written).

``TextTokenizer`` encodes prompts without BOS/EOS, right-padded with ``pad_id``, which is what
the conditioner's ``tokenize_prompts`` expects.
"""
import os
import shutil
import tempfile
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int,
                        user_defined_symbols: Sequence[str] = ()) -> str:
    """Train a BPE SentencePiece model on ``texts``; returns the path ``<model_prefix>.model``
    (``<model_prefix>.vocab`` is written beside it).

    ``vocab_size`` is an upper bound: a small corpus may yield fewer pieces. It must leave room
    for the 4 special and 256 byte pieces, the ``user_defined_symbols`` and every distinct
    character of ``texts``. ``user_defined_symbols`` become whole pieces that BPE never merges
    across: on a templated corpus, pass the Chinese words of the templates
    (``synthetic.zh_caption_words()``), else BPE learns whole template phrases as single pieces
    (Chinese has no spaces to stop it). Files are written under a temporary name and renamed,
    so an interrupted run leaves no ``.model``.
    """
    import sentencepiece as spm

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("train_sentencepiece: no non-empty texts")
    symbols = list(dict.fromkeys(user_defined_symbols))
    needed = 4 + 256 + len(symbols) + len(set("".join(texts)) - {" "})
    if vocab_size < needed:
        raise ValueError(f"train_sentencepiece: vocab_size {vocab_size} is too small: special, byte and user pieces "
                         f"and the corpus' distinct characters need >= {needed}")
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".spm-", dir=out_dir)
    try:
        tmp_prefix = os.path.join(tmp_dir, "spm")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=tmp_prefix, vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, hard_vocab_limit=False,
            user_defined_symbols=symbols, num_threads=1, minloglevel=2)
        os.replace(tmp_prefix + ".vocab", model_prefix + ".vocab")
        os.replace(tmp_prefix + ".model", model_prefix + ".model")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return model_prefix + ".model"


class TextTokenizer:
    """``tok(texts, max_length) -> (ids int32 [B, max_length], mask bool [B, max_length])``.

    Built by ``from_sentencepiece`` or ``from_hf``; ``vocab_size`` (number of ids), ``pad_id`` and
    ``eos_id`` (end of sequence, never produced by encoding text; None where the tokenizer has none)
    describe the id space, ``encode(texts)`` gives unpadded id lists, ``decode(ids)`` maps ids back to
    text (pad and special ids dropped).
    """

    def __init__(self, encode_fn: Callable[[List[str]], List[List[int]]], decode_fn: Callable[[List[int]], str],
                 vocab_size: int, pad_id: int, eos_id: Optional[int] = None):
        self._encode, self._decode = encode_fn, decode_fn
        self.vocab_size, self.pad_id = int(vocab_size), int(pad_id)
        self.eos_id = None if eos_id is None else int(eos_id)

    @classmethod
    def from_sentencepiece(cls, model_path: str) -> "TextTokenizer":
        """Load a ``.model`` file (e.g. from ``train_sentencepiece``)."""
        import sentencepiece as spm

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"SentencePiece model {model_path} does not exist")
        sp = spm.SentencePieceProcessor(model_file=model_path)
        if sp.pad_id() < 0:
            raise ValueError(f"SentencePiece model {model_path} has no pad piece (train it with pad_id=0)")
        return cls(lambda texts: sp.encode(texts), sp.decode, sp.get_piece_size(), sp.pad_id(),
                   sp.eos_id() if sp.eos_id() >= 0 else None)

    @classmethod
    def from_hf(cls, directory: str) -> "TextTokenizer":
        """A tokenizer saved with ``save_pretrained`` in a local folder (never downloads).

        Pads with the tokenizer's pad token, else its EOS token, else id 0.
        """
        from transformers import AutoTokenizer

        if not os.path.isdir(directory):
            raise FileNotFoundError(f"HF tokenizer directory {directory} does not exist")
        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        pad = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        return cls(lambda texts: tok(texts, add_special_tokens=False)["input_ids"],
                   lambda ids: tok.decode(ids, skip_special_tokens=True), len(tok), pad, tok.eos_token_id)

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids of each text, without special tokens or padding."""
        return [list(map(int, seq)) for seq in self._encode(list(texts))] if len(texts) else []

    def __call__(self, texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
        """Encode, truncate to ``max_length`` and right-pad with ``pad_id``: (ids int32, mask bool) [B, L]."""
        ids = np.full((len(texts), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_length), bool)
        for i, seq in enumerate(self.encode(texts)):
            seq = seq[:max_length]
            ids[i, :len(seq)] = seq
            mask[i, :len(seq)] = True
        return ids, mask

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a 1-D id sequence (pad and special ids contribute nothing)."""
        return self._decode([int(i) for i in ids])
