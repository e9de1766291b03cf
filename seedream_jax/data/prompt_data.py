"""Prompts for online RL: the world's captions or a ``prompts`` source, checked against the token
limit, made into arrays for a compiled step, optionally beside a stream of training images.

``prompt_rows`` opens the rows: data format 'synthetic' takes every caption of the world in
``data.dir`` (``records.jsonl``; each record's ``caption_languages`` x ``caption_types``, both
languages and every caption type by default), format 'prompts' reads ``data.prompts`` or the
text/JSONL file ``data.path`` (``sources.prompt_batches``, its bad lines already skipped and
counted). Empty prompts and prompts longer than the LLM's ``max_tokens`` are skipped and counted
too (``RowBatches.skipped``: {reason: count}, logged).

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


def world_caption_rows(data_cfg, workdir: str) -> List[dict]:
    """[{'prompt': caption}] of every record of the synthetic world in ``data.dir``, for each
    configured language and caption type the record has (records in order, languages outer)."""
    _, records = synthetic.load_dataset(os.path.join(workdir, data_cfg.dir))
    return [{"prompt": r["captions"][lang][kind]} for r in records for lang in data_cfg.caption_languages
            for kind in data_cfg.caption_types if r["captions"].get(lang, {}).get(kind)]


def prompt_rows(data_cfg, workdir: str, global_batch: int, tokenizer, max_tokens: int) -> sources.RowBatches:
    """``RowBatches`` of prompts (format 'synthetic' or 'prompts', see the module docstring) without
    the empty ones and those of more than ``max_tokens`` tokens (``tokenizer(texts, length) ->
    (ids, mask)``), each skipped row counted by reason."""
    fmt = str(data_cfg.format)
    if fmt == "synthetic":
        rows, skipped, where = world_caption_rows(data_cfg, workdir), {}, f"captions of {data_cfg.dir}"
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

