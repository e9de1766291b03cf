"""Write the synthetic bilingual world to a folder, in memory-mappable form or as ArrayRecord records.

    python tools/make_synthetic.py --out data/synthetic --num_images 2000 --image_size 64 --seed 0
    python tools/make_synthetic.py --out data/world --format arrayrecord --num_images 20000 \\
        --image_size 256 --style_probability 0.5 --sizes 256x256,192x320,320x192
    python tools/make_synthetic.py --out data/world_pairs --format pairs --num_pairs 1200 --image_size 64

``--format npy`` (default) writes images.npy, records.jsonl and meta.json (``synthetic.write_dataset``,
what the tiny default trains on). ``--format arrayrecord`` writes the extended world of
``data/synthetic_records.py`` (PNG records of the record schema with zh/en captions of types
short/long/text/style, styles, extra fonts, several sizes, the scene spec in each record);
an interrupted write resumes when rerun. ``--format pairs`` writes ``--num_pairs`` world preference
pairs (``data/world_pairs.py``: every kind, prompts in English and Chinese, ``--image_size`` px,
``--seed``, ``--split``) as PNG files and a ``pairs.jsonl`` in the preference format users write
(``data/preference.py``, ``data/world_preference.py``), for ``tools/ingest.py``. Every field of
``SyntheticWorldConfig`` is a flag. Nothing is rewritten when the folder already holds the same
world (npy, arrayrecord).

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import dataclasses
import json
import os
import time

from seedream_jax.data import synthetic, synthetic_records, world_pairs, world_preference


def _sizes(text: str):
    try:
        return tuple(tuple(int(v) for v in hw.lower().split("x")) for hw in text.split(",") if hw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sizes wants HxW[,HxW...], e.g. 256x256,192x320; got {text!r}") from e


def _field_type(default):
    """argparse type for a SyntheticWorldConfig field: bools from true/false, tuples from 'a,b,c'."""
    if isinstance(default, bool):
        return lambda text: {"true": True, "1": True, "false": False, "0": False}[text.lower()]
    if isinstance(default, tuple):
        return lambda text: tuple(float(v) for v in text.split(",") if v)
    return type(default)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("npy", "arrayrecord", "pairs"), default="npy")
    p.add_argument("--num_pairs", type=int, default=1200, help="pairs: how many world preference pairs")
    p.add_argument("--split", choices=world_pairs.SPLITS, default="train", help="pairs: which split's scenes")
    p.add_argument("--languages", default="en,zh", help="pairs: prompt languages, taken in turn (en,zh)")
    p.add_argument("--style_probability", type=float, default=0.5, help="arrayrecord: chance of a styled scene")
    p.add_argument("--sizes", type=_sizes, default=(), help="arrayrecord: HxW sizes drawn uniformly "
                   "(default: image_size square)")
    p.add_argument("--records_per_shard", type=int, default=1024, help="arrayrecord: records per shard")
    for f in dataclasses.fields(synthetic.SyntheticWorldConfig):
        p.add_argument(f"--{f.name}", type=_field_type(f.default), default=f.default, help=f"default {f.default}")
    a = p.parse_args(argv)
    cfg = synthetic.SyntheticWorldConfig(**{f.name: getattr(a, f.name)
                                            for f in dataclasses.fields(synthetic.SyntheticWorldConfig)})
    t = time.time()
    if a.format == "pairs":
        languages = tuple(lang for lang in a.languages.split(",") if lang)
        try:
            path = world_preference.write_world_pairs(a.out, a.num_pairs, cfg.seed, a.split, cfg.image_size,
                                                      languages)
        except ValueError as e:
            p.error(str(e))
        print(f"{a.num_pairs} {a.split} preference pairs at {cfg.image_size} px in {os.path.abspath(path)} "
              f"[{time.time() - t:.1f}s]; ingest with: python tools/ingest.py --input {a.out} --out <dataset>")
        return
    if a.format == "arrayrecord":
        world = synthetic_records.RecordWorldConfig(cfg, a.style_probability, a.sizes)
        manifest = synthetic_records.write_record_world(world, a.out, a.records_per_shard)
        print(f"{manifest['num_records']} records in {len(manifest['shards'])} shards in {os.path.abspath(a.out)} "
              f"[{time.time() - t:.1f}s]")
        print(json.dumps(manifest["summary"]["counts"], indent=1, ensure_ascii=False))
        return
    written = synthetic.write_dataset(cfg, a.out)
    images, records = synthetic.load_dataset(a.out)
    with open(os.path.join(a.out, "meta.json"), encoding="utf-8") as f:
        counts = json.load(f)["counts"]
    print(f"{'wrote' if written else 'already present:'} {len(records)} images of shape {tuple(images.shape[1:])} "
          f"in {os.path.abspath(a.out)} [{time.time() - t:.1f}s]")
    print(f"objects per image {counts['objects_per_image']}; rendered text {counts['text']}")


if __name__ == "__main__":
    main()
