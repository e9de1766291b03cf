"""Train the SentencePiece tokenizer on every caption (zh + en, short + long) of a synthetic dataset.

    python tools/train_tokenizer.py --data_dir runs/tiny/data/synthetic --out runs/tiny/tokenizer/spm --vocab_size 1024
"""
import argparse

from seedream_jax.data import synthetic
from seedream_jax.data.tokenizer import TextTokenizer, train_sentencepiece


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True, help="model prefix; writes <out>.model and <out>.vocab")
    p.add_argument("--vocab_size", type=int, default=1024)
    a = p.parse_args()
    _, records = synthetic.load_dataset(a.data_dir)
    texts = [c for r in records for by_type in r["captions"].values() for c in by_type.values()]
    path = train_sentencepiece(texts, a.out, a.vocab_size)
    tok = TextTokenizer.from_sentencepiece(path)
    ids, mask = tok(texts[:1], 64)
    print(f"trained {path}: {tok.vocab_size} pieces from {len(texts)} captions; "
          f"e.g. {texts[0]!r} -> {mask[0].sum()} tokens")


if __name__ == "__main__":
    main()
