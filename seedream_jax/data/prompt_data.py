"""Prompts for online RL: the world's captions or a ``prompts`` source, checked against the token
limit, made into arrays for a compiled step, optionally beside a stream of training images.

``prompt_rows`` opens the rows: data format 'synthetic' takes every caption of the world in
``data.dir`` (``records.jsonl``; each record's ``caption_languages`` x ``caption_types``, both
languages and every caption type by default; ``kind_repeats`` lists a scene's captions more than
once, or not at all, by its number of distinct object kinds: a prompt mix), format 'prompts'
reads ``data.prompts`` or the text/JSONL file ``data.path`` (``sources.prompt_batches``, its bad
lines already skipped and counted). Empty prompts and prompts longer than the LLM's
``max_tokens`` are skipped and counted too (``RowBatches.skipped``: {reason: count}, logged).

``PromptBatches`` is the training loop's ``DataSource``: each batch is ``make_arrays(prompts)``
(dict of NumPy arrays, batch first) plus, when given an image source, that source's next batch
under keys ``<image_prefix><key>``; its state is both positions, so resume is exact.
"""
import collections
import logging
import os
from typing import Callable, Dict, List, Sequence

import numpy as np

from seedream_jax.data import sources, synthetic

OVER_LIMIT = "over the token limit"


def object_kinds(spec: dict) -> int:
    """Number of distinct (colour, shape) object kinds of a world record's ``spec``: 1 for "a red
    circle" or "three red circles", 2 for "a red circle and a blue square" (the eval's binding and
    groups prompts)."""
    return len({(o["colour"], o["shape"]) for o in spec["objects"]})


def kind_repeat(kind_repeats: Sequence[int], kinds: int) -> int:
    """Times a scene with ``kinds`` object kinds is listed: ``kind_repeats[kinds - 1]``, the last
    entry for more kinds than listed, 1 for every scene when ``kind_repeats`` is empty."""
    if not kind_repeats:
        return 1
    return int(kind_repeats[min(kinds, len(kind_repeats)) - 1])


def world_caption_rows(data_cfg, workdir: str, kind_repeats: Sequence[int] = ()) -> List[dict]:
    """[{'prompt': caption}] of every record of the synthetic world in ``data.dir``, for each
    configured language and caption type the record has (records in order, languages outer), each
    record's captions ``kind_repeat(kind_repeats, object_kinds(spec))`` times in a row."""
    if any(int(r) < 0 for r in kind_repeats):
        raise ValueError(f"kind_repeats must be non-negative, got {tuple(kind_repeats)}")
    _, records = synthetic.load_dataset(os.path.join(workdir, data_cfg.dir))
    rows = []
    for r in records:
        captions = [{"prompt": r["captions"][lang][kind]} for lang in data_cfg.caption_languages
                    for kind in data_cfg.caption_types if r["captions"].get(lang, {}).get(kind)]
        rows += captions * kind_repeat(kind_repeats, object_kinds(r["spec"]))
    return rows


def prompt_rows(data_cfg, workdir: str, global_batch: int, tokenizer, max_tokens: int,
                kind_repeats: Sequence[int] = ()) -> sources.RowBatches:
    """``RowBatches`` of prompts (format 'synthetic' or 'prompts', see the module docstring) without
    the empty ones and those of more than ``max_tokens`` tokens (``tokenizer(texts, length) ->
    (ids, mask)``), each skipped row counted by reason. ``kind_repeats``: the world's prompt mix by
    object kinds (``world_caption_rows``); format 'synthetic' only."""
    fmt = str(data_cfg.format)
    if fmt == "synthetic":
        rows, skipped = world_caption_rows(data_cfg, workdir, kind_repeats), {}
        where = f"captions of {data_cfg.dir}"
    elif kind_repeats:
        raise ValueError(f"kind_repeats {tuple(kind_repeats)} needs the world's scene specs (prompts format "
                         f"'synthetic'); format {fmt!r} has none")
    else:  # any format yielding prompts ('prompts'); another fails naming those that would do
        opened = sources.open_source(data_cfg, workdir, global_batch, yields="prompts")
        rows, skipped, where = opened.rows, dict(opened.skipped), f"prompts ({data_cfg.path or 'data.prompts'})"
    skipped = collections.Counter(skipped)
    kept = []
    texts = [r["prompt"].strip() for r in rows]
    _, mask = tokenizer(texts, max_tokens + 1) if texts else (None, np.zeros((0, 1), bool))
    for row, text, n in zip(rows, texts, np.asarray(mask).sum(axis=1)):
        if not text:
            skipped["empty prompt"] += 1
        elif n > max_tokens:
            skipped[OVER_LIMIT] += 1
        else:
            kept.append({"prompt": text})
    if skipped:
        logging.warning("rlhf prompts: %s: %d usable, skipped %s", where, len(kept), dict(skipped))
    if not kept:
        raise ValueError(f"rlhf prompts: {where} has no usable prompt (skipped: {dict(skipped)})")
    return sources.RowBatches(kept, ("prompt",), global_batch, int(data_cfg.seed), dict(skipped))


class PromptBatches:
    """Batches ``make_arrays(prompts)`` of a ``RowBatches``, with the next batch of ``images``
    (a ``DataSource``, optional) under ``image_prefix``; a resumable ``DataSource``."""

    def __init__(self, rows: sources.RowBatches, make_arrays: Callable[[Sequence[str]], Dict[str, np.ndarray]],
                 images=None, image_prefix: str = "flow/"):
        self.rows, self.make_arrays, self.images, self.image_prefix = rows, make_arrays, images, image_prefix
        self.skipped = rows.skipped

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        batch = dict(self.make_arrays(next(self.rows)["prompt"]))
        if self.images is not None:
            batch.update({self.image_prefix + k: v for k, v in next(self.images).items()})
        return batch

    def get_state(self) -> dict:
        state = {"prompts": self.rows.get_state()}
        if self.images is not None:
            state["images"] = self.images.get_state()
        return state

    def set_state(self, state: dict) -> None:
        self.rows.set_state(state["prompts"])
        if self.images is not None:
            if "images" not in state:
                raise ValueError("data state has no image position: it was saved without the flow regulariser "
                                 "(flow_weight 0); resume with the same flow_weight")
            self.images.set_state(state["images"])

