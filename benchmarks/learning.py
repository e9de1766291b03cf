"""Learning benchmark: train named variants of a config and print what each learned.

    python benchmarks/learning.py --config configs/tiny.py --workdir runs/learning \
        --variant baseline \
        --variant 'text_zeros:model.mmdit.text_ids="zeros"' \
        --variant 'lr2e-3:pretrain.optimizer.lr=2e-3;pretrain.train.steps=600'

A variant is ``name`` or ``name:key=value;key=value`` (values are Python literals, else strings;
keys are dotted config paths and must exist). Every variant runs the config's training stages
(``data``, ``tokenizer``, ``vae``, ``pretrain``) and then the objective ``eval`` of its
``pretrain`` checkpoint. Variants whose data / tokenizer / VAE settings agree share one run of
those stages (``<workdir>/_shared/<fingerprint>/``, linked into each variant's workdir); each
shared VAE is also evaluated on its own (the round trip of the suite's ground truth): the ceiling
that no DiT decoded by that VAE can pass.

Printed (and written to ``<workdir>/learning.md`` and ``learning.json``): one row per variant
(accuracy per object category over both languages and splits, the means per language and per
split, text exact match, the *text gain* at t = 0.8 and 0.95 (``eval/text_use.py``: flow-matching
error with captions of other scenes minus with the right ones, on the suite's ground truth; it
shows whether the DiT uses its prompt before the eval can see it in finished images), and wall
seconds of the shared stages, the DiT and the eval), then per variant the category x language x
split table. A variant whose ``result.json`` exists is not
rerun (``--force`` reruns it), so a table can grow over several invocations.
"""
import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from seedream_jax.config_lib import apply_overrides, load_run_config  # noqa: E402
from seedream_jax.eval.suite import LANGUAGES, OBJECT_CATEGORIES, SPLITS  # noqa: E402

SHARED_STAGES = ("data", "tokenizer", "vae")
_ALL = "all"


def parse_variant(spec: str):
    """'name' or 'name:key=value;key=value' -> (name, ['key=value', ...])."""
    name, _, body = spec.partition(":")
    if not name.strip():
        raise ValueError(f"variant {spec!r}: empty name")
    return name.strip(), [item.strip() for item in body.split(";") if item.strip()]


def shared_fingerprint(cfg) -> str:
    """Hash of every setting the shared stages (data, tokenizer, VAE) read."""
    parts = {"data": cfg.data.to_dict(), "tokenizer": cfg.tokenizer.to_dict(), "vae": cfg.vae.to_dict(),
             "model_vae": cfg.model.vae.to_dict(), "resolution": cfg.model.resolution}
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _summary(workdir):
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _report(eval_summary):
    with open(os.path.join(eval_summary["eval_dir"], "report.json"), encoding="utf-8") as f:
        return json.load(f)


def _eval(cfg, workdir, checkpoint, run_stages):
    """Run the eval stage on ``checkpoint`` (a stage dir name); returns (report, seconds)."""
    c = apply_overrides(cfg.copy_and_resolve_references(), [f"eval.checkpoint={checkpoint}"])
    c.stages = ("eval",)
    t0 = time.time()
    summary = run_stages(c, workdir)["eval"]
    return _report(summary), round(time.time() - t0, 1)


def prepare_shared(cfg, root, run_stages, force=False):
    """Run data/tokenizer/VAE once per fingerprint; returns (shared dir, stage seconds, VAE ceiling report)."""
    shared = os.path.join(root, "_shared", shared_fingerprint(cfg))
    stages = tuple(s for s in cfg.stages if s in SHARED_STAGES)
    done = os.path.join(shared, "shared.json")
    if force or not os.path.exists(done):
        c = cfg.copy_and_resolve_references()
        c.stages = stages
        run_stages(c, shared)
        ceiling = _eval(cfg, shared, "vae", run_stages)[0] if "vae" in stages else None
        seconds = {s: _summary(shared)[s]["wall_seconds"] for s in stages}
        with open(done, "w") as f:
            json.dump({"seconds": seconds, "ceiling": ceiling and _compact(ceiling)}, f, indent=1)
    with open(done) as f:
        info = json.load(f)
    return shared, info["seconds"], info["ceiling"]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _compact(report):
    """The parts of an eval report the tables use."""
    m = report["metrics"]
    cats = [c for c in OBJECT_CATEGORIES if c in m]
    out = {"accuracy": {c: m[c]["accuracy"] for c in cats}}
    out["by_language"] = {lang: _mean([m[c]["accuracy"][_ALL][lang] for c in cats]) for lang in LANGUAGES}
    out["by_split"] = {s: _mean([m[c]["accuracy"][s][_ALL] for c in cats]) for s in SPLITS}
    out["text_exact"] = report["headline"].get("text_exact")
    return out


def text_gain(cfg, vdir, checkpoint="pretrain"):
    """``eval/text_use.text_use`` of a variant's checkpoint (EMA weights) on the whole suite."""
    from seedream_jax.eval.suite import build_suite
    from seedream_jax.eval.text_use import suite_batch, text_use
    from seedream_jax.stages.sample import load_pipeline
    pipe, params = load_pipeline(cfg, vdir, checkpoint, use_ema=True)
    images, captions = suite_batch(build_suite(), int(cfg.model.resolution))
    return text_use(pipe, params, images, captions)


def run_variant(base_cfg, root, name, overrides, run_stages, force=False):
    """Train and evaluate one variant; returns its result dict (also saved as result.json)."""
    cfg = apply_overrides(base_cfg.copy_and_resolve_references(), overrides)
    vdir = os.path.join(root, name)
    path = os.path.join(vdir, "result.json")
    if os.path.exists(path) and not force:
        with open(path) as f:
            return json.load(f)
    shared, shared_seconds, ceiling = prepare_shared(cfg, root, run_stages)
    os.makedirs(vdir, exist_ok=True)
    for stage in SHARED_STAGES:
        link = os.path.join(vdir, stage)
        if os.path.isdir(os.path.join(shared, stage)) and not os.path.lexists(link):
            os.symlink(os.path.join(shared, stage), link)
    c = cfg.copy_and_resolve_references()
    c.stages = tuple(s for s in cfg.stages if s not in SHARED_STAGES + ("sample", "eval"))
    t0 = time.time()
    summaries = run_stages(c, vdir)
    train_seconds = round(time.time() - t0, 1)
    report, eval_seconds = _eval(cfg, vdir, "pretrain", run_stages)
    gain = text_gain(cfg, vdir)
    result = {"name": name, "overrides": overrides, "shared": shared,
              "shared_seconds": shared_seconds, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
              "pretrain": {k: v for k, v in summaries.get("pretrain", {}).items() if k != "final_metrics"},
              "eval_dir": _summary(vdir)["eval"]["eval_dir"], "ceiling": ceiling, "text_use": gain,
              **_compact(report)}
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def _fmt(v):
    return "–" if v is None else f"{v:.2f}"


def summary_table(rows):
    """Markdown: one row per result (a variant or a VAE ceiling)."""
    cats = [c for c in OBJECT_CATEGORIES if any(c in r["accuracy"] for r in rows)]
    head = (["variant"] + cats + [f"{lang}" for lang in LANGUAGES] + ["seen", "held-out", "text exact",
                                                                      "text gain t=.8", "t=.95",
                                                                      "shared s", "DiT s", "eval s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [_fmt(r["accuracy"].get(c, {}).get(_ALL, {}).get(_ALL)) for c in cats]
        vals += [_fmt(r["by_language"][lang]) for lang in LANGUAGES]
        vals += [_fmt(r["by_split"][s]) for s in SPLITS] + [_fmt(r["text_exact"])]
        vals += [f"{r['text_use'][t]['text_gain']:.4f}" if "text_use" in r else "–" for t in ("0.80", "0.95")]
        vals += [str(round(sum(r.get("shared_seconds", {}).values()))) if r.get("shared_seconds") else "–",
                 str(round(r["train_seconds"])) if "train_seconds" in r else "–",
                 str(round(r["eval_seconds"])) if "eval_seconds" in r else "–"]
        lines.append(f"| {r['name']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def detail_table(result):
    """Markdown: category x (language, split) accuracy of one result."""
    cols = [(lang, s) for s in SPLITS for lang in LANGUAGES]
    lines = [f"**{result['name']}**", "", "| category | " + " | ".join(f"{lang} {s}" for lang, s in cols) + " | all |",
             "|" + "---|" * (len(cols) + 2)]
    for cat, cell in result["accuracy"].items():
        lines.append(f"| {cat} | " + " | ".join(_fmt(cell[s][lang]) for lang, s in cols) + f" | {_fmt(cell[_ALL][_ALL])} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py")
    parser.add_argument("--workdir", required=True, help="one folder per variant, plus _shared/")
    parser.add_argument("--variant", action="append", default=[], help="name[:key=value;key=value] (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="key=value override for every variant (repeatable)")
    parser.add_argument("--eval_items", type=int, default=0,
                        help="eval.max_items_per_group: first n items per (kind, split); 0 = the whole suite")
    parser.add_argument("--force", action="store_true", help="rerun variants that already have a result")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or ["baseline"])]
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")

    from seedream_jax.main import run_stages
    base = load_run_config(args.config, overrides=args.set + [f"eval.max_items_per_group={args.eval_items}"])
    root = os.path.abspath(args.workdir)
    os.makedirs(root, exist_ok=True)
    results = []
    for name, overrides in variants:
        print(f"==== variant {name}: {overrides or 'config as is'} ====", flush=True)
        results.append(run_variant(base, root, name, overrides, run_stages, force=args.force))
    ceilings, seen = [], set()
    for r in results:
        if r.get("ceiling") and r["shared"] not in seen:
            seen.add(r["shared"])
            ceilings.append(dict(r["ceiling"], name=f"VAE ceiling ({os.path.basename(r['shared'])})"))
    text = "\n\n".join([summary_table(ceilings + results)] + [detail_table(r) for r in ceilings + results])
    print("\n" + text, flush=True)
    with open(os.path.join(root, "learning.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(root, "learning.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    return results


if __name__ == "__main__":
    main()
