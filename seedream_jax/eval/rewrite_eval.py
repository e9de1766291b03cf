"""The eval with the prompt rewriter: the same suite drawn from raw prompts and from their rewrites.

``RecordingGenerator`` wraps a benchmark ``generate(prompts)``: it keeps each call's prompts and
images, and with a rewriter draws every image from the rewrite of its prompt instead, keeping the
rewrites and whether each keeps its prompt's content (``eval/prompt_content.py``). The two passes
are scored against the suite's scenes, as every eval is (what the user asked for); besides, the
closed-world objective check (``rewards/objective.passes``, given by the eval stage) says per image
whether it shows exactly what the prompt it was drawn from says: for a rewrite that states a layout, its cells and
relation too. ``comparison_markdown`` puts the two passes side by side.
"""
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from seedream_jax.eval import prompt_content
from seedream_jax.eval import report as report_lib
from seedream_jax.data import synthetic

REWRITE_BATCH = 64  # prompts per rewriter call


class RecordingGenerator:
    """``generate(prompts)`` that records (prompts drawn, images) per call; with ``rewriter`` each
    image is drawn from the rewrite of its prompt (``rewrites``, ``kept``: per call)."""

    def __init__(self, generate, rewriter=None):
        self.generate, self.rewriter = generate, rewriter
        self.prompts: List[List[str]] = []
        self.drawn: List[List[str]] = []
        self.kept: List[List[bool]] = []
        self.images: List[np.ndarray] = []

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        drawn = prompts
        if self.rewriter is not None:
            drawn = [r for start in range(0, len(prompts), REWRITE_BATCH)
                     for r in self.rewriter(prompts[start:start + REWRITE_BATCH])]
            self.kept.append([prompt_content.preserves(p, r, synthetic.caption_language(p))[0]
                              for p, r in zip(prompts, drawn)])
        images = self.generate(drawn)
        self.prompts.append(prompts)
        self.drawn.append(drawn)
        self.images.append(np.asarray(images))
        return images

    def follows_own_prompt(self, passes: Callable[[np.ndarray, str], bool]) -> float:
        """Share of images that ``passes(image, prompt)`` (e.g. ``rewards.objective.passes``) accepts
        against the prompt each was drawn from."""
        scores = [passes(image, prompt) for images, drawn in zip(self.images, self.drawn)
                  for image, prompt in zip(images, drawn)]
        return float(np.mean(scores)) if scores else float("nan")

    def content_kept(self) -> Optional[float]:
        """Share of rewrites keeping their prompt's content (None without a rewriter)."""
        return float(np.mean(np.concatenate(self.kept))) if self.kept else None

    def rows(self) -> List[Dict[str, str]]:
        """{'prompt', 'drawn'} per image, calls in order."""
        return [{"prompt": p, "drawn": d} for ps, ds in zip(self.prompts, self.drawn) for p, d in zip(ps, ds)]


def comparison(raw_report: dict, rewritten_report: dict, raw: RecordingGenerator,
               rewritten: RecordingGenerator, passes: Callable[[np.ndarray, str], bool]) -> dict:
    """{'categories': {category: (raw, rewritten)}, 'follows_own_prompt': (raw, rewritten) shares
    that ``passes``, 'content_kept': share of rewrites keeping their prompt's content}."""
    a, b = (report_lib.category_accuracy(r["metrics"]) for r in (raw_report, rewritten_report))
    return {"categories": {c: (a[c], b.get(c)) for c in a},
            "follows_own_prompt": (raw.follows_own_prompt(passes), rewritten.follows_own_prompt(passes)),
            "content_kept": rewritten.content_kept()}


def _cell(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


def comparison_markdown(title: str, result: dict, examples: Sequence[Dict[str, str]] = ()) -> str:
    """The side-by-side table (category accuracy over languages and splits, raw vs rewritten)."""
    lines = [f"# {title}", "", "| category | raw prompts | rewritten | change |", "|---|---|---|---|"]
    for category, (raw, new) in result["categories"].items():
        delta = "–" if raw is None or new is None else f"{new - raw:+.3f}"
        lines.append(f"| {category} | {_cell(raw)} | {_cell(new)} | {delta} |")
    raw, new = result["follows_own_prompt"]
    lines += [f"| image shows exactly what its own prompt says (objective check) | {_cell(raw)} | {_cell(new)} | "
              f"{new - raw:+.3f} |", "", f"rewrites keeping their prompt's content: {_cell(result['content_kept'])}"]
    if examples:
        lines += ["", "## Rewrites", ""] + [f"- `{e['prompt']}` -> `{e['drawn']}`" for e in examples]
    return "\n".join(lines) + "\n"
