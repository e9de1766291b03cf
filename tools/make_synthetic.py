"""Write the synthetic bilingual world to a folder.

    python tools/make_synthetic.py --out data/synthetic --num_images 2000 --image_size 64 --seed 0
"""
import argparse
import time

from seedream_jax.data import synthetic


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--num_images", type=int, default=2000)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--text_probability", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    cfg = synthetic.SyntheticWorldConfig(num_images=a.num_images, image_size=a.image_size,
                                         text_probability=a.text_probability, seed=a.seed)
    t = time.time()
    written = synthetic.write_dataset(cfg, a.out)
    images, records = synthetic.load_dataset(a.out)
    with_text = sum(r["spec"]["text"] is not None for r in records)
    print(f"{'wrote' if written else 'already present:'} {len(records)} images {images.shape[1:]} "
          f"({with_text} with rendered text) in {a.out} [{time.time() - t:.1f}s]")


if __name__ == "__main__":
    main()
