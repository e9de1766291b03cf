"""Curate a record dataset into a new one through a chain of filters, and print what each dropped.

    python tools/curate.py --input data/photos --out data/photos_curated \
        --min_side 256 --max_aspect 3 --phash 6 --ocr --downsample_fraction 0.5 --clusters 64 --cap 5000

Filters run in this order, each only when its flag is given: resolution (--min_side,
--min_pixels, --max_pixels), aspect (--max_aspect), perceptual dedup (--phash / --dhash: Hamming
threshold in bits), embedding dedup (--embed_fn module:function taking uint8 [B, S, S, 3] and
returning [B, D], --embed_threshold cosine), OCR text captions (--ocr, --ocr_min_score,
--require_text, --max_text_area), cluster down-sampling (--downsample_target N or
--downsample_fraction F, --clusters k, --cap per-cluster maximum; features from --embed_fn when
given, else colour thumbnails). The report goes to stdout and <out>/curation_report.json.
Rerunning the same command after an interruption resumes.

Exit status: 0 when records were written and the filters dropped at most --max_skip_fraction of
the input records (the down-sampler's drops are requested, not skips, and do not count); 1 when
nothing was written or more were dropped (after writing the report and printing the top
reasons); 2 when the command line or the input / output directories are unusable.

Imports ``seedream_jax`` from the checkout this file is in, whatever copy is installed or on
PYTHONPATH (``tools/_bootstrap.py``), so it can be run from any directory.
"""
import _bootstrap  # noqa: F401  (first: this checkout's seedream_jax)
import argparse
import importlib
import sys

from seedream_jax.data import arrayrecord_io, curation, ingest


def _load(spec: str):
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--embed_fn must be module:function, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def build_pipeline(a) -> curation.Pipeline:
    """The filter chain selected by the parsed flags ``a``."""
    filters = []
    if a.min_side or a.min_pixels or a.max_pixels:
        filters.append(curation.ResolutionFilter(min_side=a.min_side, min_pixels=a.min_pixels,
                                                 max_pixels=a.max_pixels))
    if a.max_aspect:
        filters.append(curation.AspectFilter(max_aspect=a.max_aspect))
    if a.phash is not None:
        filters.append(curation.PerceptualDedup("phash", a.phash))
    if a.dhash is not None:
        filters.append(curation.PerceptualDedup("dhash", a.dhash))
    embed = _load(a.embed_fn) if a.embed_fn else None
    if embed is not None:
        filters.append(curation.EmbeddingDedup(embed, threshold=a.embed_threshold, image_size=a.embed_size))
    if a.ocr:
        filters.append(curation.OcrCaptioner(min_score=a.ocr_min_score, require_text=a.require_text,
                                             max_text_area=a.max_text_area))
    if a.downsample_target or a.downsample_fraction:
        feature_fn = (lambda recs: embed(curation.resized_batch(recs, a.embed_size))) if embed else None
        filters.append(curation.ClusterDownsample(target=a.downsample_target, fraction=a.downsample_fraction,
                                                  k=a.clusters, cap=a.cap, feature_fn=feature_fn, seed=a.seed))
    if not filters:
        raise SystemExit("no filter selected: see --help")
    return curation.Pipeline(filters)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="complete record dataset directories")
    p.add_argument("--out", required=True)
    p.add_argument("--records_per_shard", type=int, default=1000)
    p.add_argument("--min_side", type=int)
    p.add_argument("--min_pixels", type=int)
    p.add_argument("--max_pixels", type=int)
    p.add_argument("--max_aspect", type=float)
    p.add_argument("--phash", type=int, help="Hamming threshold (bits of 64)")
    p.add_argument("--dhash", type=int, help="Hamming threshold (bits of 64)")
    p.add_argument("--embed_fn", help="module:function, uint8 [B, S, S, 3] -> float [B, D]")
    p.add_argument("--embed_threshold", type=float, default=0.95)
    p.add_argument("--embed_size", type=int, default=224)
    p.add_argument("--ocr", action="store_true")
    p.add_argument("--ocr_min_score", type=float, default=0.5)
    p.add_argument("--require_text", action="store_true")
    p.add_argument("--max_text_area", type=float)
    p.add_argument("--downsample_target", type=int)
    p.add_argument("--downsample_fraction", type=float)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--cap", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_skip_fraction", type=float, default=0.5,
                   help="exit 1 when the filters (not the down-sampler) drop more than this share of the "
                        "records (default 0.5)")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    pipeline = build_pipeline(a)
    config = {k: v for k, v in sorted(vars(a).items())
              if k not in ("input", "out", "no_progress", "max_skip_fraction")}
    try:
        report = curation.curate_dataset(a.input, a.out, pipeline, records_per_shard=a.records_per_shard,
                                         config=config, progress=not a.no_progress)
    except arrayrecord_io.DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verdict = ingest.skip_verdict(report["seen"], report["kept"], curation.skipped(report), a.max_skip_fraction,
                                  what="input records")
    if verdict:
        print(f"error: {verdict} (examples in {a.out}/{curation.pipeline.REPORT})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
