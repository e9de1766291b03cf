"""Style tags: the aesthetic adapter's conditioning vocabulary (continued training, SFT, sampling).

A tag row is int32 [A], one entry per attribute of ``ATTRIBUTES``: 0 = the attribute is absent
(not given, or dropped for guidance), k >= 1 = value ``VALUES[attribute][k - 1]``. The attributes
are the synthetic world's style attributes (``synthetic.STYLES``, values in their table order:
palette, lighting, texture, composition), plus ``source`` with the one value ``generated``: the
SFT negative tag that marks images the model generated itself (``stages/sft.py``). The MMDiT's
adapter is built for ``TAG_SIZES`` (``MMDiTConfig.style_tag_sizes``).

    from_spec(record["spec"])                  # a record's style -> row (zeros without a style)
    from_names({"palette": "pastel"})          # a config's tags -> row (other attributes absent)
    to_names(row)                              # the reverse: {"palette": "pastel"}
    with_negative(rows)                        # the same rows with source=generated
    drop(rng, rows, rate)                      # each style attribute of each row dropped with ``rate``
"""
from typing import Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.data import synthetic

SOURCE = "source"
GENERATED = "generated"
VALUES: Dict[str, tuple] = {**{name: tuple(table) for name, table in synthetic.STYLES.items()},
                            SOURCE: (GENERATED,)}
ATTRIBUTES = tuple(VALUES)
STYLE_ATTRIBUTES = tuple(synthetic.STYLES)     # the droppable ones (``source`` is never dropped)
TAG_SIZES = tuple(len(v) for v in VALUES.values())  # (3, 4, 3, 3, 1)
NUM_ATTRIBUTES = len(ATTRIBUTES)
SOURCE_INDEX = ATTRIBUTES.index(SOURCE)


def empty(batch: Optional[int] = None) -> np.ndarray:
    """All attributes absent: int32 [A] (or [batch, A])."""
    return np.zeros((NUM_ATTRIBUTES,) if batch is None else (batch, NUM_ATTRIBUTES), np.int32)


def from_names(names: Optional[Mapping[str, str]]) -> np.ndarray:
    """int32 [A] of ``{attribute: value name}`` (any subset; others absent). Unknown attributes or
    values raise ValueError naming the known ones."""
    row = empty()
    for attribute, value in dict(names or {}).items():
        if attribute not in VALUES:
            raise ValueError(f"style tags: unknown attribute {attribute!r}; expected one of {list(ATTRIBUTES)}")
        if value in ("", None):
            continue
        if value not in VALUES[attribute]:
            raise ValueError(f"style tags: unknown {attribute} {value!r}; expected one of {list(VALUES[attribute])}")
        row[ATTRIBUTES.index(attribute)] = VALUES[attribute].index(value) + 1
    return row


def to_names(row) -> Dict[str, str]:
    """{attribute: value name} of the present attributes of one row [A]."""
    row = np.asarray(row)
    if row.shape != (NUM_ATTRIBUTES,):
        raise ValueError(f"style tags: expected one row of {NUM_ATTRIBUTES} attributes, got shape {row.shape}")
    out = {}
    for attribute, k in zip(ATTRIBUTES, row.tolist()):
        if not 0 <= k <= len(VALUES[attribute]):
            raise ValueError(f"style tags: {attribute} index {k} outside 0..{len(VALUES[attribute])}")
        if k:
            out[attribute] = VALUES[attribute][k - 1]
    return out


def from_spec(spec: Optional[Mapping]) -> np.ndarray:
    """int32 [A] of a scene spec's ``style`` (``synthetic.Scene.to_dict``); zeros where the record
    has no spec or no style (real data, unstyled scenes)."""
    style = (spec or {}).get("style") if isinstance(spec, Mapping) else None
    if not style:
        return empty()
    return from_names({k: v for k, v in style.items() if k in STYLE_ATTRIBUTES})


def merge(rows, override) -> np.ndarray:
    """``rows`` [..., A] with every present attribute of ``override`` [A] set (config tags over data tags)."""
    rows, override = np.asarray(rows, np.int32), np.asarray(override, np.int32)
    return np.where(override > 0, override, rows).astype(np.int32)


def with_negative(rows):
    """``rows`` [..., A] with ``source = generated`` (the negative tags of negative-tag guidance)."""
    xp = jnp if isinstance(rows, jax.Array) else np
    rows = xp.asarray(rows, xp.int32)
    return rows.at[..., SOURCE_INDEX].set(1) if xp is jnp else _set_np(rows, SOURCE_INDEX, 1)


def _set_np(rows: np.ndarray, index: int, value: int) -> np.ndarray:
    out = rows.copy()
    out[..., index] = value
    return out


def drop_mask(rng, shape, rate: float) -> jax.Array:
    """bool [B, A]: True where an attribute is dropped; each style attribute independently with
    probability ``rate``, ``source`` never."""
    droppable = jnp.asarray([a in STYLE_ATTRIBUTES for a in ATTRIBUTES])
    return jax.random.bernoulli(rng, float(rate), shape) & droppable


def drop(rng, rows: jax.Array, rate: float) -> jax.Array:
    """``rows`` [B, A] with each style attribute set absent (0) with probability ``rate`` (jittable),
    so the adapter also learns the tag-free velocity that guidance contrasts with."""
    if float(rate) <= 0:
        return rows
    return jnp.where(drop_mask(rng, rows.shape, rate), 0, rows).astype(jnp.int32)


def zero_dropped_captions(rows: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    """``rows`` [B, A] with the style attributes of rows whose caption was dropped for CFG ("")
    set absent: the unconditional velocity is the empty prompt without style tags."""
    rows = np.array(rows, np.int32)
    dropped = np.asarray([str(c) == "" for c in captions])
    style = np.asarray([a in STYLE_ATTRIBUTES for a in ATTRIBUTES])
    rows[dropped[:, None] & style[None, :]] = 0
    return rows


def batch_rows(tags, batch: int) -> np.ndarray:
    """int32 [batch, A] of one row [A] (broadcast), rows [batch, A], or a {attribute: name} dict."""
    if isinstance(tags, Mapping):
        tags = from_names(tags)
    tags = np.asarray(tags, np.int32)
    if tags.shape == (NUM_ATTRIBUTES,):
        return np.broadcast_to(tags, (batch, NUM_ATTRIBUTES)).copy()
    if tags.shape != (batch, NUM_ATTRIBUTES):
        raise ValueError(f"style tags: expected [{NUM_ATTRIBUTES}] or [{batch}, {NUM_ATTRIBUTES}], got {tags.shape}")
    return tags


def check_sizes(sizes: Sequence[int]) -> None:
    """Fail unless a model's ``style_tag_sizes`` are this vocabulary's (``TAG_SIZES``)."""
    if tuple(sizes) != TAG_SIZES:
        raise ValueError(f"the model's style_tag_sizes {tuple(sizes)} are not this vocabulary's {TAG_SIZES} "
                         f"(attributes {list(ATTRIBUTES)})")
