"""Train the SentencePiece tokenizer on every caption (zh + en, short + long) of a synthetic dataset.

    python tools/train_tokenizer.py --data_dir runs/tiny/data/synthetic --out runs/tiny/tokenizer/spm --vocab_size 1024

Writes ``<out>.model`` and ``<out>.vocab`` and prints the token counts of the captions (to
choose the conditioner's ``llm_max_length``).

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse

import numpy as np

from seedream_jax.data import synthetic
from seedream_jax.data.tokenizer import TextTokenizer, train_sentencepiece


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="a folder written by tools/make_synthetic.py")
    p.add_argument("--out", required=True, help="model prefix (a trailing .model is dropped)")
    p.add_argument("--vocab_size", type=int, default=1024, help="upper bound on the number of pieces")
    a = p.parse_args()
    _, records = synthetic.load_dataset(a.data_dir)
    prefix = a.out[:-len(".model")] if a.out.endswith(".model") else a.out
    path = train_sentencepiece(synthetic.caption_texts(records), prefix, a.vocab_size,
                               user_defined_symbols=synthetic.zh_caption_words())
    tok = TextTokenizer.from_sentencepiece(path)
    print(f"trained {path}: {tok.vocab_size} pieces from {4 * len(records)} captions")
    for lang in ("en", "zh"):
        for kind in ("short", "long"):
            _, mask = tok([r["captions"][lang][kind] for r in records], 1024)
            n = mask.sum(1)
            print(f"  {lang} {kind:5s} tokens: mean {n.mean():.1f}, p90 {np.percentile(n, 90):.0f}, max {n.max()}")


if __name__ == "__main__":
    main()
