"""Curation: composable record filters, each counting what it kept and dropped and why.

    from seedream_jax.data import curation
    pipe = curation.Pipeline([
        curation.ResolutionFilter(min_side=256), curation.AspectFilter(max_aspect=3.0),
        curation.PerceptualDedup("phash", threshold=6), curation.OcrCaptioner(),
        curation.ClusterDownsample(fraction=0.5, k=64, cap=5000)])
    kept = list(pipe(records)); print(pipe.format_report())

or ``curation.curate_dataset(in_dir, out_dir, pipe)`` / ``tools/curate.py`` for whole datasets.
"""
from seedream_jax.data.curation.base import Drop, Filter, FilterStats, pixels, release, resized_batch
from seedream_jax.data.curation.cluster import ClusterDownsample, allocate, cluster_select, kmeans, simple_features
from seedream_jax.data.curation.embedding import EmbeddingDedup
from seedream_jax.data.curation.geometry import AspectFilter, ResolutionFilter
from seedream_jax.data.curation.ocr_caption import OcrCaptioner, text_caption
from seedream_jax.data.curation.perceptual import HammingIndex, PerceptualDedup, dhash, hamming, phash
from seedream_jax.data.curation.pipeline import Pipeline, curate_dataset, skipped

__all__ = [
    "AspectFilter", "ClusterDownsample", "Drop", "EmbeddingDedup", "Filter", "FilterStats", "HammingIndex",
    "OcrCaptioner", "PerceptualDedup", "Pipeline", "ResolutionFilter", "allocate", "cluster_select",
    "curate_dataset", "dhash", "hamming", "kmeans", "phash", "pixels", "release", "resized_batch",
    "simple_features", "skipped", "text_caption",
]
