"""Input-pipeline throughput: records/s per process for each stage and end to end, vs. training demand.

    nice -n 10 python tools/bench_data.py [--records 96] [--workers 2] [--sizes 256,512]

Writes a small synthetic ArrayRecord world per resolution (PNG records of sizes off the bucket
grid, three aspect ratios, styles; ``data/synthetic_records.py``) into a temporary folder and times, single-threaded:

  decode   ``records.decode_record`` (header, CRC) + PNG decode to uint8 pixels
  augment  ``augment.fit_to_bucket`` with a random crop to the record's bucket
  batch    caption sampling + float conversion + stacking into a per-process batch

then the whole ``RecordPipeline`` (all of the above through Grain) with 0 workers (inline) and
``--workers`` threads. Rates are records (images) per second in this one process. The last
lines print what training consumes per process: the tiny config measured on this CPU, the small
config from a stated assumption (no GPU measurement exists yet; see benchmarks/RESULTS.md).

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import os
import tempfile
import time

import numpy as np

from seedream_jax.data import arrayrecord_io, augment, captions, records, synthetic
from seedream_jax.data import synthetic_records
from seedream_jax.data.pipeline import PipelineConfig, RecordPipeline

TINY = ("tiny (measured: 16 images/step at ~2.6 steps/s on this 2-core CPU)", 16 * 2.6)
SMALL = ("small (ASSUMED: global batch 256 at 512 px on 8 H100s, 1 process per GPU, ~1.0 s/step; "
         "i.e. 32 images/step/process)", 32 / 1.0)


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def _time(fn, items) -> float:
    t = time.perf_counter()
    out = [fn(x) for x in items]
    return _rate(len(out), time.perf_counter() - t), out


def bench(size: int, num_records: int, workers: int, batch: int, root: str) -> list:
    # Off-bucket sizes (as in real data), so that augment resizes as well as crops.
    sizes = ((size * 9 // 8, size * 9 // 8), (size * 3 // 4 + 8, size * 4 // 3), (size * 4 // 3, size * 3 // 4 + 8))
    world = synthetic_records.RecordWorldConfig(
        synthetic.SyntheticWorldConfig(num_images=num_records, image_size=size, seed=0), style_probability=0.5,
        sizes=sizes)
    path = os.path.join(root, f"world{size}")
    synthetic_records.write_record_world(world, path, records_per_shard=256)
    source = arrayrecord_io.ArrayRecordSource(path)
    data = [source[i] for i in range(len(source))]
    cfg = PipelineConfig(global_batch=batch, base_resolution=size, bucket_multiple=32)
    table = cfg.bucket_table()
    rows = []

    def decode(d):
        rec = records.decode_record(d)
        return rec, records.decode_image(rec.image)
    _time(decode, data[:4])  # warm-up (codec initialisation)
    rate, decoded = _time(decode, data)
    rows.append(("decode", rate))
    rng = np.random.default_rng(0)
    from seedream_jax.data.buckets import nearest_bucket
    rate, fitted = _time(lambda ri: augment.fit_to_bucket(ri[1], nearest_bucket(ri[0].height, ri[0].width, table),
                                                          rng, random_crop=True), decoded)
    rows.append(("augment", rate))
    square = [f for f in fitted if f.shape[:2] == (size, size)] or fitted[:1]
    groups = [square[i:i + batch] for i in range(0, len(square), batch)] or [square]
    caps = [r.captions for r, _ in decoded]
    t = time.perf_counter()
    n = 0
    for _ in range(max(1, len(fitted) // max(1, len(square)))):
        for g in groups:
            captions.choose_captions(caps[:len(g)], rng, cfg)
            np.stack([x.astype(np.float32) / 127.5 - 1.0 for x in g])
            n += len(g)
    rows.append(("batch", _rate(n, time.perf_counter() - t)))
    for w in (0, workers):
        pipe = RecordPipeline(source, PipelineConfig(global_batch=batch, base_resolution=size, bucket_multiple=32,
                                                     num_workers=w, prefetch=4), 0, 1)
        next(pipe)  # start-up (threads, plan) not timed
        steps = max(2, pipe.plan.steps_per_epoch - 1)
        t = time.perf_counter()
        for _ in range(steps):
            next(pipe)
        rows.append((f"end to end, {w} workers", _rate(steps * batch, time.perf_counter() - t)))
        pipe.close()
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=96, help="records per resolution")
    p.add_argument("--workers", type=int, default=2, help="worker threads for the second end-to-end run")
    p.add_argument("--batch", type=int, default=8, help="per-process batch")
    p.add_argument("--sizes", default="256,512", help="base resolutions (px)")
    a = p.parse_args()
    resolutions = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory() as root:
        table = {size: dict(bench(size, a.records, a.workers, a.batch, root)) for size in resolutions}
    stages = list(table[resolutions[0]])
    print(f"records/s per process ({a.records} PNG records per resolution, per-process batch {a.batch}, "
          f"{os.cpu_count()} CPU cores)")
    print(f"{'stage':<26}" + "".join(f"{f'{s} px':>12}" for s in resolutions))
    for stage in stages:
        print(f"{stage:<26}" + "".join(f"{table[s][stage]:>12.1f}" for s in resolutions))
    print("training consumes per process:")
    for name, rate in (TINY, SMALL):
        print(f"  {rate:7.1f} img/s  {name}")


if __name__ == "__main__":
    main()
