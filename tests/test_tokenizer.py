"""SentencePiece training on the world's captions, the TextTokenizer contract, local HF tokenizers."""
import numpy as np
import pytest
import sentencepiece as spm

from seedream_jax.data import synthetic as S
from seedream_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TextTokenizer, train_sentencepiece

VOCAB = 640
WORLD = S.SyntheticWorldConfig(num_images=300, seed=1)


@pytest.fixture(scope="module")
def texts():
    return S.caption_texts({"captions": S.captions(S.scene_at(WORLD, i))} for i in range(WORLD.num_images))


@pytest.fixture(scope="module")
def model_path(texts, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("spm") / "sub" / "spm")
    return train_sentencepiece(texts, prefix, VOCAB, user_defined_symbols=S.zh_caption_words())


def test_id_layout_and_determinism(model_path, texts, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    symbols = S.zh_caption_words()
    assert [sp.id_to_piece(4 + i) for i in range(len(symbols))] == symbols
    first_byte = 4 + len(symbols)
    assert sp.id_to_piece(first_byte) == "<0x00>" and sp.id_to_piece(first_byte + 255) == "<0xFF>"
    assert sp.get_piece_size() <= VOCAB
    again = spm.SentencePieceProcessor(model_file=train_sentencepiece(
        texts, str(tmp_path / "again"), VOCAB, user_defined_symbols=S.zh_caption_words()))
    assert [sp.id_to_piece(i) for i in range(sp.get_piece_size())] == \
           [again.id_to_piece(i) for i in range(again.get_piece_size())]


def test_world_captions_encode_without_unk_and_round_trip(model_path, texts):
    tok = TextTokenizer.from_sentencepiece(model_path)
    assert tok.pad_id == 0 and tok.vocab_size == spm.SentencePieceProcessor(model_file=model_path).get_piece_size()
    ids, mask = tok(texts, 128)
    assert mask.sum(1).max() < 128, "a world caption was truncated at 128 tokens"
    sp = spm.SentencePieceProcessor(model_file=model_path)
    assert not any(sp.is_unknown(int(i)) or sp.is_byte(int(i)) for i in np.unique(ids[mask])), \
        "unk or byte-fallback pieces in world captions"
    for row, m, text in zip(ids, mask, texts):
        assert tok.decode(row[m]) == text
    assert tok.decode(ids[0]) == texts[0]  # pad ids decode to nothing


def test_chinese_template_words_are_whole_pieces(model_path):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    assert [p for p in sp.encode("一个大的红色圆形", out_type=str) if p != "▁"] == ["一个", "大的", "红色", "圆形"]


def test_padding_truncation_and_byte_fallback(model_path):
    tok = TextTokenizer.from_sentencepiece(model_path)
    prompts = ["a large red circle", "一个大的红色圆形和文字“龍”", ""]
    full, full_mask = tok(prompts, 64)
    ids, mask = tok(prompts, 5)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (3, 5)
    np.testing.assert_array_equal(ids, full[:, :5])  # truncation keeps the prefix
    np.testing.assert_array_equal(mask, full_mask[:, :5])
    lengths = full_mask.sum(1)
    assert lengths[2] == 0 and np.all(full[~full_mask] == tok.pad_id)
    np.testing.assert_array_equal(full_mask, np.arange(64)[None] < lengths[:, None])  # right-padded
    assert not np.any(full[full_mask] == UNK_ID)  # 龍 is not in the world: spelt as UTF-8 bytes
    assert tok.decode(full[1][full_mask[1]]) == prompts[1]
    assert tok([], 7)[0].shape == (0, 7)


def test_training_errors(texts, tmp_path):
    with pytest.raises(ValueError, match="too small"):
        train_sentencepiece(texts, str(tmp_path / "small"), 300)
    with pytest.raises(ValueError, match="no non-empty"):
        train_sentencepiece(["", " "], str(tmp_path / "empty"), 512)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer.from_sentencepiece(str(tmp_path / "missing.model"))


def _save_hf_tokenizer(directory, pad: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "red": 2, "circle": 3, "a": 4, "</s>": 5}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"pad_token": "[PAD]"} if pad else {}
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="</s>",
                            **special).save_pretrained(directory)


def test_hf_tokenizer_directory(tmp_path):
    _save_hf_tokenizer(tmp_path / "with_pad", pad=True)
    tok = TextTokenizer.from_hf(str(tmp_path / "with_pad"))
    ids, mask = tok(["a red circle", "red", "a red red red circle"], 4)
    np.testing.assert_array_equal(ids, [[4, 2, 3, 0], [2, 0, 0, 0], [4, 2, 2, 2]])
    np.testing.assert_array_equal(mask.sum(1), [3, 1, 4])
    assert tok.vocab_size == 6 and tok.pad_id == 0 and tok.decode(ids[0]) == "a red circle"
    _save_hf_tokenizer(tmp_path / "no_pad", pad=False)
    tok = TextTokenizer.from_hf(str(tmp_path / "no_pad"))
    assert tok.pad_id == 5  # no pad token: pads with EOS
    np.testing.assert_array_equal(tok(["red"], 3)[0], [[2, 5, 5]])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer.from_hf(str(tmp_path / "nowhere"))
