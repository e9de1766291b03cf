"""Ingest an image-text corpus into a sharded ArrayRecord dataset of seedream records.

    python tools/ingest.py --input photos/ --out data/photos                      # folder + sidecars
    python tools/ingest.py --input manifest.jsonl --image_root /data/img --out data/m
    python tools/ingest.py --input train.parquet --out data/p
    python tools/ingest.py --input 'shards/*.tar' --out data/wds --workers 8      # WebDataset

Bad items (missing, empty, undecodable or truncated images, bad UTF-8, missing captions, too
small, absurd aspect ratio, ...) are skipped and counted by reason; the table is printed at the
end and saved as <out>/ingest_report.json. Rerunning the same command after an interruption
resumes after the last finished shard; on a complete output it only prints the report.
Exit status 0 unless the command line or the output directory is unusable.
"""
import argparse
import glob
import sys

from seedream_jax.data import arrayrecord_io, ingest, ingest_sources


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="folder(s), manifest(s) or tar shard(s); globs allowed")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--kind", choices=("auto", "folder", "jsonl", "parquet", "webdataset"), default="auto")
    p.add_argument("--image_root", default=None, help="base of relative manifest paths (default: manifest folder)")
    d = ingest.IngestConfig()
    p.add_argument("--min_side", type=int, default=d.min_side, help="pixels")
    p.add_argument("--max_aspect", type=float, default=d.max_aspect, help="longer / shorter side")
    p.add_argument("--max_pixels", type=int, default=d.max_pixels)
    p.add_argument("--lang", default=d.lang, help="language of untyped captions: auto (zh if CJK, else en), en, zh, ...")
    p.add_argument("--txt_caption_type", default=d.txt_caption_type, choices=("short", "long", "text", "style"))
    p.add_argument("--source", default=d.source, help="Record.source for items that do not name one")
    p.add_argument("--records_per_shard", type=int, default=d.records_per_shard)
    p.add_argument("--workers", type=int, default=d.workers, help="decode workers; 0 = CPU count, 1 = inline")
    p.add_argument("--pool", choices=("process", "thread"), default=d.pool)
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)

    paths = []
    for pattern in a.input:
        matches = sorted(glob.glob(pattern))
        if not matches:
            p.error(f"--input {pattern!r} matches nothing")
        paths.extend(matches)
    kinds = {ingest_sources.guess_kind(x) for x in paths} if a.kind == "auto" else {a.kind}
    if len(kinds) != 1:
        p.error(f"inputs of several kinds {sorted(kinds)}: ingest them separately or pass --kind")
    cfg = ingest.IngestConfig(min_side=a.min_side, max_aspect=a.max_aspect, max_pixels=a.max_pixels, lang=a.lang,
                              txt_caption_type=a.txt_caption_type, source=a.source,
                              records_per_shard=a.records_per_shard, workers=a.workers, pool=a.pool)
    try:
        ingest.ingest(kinds.pop(), paths, a.out, cfg, image_root=a.image_root, progress=not a.no_progress)
    except arrayrecord_io.DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
