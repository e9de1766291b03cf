"""Split a parameter tree into trainable and frozen parts by path prefix, and merge back.

Frozen parts get no optimizer state (a frozen 7B LLM costs its weights, not 3x them).
Paths are '/'-joined prefixes such as ``'vae'`` or ``'conditioner/text_encoder/llm'``.
"""
from typing import Any, Sequence, Tuple

import flax


def _is_under(path: Tuple[str, ...], prefixes: Sequence[Tuple[str, ...]]) -> bool:
    return any(path[:len(p)] == p for p in prefixes)


def split_params(tree: Any, frozen_prefixes: Sequence[str]) -> Tuple[dict, dict]:
    """Return (trainable, frozen) nested dicts; a prefix that matches nothing is an error."""
    prefixes = [tuple(p.strip("/").split("/")) for p in frozen_prefixes if p]
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    for p in prefixes:
        if not any(path[:len(p)] == p for path in flat):
            top = sorted({path[0] for path in flat})
            raise KeyError(f"frozen path {'/'.join(p)!r} matches no parameter (top-level components: {top})")
    frozen = {k: v for k, v in flat.items() if _is_under(k, prefixes)}
    trainable = {k: v for k, v in flat.items() if not _is_under(k, prefixes)}
    unflat = flax.traverse_util.unflatten_dict
    return (unflat(trainable) if trainable else {}), (unflat(frozen) if frozen else {})


def merge_params(trainable: Any, frozen: Any) -> dict:
    """Inverse of ``split_params``."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(trainable)) if trainable else {}
    flat.update(flax.traverse_util.flatten_dict(flax.core.unfreeze(frozen)) if frozen else {})
    return flax.traverse_util.unflatten_dict(flat)
