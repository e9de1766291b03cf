"""Style control: does the aesthetic adapter (a ``ct`` stage) draw the style it is tagged with,
and does it beat the base model prompted with the same style words?

    python benchmarks/style_control.py --workdir runs/chain --ct ct --n 16 \
        [--base pretrain] [--mode full|single] [--language en|zh] [--output runs/chain/style_control]

For each style attribute and each of its values (``synthetic.STYLES``), ``--n`` world scenes
(``SyntheticWorldConfig(seed=--scene-seed)``, the same scenes and sampler seeds for every value)
are sampled twice:

- adapter: the ct stage, prompted with the scene's caption, ``style_tags`` set to the style;
- base words: the base (pretrain) stage, prompted with the same caption and the style's words
  appended as the world's ``style`` caption type does (``synthetic.all_captions``: English
  ``caption + ", in " + phrases``, Chinese ``caption + "，" + phrases``).

Style per sample: ``--mode full`` (default) draws a full style per scene (every attribute, from
``--scene-seed``) and pins the measured attribute to the value, so that the adapter gets all four
tags and the base the world's whole style phrase; ``--mode single`` gives only the measured
attribute (the others absent / unsaid). The caption is the scene's ``long`` caption by default
(background, positions, sizes: the scorer needs to know where the scene puts the shapes); see
``--caption``.

Every image is read by the style scorer (``eval/style.py``, exact on the world's own renders)
against its scene; the table gives, per attribute, the accuracy of the measured attribute (mean
over its values, each value ``--n`` images) for the adapter and for the base, then per value.
``--output`` writes ``style_control.json`` and one grid per attribute (rows of values; adapter
and base side by side).

The scorer's own check on ground truth (no stages needed): the world's renders of ``--n`` scenes
of the record world with a random style each, at ``--size`` px, scored against their scenes:

    python benchmarks/style_control.py --verify-scorer --n 500 --size 64 [--scene-seed 0] [--vae runs/chain/vae]

With ``--vae`` the renders go through that VAE stage's round trip first: the style a DiT decoding
with it could at best show (its ceiling, as the eval's VAE row is for content).
"""
import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seedream_jax.data import synthetic  # noqa: E402
from seedream_jax.eval import style as style_lib  # noqa: E402

ATTRIBUTES = tuple(synthetic.STYLES)


@dataclasses.dataclass
class Group:
    """The samples of one (attribute, value): ``styles`` [N] {attribute: value} given to sample n
    (the measured attribute always ``value``)."""
    attribute: str
    value: str
    styles: List[Dict[str, str]]


def world_scenes(n: int, seed: int) -> List[synthetic.Scene]:
    """Scenes 0..n-1 of the default world with ``seed`` (unstyled)."""
    cfg = synthetic.SyntheticWorldConfig(num_images=max(n, 1), seed=seed)
    return [synthetic.scene_at(cfg, i) for i in range(n)]


def style_groups(n: int, mode: str = "full", seed: int = 0) -> List[Group]:
    """One group per (attribute, value); in ``full`` mode sample i's other attributes are drawn
    from ``default_rng([seed, i])`` (the same draws in every group)."""
    if mode not in ("full", "single"):
        raise ValueError(f"mode must be 'full' or 'single', got {mode!r}")
    base = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 11])
        base.append({a: list(t)[int(rng.integers(len(t)))] for a, t in synthetic.STYLES.items()})
    groups = []
    for attribute, table in synthetic.STYLES.items():
        for value in table:
            styles = [({**b, attribute: value} if mode == "full" else {attribute: value}) for b in base]
            groups.append(Group(attribute, value, styles))
    return groups


def style_words(caption: str, style: Mapping[str, str], language: str) -> str:
    """``caption`` with the style's phrases appended as the world's ``style`` caption type does."""
    phrases = [synthetic.STYLES[a][style[a]] for a in ATTRIBUTES if a in style]
    if not phrases:
        return caption
    if language == "en":
        return caption.rstrip(".") + ", in " + synthetic._join_en([en for en, _ in phrases])
    return caption.rstrip("。") + "，" + "，".join(zh for _, zh in phrases)


def tag_rows(styles: Sequence[Mapping[str, str]]) -> np.ndarray:
    """int32 [N, A] of ``data/style_tags.py`` (given attributes set, the others absent)."""
    from seedream_jax.data import style_tags
    return np.stack([style_tags.from_names(dict(s)) for s in styles]).astype(np.int32)


def measure(adapter_fn: Callable, base_fn: Callable, scenes: Sequence[synthetic.Scene], groups: Sequence[Group], *,
            language: str = "en", caption: str = "long", margin: int = 2) -> dict:
    """Sample and score every group. ``adapter_fn(prompts, tag_rows [N, A]) -> uint8 [N, H, W, 3]``,
    ``base_fn(prompts) -> uint8 [N, H, W, 3]`` (each called with the same seeds every time).
    Returns {"groups": [{attribute, value, adapter, base}], "attributes": {attribute: {adapter,
    base}}} (accuracies of the measured attribute), and the images under "images"."""
    captions = [synthetic.captions(s)[language][caption] for s in scenes]
    rows, images = [], {}
    for g in groups:
        adapter_images = np.asarray(adapter_fn(captions, tag_rows(g.styles)))
        base_images = np.asarray(base_fn([style_words(c, s, language) for c, s in zip(captions, g.styles)]))
        acc = {}
        for name, pics in (("adapter", adapter_images), ("base", base_images)):
            predicted = style_lib.score_style(pics, scenes, margin=margin)[g.attribute]
            acc[name] = float(np.mean([p == g.value for p in predicted]))
        rows.append({"attribute": g.attribute, "value": g.value, **acc})
        images[(g.attribute, g.value)] = (adapter_images, base_images)
    per_attribute = {}
    for a in ATTRIBUTES:
        mine = [r for r in rows if r["attribute"] == a]
        if mine:
            per_attribute[a] = {k: float(np.mean([r[k] for r in mine])) for k in ("adapter", "base")}
    return {"groups": rows, "attributes": per_attribute, "images": images}


def format_table(result: Mapping) -> str:
    """Markdown: per attribute (adapter vs base words), then per value."""
    lines = ["| attribute | adapter (tags) | base (style words) |", "|---|---|---|"]
    for a, acc in result["attributes"].items():
        lines.append(f"| {a} | {acc['adapter']:.3f} | {acc['base']:.3f} |")
    lines += ["", "| attribute | value | adapter (tags) | base (style words) |", "|---|---|---|---|"]
    for r in result["groups"]:
        lines.append(f"| {r['attribute']} | {r['value']} | {r['adapter']:.3f} | {r['base']:.3f} |")
    return "\n".join(lines)


def write_output(result: Mapping, out_dir: str, columns: int = 8) -> None:
    """``style_control.json`` (the figures) and ``grid_<attribute>.png``: per value one row of
    adapter samples and one of base samples (the first ``columns`` scenes)."""
    from PIL import Image
    from seedream_jax.eval.grid import image_grid
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "style_control.json"), "w", encoding="utf-8") as f:
        json.dump({k: result[k] for k in ("groups", "attributes", "config") if k in result}, f, indent=2)
    for a in ATTRIBUTES:
        pics, labels = [], []
        for (attribute, value), (adapter_images, base_images) in result["images"].items():
            if attribute != a:
                continue
            for name, imgs in (("adapter", adapter_images), ("base", base_images)):
                row = list(imgs[:columns])
                pics += row
                labels += [f"{name}: {value}"] * len(row)
        if pics:
            Image.fromarray(image_grid(pics, labels, columns=min(columns, len(pics)), scale=2)).save(
                os.path.join(out_dir, f"grid_{a}.png"))


def vae_roundtrip(vae_dir: str, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 [N, H, W, 3] encoded by the VAE of stage ``vae_dir`` and decoded from the posterior
    mean (EMA weights when it keeps them): what any DiT decoding with that VAE can at best show."""
    from seedream_jax.checkpoint.stage_dir import open_stage
    from seedream_jax.stages import common
    from seedream_jax.stages.eval import roundtrip_function
    stage = open_stage(vae_dir)
    params = stage.params("ema" if stage.has_ema() else "raw")["vae"]
    roundtrip = roundtrip_function(stage.component("vae")[1])
    pad = -len(images) % batch_size
    padded = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
    out = [common.images_from_model(roundtrip(params, common.images_to_model(padded[i:i + batch_size])))
           for i in range(0, len(padded), batch_size)]
    return np.concatenate(out)[:len(images)]


def verify_scorer(n: int, size: int, seed: int = 0, margin: int = 2, vae_dir: Optional[str] = None) -> Dict[str, float]:
    """Accuracy per attribute of the scorer on the world's own renders: scenes 0..n-1 of the
    record world (``synthetic_records``, every scene styled, each attribute uniform) at ``size``;
    with ``vae_dir`` on their round trips through that VAE stage (the ceiling of its DiTs)."""
    from seedream_jax.data import synthetic_records
    cfg = synthetic_records.RecordWorldConfig(synthetic.SyntheticWorldConfig(num_images=n, image_size=size, seed=seed),
                                              style_probability=1.0)
    scenes = [synthetic_records.extended_scene(cfg, i)[0] for i in range(n)]
    images = np.stack([synthetic.render_scene(s, size) for s in scenes])
    if vae_dir:
        images = vae_roundtrip(vae_dir, images)
    return style_lib.style_accuracy(style_lib.score_style(images, scenes, margin=margin), [s.style for s in scenes])


def _base_dir(ct_dir: str) -> Optional[str]:
    """The stage the ct stage's MMDiT was initialised from (its ``stage.json`` init_from)."""
    with open(os.path.join(ct_dir, "stage.json"), encoding="utf-8") as f:
        meta = json.load(f)
    record = (meta.get("init_from") or {}).get("mmdit")
    return record.get("source") if record else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="the run holding the ct stage (not with --verify-scorer)")
    parser.add_argument("--verify-scorer", action="store_true",
                        help="only score the world's own renders (--n scenes at --size px) and exit")
    parser.add_argument("--ct", default="ct", help="the ct stage (a name in --workdir or a path)")
    parser.add_argument("--base", default=None, help="the base stage (default: where the ct stage's MMDiT came "
                                                     "from, else 'pretrain')")
    parser.add_argument("--n", type=int, default=16, help="scenes per (attribute, value)")
    parser.add_argument("--mode", choices=("full", "single"), default="full")
    parser.add_argument("--language", choices=("en", "zh"), default="en")
    parser.add_argument("--caption", choices=("long", "short"), default="long")
    parser.add_argument("--scene-seed", type=int, default=2024)
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (sample i: fold_in(seed, i))")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=28)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--margin", type=int, default=2, help="the scorer's tolerance in px (eval/style.py)")
    parser.add_argument("--raw", action="store_true", help="raw weights instead of EMA")
    parser.add_argument("--output", default=None)
    parser.add_argument("--min-accuracy", type=float, default=0.95,
                        help="with --verify-scorer and no --vae: exit 1 if an attribute reads below this")
    parser.add_argument("--vae", default=None, help="with --verify-scorer: score round trips through this VAE stage")
    args = parser.parse_args(argv)
    if args.verify_scorer:
        import time
        start = time.perf_counter()
        accuracy = verify_scorer(args.n, args.size, args.scene_seed, args.margin, args.vae)
        through = f", through the VAE round trip of {args.vae}" if args.vae else ""
        print(f"style scorer on ground truth: {args.n} styled world scenes at {args.size} px (seed "
              f"{args.scene_seed}, margin {args.margin}{through}), {time.perf_counter() - start:.1f}s")
        print("| " + " | ".join(accuracy) + " |\n|" + "---|" * len(accuracy))
        print("| " + " | ".join(f"{v:.3f}" for v in accuracy.values()) + " |")
        if args.vae:  # a VAE's ceiling is a measurement, not a check
            return 0
        low = {a: v for a, v in accuracy.items() if v < args.min_accuracy}
        if low:
            print(f"FAIL: the scorer reads {low} on ground truth, below --min-accuracy {args.min_accuracy}")
        return 1 if low else 0
    if not args.workdir:
        parser.error("--workdir is required (or --verify-scorer)")

    from seedream_jax.checkpoint.stage_dir import open_stage
    from seedream_jax.stages import common
    from seedream_jax.stages.sample import stage_pipeline
    ct_dir = common.resolve(args.workdir, args.ct)
    base_dir = common.resolve(args.workdir, args.base or _base_dir(ct_dir) or "pretrain")
    weights = "raw" if args.raw else "ema"
    ct_stage, base_stage = open_stage(ct_dir), open_stage(base_dir)
    ct_pipe, base_pipe = stage_pipeline(ct_stage), stage_pipeline(base_stage)
    ct_params, base_params = ct_stage.params(weights), base_stage.params(weights)
    kw = dict(height=args.size, width=args.size, num_steps=args.num_steps, guidance_scale=args.guidance_scale)

    def batched(call, prompts, rows=None):
        out = []
        for start in range(0, len(prompts), args.batch_size):
            sl = slice(start, start + args.batch_size)
            extra = {} if rows is None else {"style_tags": rows[sl]}
            out.append(call(prompts[sl], seed=args.seed + start, **kw, **extra))
        return np.concatenate(out)

    result = measure(lambda p, rows: batched(lambda q, **k: ct_pipe(ct_params, q, **k), p, rows),
                     lambda p: batched(lambda q, **k: base_pipe(base_params, q, **k), p),
                     world_scenes(args.n, args.scene_seed), style_groups(args.n, args.mode, args.scene_seed),
                     language=args.language, caption=args.caption, margin=args.margin)
    result["config"] = {**vars(args), "ct_dir": ct_dir, "ct_step": ct_stage.step, "base_dir": base_dir,
                        "base_step": base_stage.step}
    print(f"style control: ct {ct_dir} (step {ct_stage.step}) vs base {base_dir} (step {base_stage.step}); "
          f"{args.n} scenes per value, mode {args.mode}, {args.language} {args.caption} captions, "
          f"{args.num_steps} steps, guidance {args.guidance_scale}, {weights} weights")
    print(format_table(result))
    if args.output:
        write_output(result, args.output)
        print(f"wrote {args.output}/style_control.json and grid_<attribute>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
