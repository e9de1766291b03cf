"""Write the synthetic bilingual world (images.npy, records.jsonl, meta.json) to a folder.

    python tools/make_synthetic.py --out data/synthetic --num_images 2000 --image_size 64 --seed 0

Every field of ``SyntheticWorldConfig`` is a flag. Nothing is rewritten when the folder
already holds the same world.
"""
import argparse
import dataclasses
import json
import os
import time

from seedream_jax.data import synthetic


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    for f in dataclasses.fields(synthetic.SyntheticWorldConfig):
        p.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=f"default {f.default}")
    a = p.parse_args()
    cfg = synthetic.SyntheticWorldConfig(**{f.name: getattr(a, f.name)
                                            for f in dataclasses.fields(synthetic.SyntheticWorldConfig)})
    t = time.time()
    written = synthetic.write_dataset(cfg, a.out)
    images, records = synthetic.load_dataset(a.out)
    with open(os.path.join(a.out, "meta.json"), encoding="utf-8") as f:
        counts = json.load(f)["counts"]
    print(f"{'wrote' if written else 'already present:'} {len(records)} images of shape {tuple(images.shape[1:])} "
          f"in {os.path.abspath(a.out)} [{time.time() - t:.1f}s]")
    print(f"objects per image {counts['objects_per_image']}; rendered text {counts['text']}")


if __name__ == "__main__":
    main()
