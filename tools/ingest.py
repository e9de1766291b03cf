"""Ingest an image-text corpus into a sharded ArrayRecord dataset of seedream records.

    python tools/ingest.py --input photos/ --out data/photos                      # folder + sidecars
    python tools/ingest.py --input my_hf_imagefolder/ --out data/hf               # metadata.jsonl/.csv
    python tools/ingest.py --input hub_dataset/data/ --out data/hub --caption_column prompt  # HF Parquet
    python tools/ingest.py --input coco/annotations/captions_train2017.json --out data/coco \\
        --image_root coco/train2017
    python tools/ingest.py --input img2dataset_out/ --out data/laion --workers 8  # its tars (or parquet)
    python tools/ingest.py --input manifest.jsonl --image_root /data/img --out data/m   # or manifest.csv
    python tools/ingest.py --input 'shards/*.tar' --out data/wds --workers 8      # WebDataset
    python tools/ingest.py --input prefs/pairs.jsonl --out data/prefs             # preference pairs

Input forms (--format, detected from the input when not given):
  folder       images with same-stem .txt / .json caption sidecars (also img2dataset's "files")
  imagefolder  Hugging Face imagefolder: metadata.jsonl or metadata.csv (top or split sub-folders)
               with a file_name column and a caption column (--caption_column)
  jsonl, csv   a manifest, one row per image: an image column (path, image_path, file, file_name,
               image, jpg, png, webp, or --image_column) and captions (--caption_column, captions,
               caption_<lang>, <type>_<lang>), scores, source, key; other fields go to meta
  parquet      Parquet files or a folder of them: Hugging Face datasets shards (image struct
               {bytes, path}, any caption column), img2dataset parquet (jpg bytes, caption, url,
               key, width, height); a row with only a url is skipped as remote_url
  webdataset   tar shards (also img2dataset's webdataset output: give its folder or its *.tar)
  coco         COCO captions_*.json; one record per image, its first caption the record's caption
               and the others in meta["alt_captions"]; images from --image_root (default: the
               <split> folder beside or above the JSON's folder)
  preference   preference pairs, JSONL or Parquet rows {"prompt", "image_a", "image_b",
               "preferred": "a" | "b", "reason" (optional)}; image paths relative to the file's
               folder (or --image_root), in Parquet also image bytes or {bytes, path} structs;
               written as pair records, the preferred image first (seedream_jax/data/preference.py)
A .jsonl or .parquet file with the preference columns is a preference file. A folder is detected
as imagefolder (metadata file), webdataset (.tar), coco (captions_*.json), preference (a
preference .jsonl / .parquet), folder (images) or parquet (.parquet), in that order; an input of
no recognisable form is refused with a message naming what it holds.

Bad items (missing, empty, undecodable or truncated images, bad UTF-8, missing or empty captions,
unknown column layouts, too small, absurd aspect ratio; for pairs also missing_field,
unknown_label, same_image, ...) are skipped and counted by reason; the
table is printed at the end and saved as <out>/ingest_report.json. Rerunning the same command
after an interruption resumes after the last finished shard; on a complete output it only prints
the report.

Exit status: 0 when records were written and at most --max_skip_fraction of the input items
were skipped; 1 when nothing was written or more were skipped (after writing the report and
printing the top reasons); 2 when the command line, the input form or the output directory is
unusable.

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import glob
import sys

from seedream_jax.data import arrayrecord_io, ingest, ingest_sources


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+",
                   help="folder(s), manifest(s), Parquet file(s), COCO JSON(s) or tar shard(s); globs allowed")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--format", "--kind", dest="format", choices=("auto",) + ingest_sources.FORMS, default="auto",
                   help="input form (default: detected from the input)")
    p.add_argument("--image_root", default=None,
                   help="base of relative image paths in manifests, Parquet and COCO (default: the file's "
                        "folder; for COCO the <split> folder)")
    d = ingest.IngestConfig()
    p.add_argument("--caption_column", default=d.caption_column,
                   help="row field holding the caption (default: text, then caption)")
    p.add_argument("--image_column", default=d.image_column,
                   help=f"row field holding the image (default: the first of "
                        f"{', '.join(ingest_sources.IMAGE_COLUMNS)})")
    p.add_argument("--min_side", type=int, default=d.min_side, help="pixels")
    p.add_argument("--max_aspect", type=float, default=d.max_aspect, help="longer / shorter side")
    p.add_argument("--max_pixels", type=int, default=d.max_pixels)
    p.add_argument("--lang", default=d.lang,
                   help="language of untyped captions: auto (zh if CJK, else en), en, zh, ...")
    p.add_argument("--txt_caption_type", default=d.txt_caption_type, choices=("short", "long", "text", "style"))
    p.add_argument("--source", default=d.source, help="Record.source for items that do not name one")
    p.add_argument("--records_per_shard", type=int, default=d.records_per_shard)
    p.add_argument("--workers", type=int, default=d.workers, help="decode workers; 0 = CPU count, 1 = inline")
    p.add_argument("--pool", choices=("process", "thread"), default=d.pool)
    p.add_argument("--max_skip_fraction", type=float, default=0.5,
                   help="exit 1 when more than this share of the input items is skipped (default 0.5)")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)

    paths = []
    for pattern in a.input:
        matches = sorted(glob.glob(pattern))
        if not matches:
            p.error(f"--input {pattern!r} matches nothing")
        paths.extend(matches)
    cfg = ingest.IngestConfig(min_side=a.min_side, max_aspect=a.max_aspect, max_pixels=a.max_pixels, lang=a.lang,
                              txt_caption_type=a.txt_caption_type, caption_column=a.caption_column,
                              image_column=a.image_column, source=a.source,
                              records_per_shard=a.records_per_shard, workers=a.workers, pool=a.pool)
    try:
        kind, files = ingest_sources.resolve_inputs(paths, a.format)
        print(f"[ingest] input form: {kind} ({len(files)} {'path' if len(files) == 1 else 'paths'})")
        report = ingest.ingest(kind, files, a.out, cfg, image_root=a.image_root, progress=not a.no_progress)
    except (arrayrecord_io.DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verdict = ingest.skip_verdict(report["items"], report["written"], report["skipped"], a.max_skip_fraction)
    if verdict:
        print(f"error: {verdict} (examples in {a.out}/{ingest.REPORT})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
