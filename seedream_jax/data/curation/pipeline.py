"""A chain of curation filters, its report, and curation of a whole dataset directory.

``Pipeline([f1, f2, ...])(records)`` streams records through the filters in order (each sees
only what the previous kept) and yields the survivors; ``report()`` / ``format_report()`` give
every filter's seen / kept / annotated / dropped-by-reason counts.

``curate_dataset(in_paths, out_dir, pipeline)`` reads complete record datasets, runs the pipeline
and writes the survivors as a new dataset with the same shard layout. The pipeline is
deterministic, so a rerun after an interruption replays it and skips the records already in
finished shards: the output is the same as that of an uninterrupted run.
"""
import json
import os
import sys
from typing import Iterable, Iterator, Sequence, Union

from tqdm import tqdm

from seedream_jax.data import arrayrecord_io, records as records_lib
from seedream_jax.data.curation.base import Filter, release

REPORT = "curation_report.json"


class Pipeline:
    """Filters applied in order; see the module docstring."""

    def __init__(self, filters: Sequence[Filter]):
        names = [f.name for f in filters]
        if len(set(names)) != len(names):
            raise ValueError(f"filter names must be unique in a pipeline, got {names}")
        self.filters = list(filters)
        self.seen = 0
        self.kept = 0

    def __call__(self, records: Iterable[records_lib.Record]) -> Iterator[records_lib.Record]:
        def count_in(stream):
            for r in stream:
                self.seen += 1
                yield r
        stream = count_in(records)
        for f in self.filters:
            stream = f(stream)
        for r in stream:
            self.kept += 1
            release(r)
            yield r

    def report(self) -> dict:
        """``{"seen", "kept", "filters": [FilterStats.as_dict(), ...]}``."""
        return {"seen": self.seen, "kept": self.kept, "filters": [f.stats.as_dict() for f in self.filters]}

    def format_report(self) -> str:
        """Text table: one line per filter (seen, kept, annotated, dropped) and one per drop reason."""
        lines = [f"{'filter':<24}{'seen':>9}{'kept':>9}{'annot.':>8}{'dropped':>9}  reasons"]
        for f in self.filters:
            s = f.stats
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.dropped.items(), key=lambda kv: -kv[1]))
            lines.append(f"{s.name:<24}{s.seen:>9}{s.kept:>9}{s.annotated:>8}{s.dropped_total:>9}  {reasons}")
        lines.append(f"{'pipeline':<24}{self.seen:>9}{self.kept:>9}{'':>8}{self.seen - self.kept:>9}")
        return "\n".join(lines)


def skipped(report: dict) -> dict:
    """``{"<filter>/<reason>": count}`` of a pipeline report's drops by filters that reject records
    (every filter but selections such as ``ClusterDownsample``, whose drops were asked for)."""
    out = {}
    for f in report["filters"]:
        if not f.get("selection", f["name"] == "cluster_downsample"):  # reports written before the flag
            for reason, count in f["dropped"].items():
                out[f"{f['name']}/{reason}"] = count
    return out


def curate_dataset(in_paths: Union[str, Sequence[str]], out_dir: str, pipeline: Pipeline,
                   records_per_shard: int = 1000, config: dict = None, progress: bool = True, log=print) -> dict:
    """Writes the records of ``in_paths`` that ``pipeline`` keeps to ``out_dir``; returns the report.

    ``config`` describes the pipeline (JSON); a rerun resumes only with the same inputs and config.
    """
    source = arrayrecord_io.ArrayRecordSource(in_paths, decode=True)
    settings = {"inputs": [os.path.abspath(p) for p in source.paths], "pipeline": config or
                [f.name for f in pipeline.filters]}
    writer = arrayrecord_io.ShardedWriter(out_dir, records_per_shard, config=settings)
    if writer.complete:
        report = writer.close()["summary"]
        log(f"[curate] {out_dir} is already complete ({report.get('kept')} records)")
        return report
    skip = writer.records_done
    if skip:
        log(f"[curate] resuming {out_dir}: replaying the pipeline, {skip} records already written")
    bar = tqdm(source, desc="curate", unit=" records", total=len(source), disable=not progress, file=sys.stderr,
               mininterval=1.0)
    try:
        for i, record in enumerate(pipeline(bar)):
            if i >= skip:
                writer.write(records_lib.encode_record(record))
    except BaseException:
        writer.abort()
        raise
    report = pipeline.report()
    writer.close(summary=report)
    with open(os.path.join(out_dir, REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False, sort_keys=True)
    log(pipeline.format_report())
    return report
