"""The synthetic world's preference pairs written as user preference data: PNG files plus a JSONL in
exactly the format of ``data/preference.py``, so that ``tools/ingest.py`` ingests world pairs and
user pairs the same way.

    python tools/make_synthetic.py --format pairs --out data/world_pairs --num_pairs 1200 --image_size 64
    python tools/ingest.py --input data/world_pairs --out data/world_prefs     # form: preference

Row ``i`` is world pair ``world_pairs.make_pair(seed, split, i)`` (kind ``KINDS[i % 6]``, caption
type as ``make_pair`` draws it). Its prompt is the pair's true caption in language
``languages[(i // 6) % len(languages)]`` (so every kind comes in every language); image A and
image B are the true and the perturbed renderings, in an order drawn per row from (seed, split, i),
and ``preferred`` names the true one; ``reason`` names the kind and the caption of the rejected
image. The row also holds ``key`` (``world-<split>-<i>``), ``source`` (``world_pairs/<split>``) and
the columns ``kind``, ``split``, ``index`` and ``language``, which ingestion keeps in the pair's meta.
"""
import json
import os
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

from seedream_jax.data import world_pairs

PAIRS_FILE = "pairs.jsonl"
IMAGES_DIR = "images"
_ORDER_STREAM = 7919  # rng stream tag of the A/B order


def world_pair_row(seed: int, split: str, index: int, image_size: int = 64,
                   languages: Sequence[str] = world_pairs.LANGUAGES) -> Tuple[dict, np.ndarray, np.ndarray]:
    """(row without the image paths, image A, image B) of world pair ``index``; images uint8 [S, S, 3],
    S = ``image_size`` pixels. Deterministic in (seed, split, index, image_size, languages)."""
    pair = world_pairs.make_pair(seed, split, index)
    lang = languages[(index // len(world_pairs.KINDS)) % len(languages)]
    chosen_caption, rejected_caption = pair.captions(lang)
    chosen, rejected = pair.images(image_size)
    swap = bool(np.random.default_rng([seed, _ORDER_STREAM, world_pairs.SPLITS.index(split), index]).integers(2))
    row = {"prompt": chosen_caption, "preferred": "b" if swap else "a",
           "reason": f"{pair.kind} differs; the other image matches: {rejected_caption}",
           "key": f"world-{split}-{index:06d}", "source": f"world_pairs/{split}", "kind": pair.kind, "split": split,
           "index": index, "language": lang}
    return (row, rejected, chosen) if swap else (row, chosen, rejected)


def write_world_pairs(out_dir: str, num_pairs: int, seed: int = 0, split: str = "train", image_size: int = 64,
                      languages: Sequence[str] = world_pairs.LANGUAGES) -> str:
    """Writes world pairs 0 .. ``num_pairs`` - 1 as ``<out_dir>/images/<i>_a.png`` and ``_b.png`` (PNG,
    ``image_size`` px square) and ``<out_dir>/pairs.jsonl`` (one row each, written last and atomically);
    returns the JSONL path."""
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be positive, got {num_pairs}")
    if not languages or not set(languages) <= set(world_pairs.LANGUAGES):
        raise ValueError(f"languages {tuple(languages)} must be some of {world_pairs.LANGUAGES}")
    os.makedirs(os.path.join(out_dir, IMAGES_DIR), exist_ok=True)
    lines = []
    for i in range(num_pairs):
        row, image_a, image_b = world_pair_row(seed, split, i, image_size, languages)
        paths = {}
        for column, pixels in (("image_a", image_a), ("image_b", image_b)):
            paths[column] = f"{IMAGES_DIR}/{i:06d}_{column[-1]}.png"
            Image.fromarray(pixels).save(os.path.join(out_dir, paths[column]))
        lines.append(json.dumps({"prompt": row.pop("prompt"), **paths, **row}, ensure_ascii=False))
    path = os.path.join(out_dir, PAIRS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    return path
