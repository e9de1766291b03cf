"""Aggregating per-image scores into the report: nested metrics, a Markdown table, flat scalars.

A per-image result is a dict with 'categories', 'split', 'language' and 'scores' (``scoring``);
a per-pair result has 'categories', 'split' and 'consistency'. Metrics are means over the
images (or pairs) of a cell; a cell without any is None.

  metrics[category][metric][split][language]  split in ('seen', 'heldout', 'all'), language in
                                              ('en', 'zh', 'all'); object categories have the
                                              metric 'accuracy', text ones 'ra', 'rh', 'exact'
  consistency[category][split]                split in ('seen', 'heldout', 'all'); ['pairs']
                                              'scored/total' (pairs where something was detected)
"""
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from seedream_jax.eval.suite import CATEGORIES, LANGUAGES, OBJECT_CATEGORIES, SPLITS

TEXT_METRICS = ("ra", "rh", "exact")
_ALL = "all"


def metric_names(category: str) -> tuple:
    return ("accuracy",) if category in OBJECT_CATEGORIES else TEXT_METRICS


def _mean(values: List[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def aggregate(image_results: List[dict]) -> Dict[str, dict]:
    """metrics[category][metric][split][language] from per-image results."""
    out = {}
    for cat in CATEGORIES:
        rows = [r for r in image_results if cat in r["categories"]]
        if not rows:
            continue
        out[cat] = {}
        for metric in metric_names(cat):
            key = cat if metric == "accuracy" else metric
            out[cat][metric] = {
                split: {lang: _mean([r["scores"][key] for r in rows
                                     if split in (_ALL, r["split"]) and lang in (_ALL, r["language"])])
                        for lang in LANGUAGES + (_ALL,)}
                for split in SPLITS + (_ALL,)}
    return out


def aggregate_consistency(pair_results: List[dict]) -> Dict[str, dict]:
    """consistency[category][split] from per-pair results (pairs scored None are left out), and
    consistency[category]['pairs']: how many pairs were scored of how many."""
    out = {}
    for cat in CATEGORIES:
        rows = [r for r in pair_results if cat in r["categories"]]
        if rows:
            out[cat] = {split: _mean([r["consistency"] for r in rows
                                      if split in (_ALL, r["split"]) and r["consistency"] is not None])
                        for split in SPLITS + (_ALL,)}
            out[cat]["pairs"] = f"{sum(r['consistency'] is not None for r in rows)}/{len(rows)}"
    return out


def headline(metrics: dict, consistency: dict) -> Dict[str, Optional[float]]:
    """A few summary numbers: mean object accuracy (seen, held-out; en, zh), mean text Ra/Rh/exact
    over the text categories, mean consistency."""
    def mean_of(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None
    objs = [c for c in OBJECT_CATEGORIES if c in metrics]
    texts = [c for c in metrics if c not in OBJECT_CATEGORIES]
    out = {f"objects_{split}": mean_of([metrics[c]["accuracy"][split][_ALL] for c in objs]) for split in SPLITS}
    out.update({f"objects_{lang}": mean_of([metrics[c]["accuracy"][_ALL][lang] for c in objs]) for lang in LANGUAGES})
    out.update({f"text_{m}": mean_of([metrics[c][m][_ALL][_ALL] for c in texts]) for m in TEXT_METRICS})
    out["consistency"] = mean_of([v[_ALL] for v in consistency.values()])
    return out


def category_accuracy(metrics: dict) -> Dict[str, Optional[float]]:
    """Each object category's accuracy over both splits and languages."""
    return {c: metrics[c]["accuracy"][_ALL][_ALL] for c in OBJECT_CATEGORIES if c in metrics}


# (column, headline field) of the eval table after the category accuracies
EVAL_TABLE_SCORES = (("en", "objects_en"), ("zh", "objects_zh"), ("seen", "objects_seen"),
                     ("held-out", "objects_heldout"), ("text exact", "text_exact"))


def eval_table(summaries: Mapping[str, Any]) -> List[dict]:
    """One row per eval stage among ``summaries`` ({stage name: summary}, as in summary.json), in
    their order: {'eval': the eval stage, 'stage': the stage it evaluated, 'step': its checkpoint's
    step, <object category>: accuracy, 'en', 'zh', 'seen', 'held-out': mean object accuracy,
    'text exact': mean exact-text rate}."""
    return [{"eval": name, "stage": s["evaluated"], "step": s["step"], **s["category_accuracy"],
             **{column: s.get(field) for column, field in EVAL_TABLE_SCORES}}
            for name, s in summaries.items() if isinstance(s, Mapping) and "category_accuracy" in s]


def eval_table_markdown(rows: List[dict]) -> str:
    """``eval_table`` rows as a Markdown table (columns: the union of the rows' keys)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cell = lambda v: _fmt(v) if v is None or isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown(report: dict) -> str:
    """The report as Markdown: header, per-category table, consistency table, headline."""
    metrics, consistency = report["metrics"], report["consistency"]
    lines = [f"# Evaluation: {report['source']}", ""]
    lines += [f"- {k}: {v}" for k, v in report.get("info", {}).items()]
    if "timing" in report:
        lines.append("- wall time (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in report["timing"].items()))
    lines += ["", "| category | metric | en seen | zh seen | en held-out | zh held-out | all | n |",
              "|---|---|---|---|---|---|---|---|"]
    counts = report.get("suite", {})
    for cat, by_metric in metrics.items():
        n = sum(counts.get(cat, {}).values())
        for metric, cell in by_metric.items():
            values = [cell[s][lang] for s in SPLITS for lang in LANGUAGES] + [cell[_ALL][_ALL]]
            lines.append(f"| {cat} | {metric} | " + " | ".join(_fmt(v) for v in values) + f" | {n} x 2 |")
    lines += ["", "zh-en consistency (same spec and noise in both languages: Jaccard of the detected attributes, "
              "over the pairs where either image shows something)", "",
              "| category | seen | held-out | all | pairs scored |", "|---|---|---|---|---|"]
    for cat, cell in consistency.items():
        lines.append(f"| {cat} | " + " | ".join(_fmt(cell[s]) for s in SPLITS + (_ALL,)) + f" | {cell['pairs']} |")
    lines += ["", "| headline | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["headline"].items()]
    return "\n".join(lines) + "\n"


def scalars(report: dict) -> Dict[str, float]:
    """Flat TensorBoard scalars 'eval/<category>/<metric>/<split>/<language>', consistency and headline."""
    out = {}
    for cat, by_metric in report["metrics"].items():
        for metric, cell in by_metric.items():
            for split, by_lang in cell.items():
                for lang, value in by_lang.items():
                    if value is not None:
                        out[f"eval/{cat}/{metric}/{split}/{lang}"] = value
    for cat, cell in report["consistency"].items():
        for split in SPLITS + (_ALL,):
            value = cell[split]
            if value is not None:
                out[f"eval/consistency/{cat}/{split}"] = value
    out.update({f"eval/headline/{k}": v for k, v in report["headline"].items() if v is not None})
    return out
