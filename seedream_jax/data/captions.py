"""Caption sampling: which of a record's captions a training example uses.

Every record holds captions keyed by language and type (``records.py``: ``{lang: {type: text}}``).
Per example, a language and a caption type are drawn with the ratios of the ``data`` config
(``caption_languages``/``language_probs``, ``caption_types``/``caption_type_probs``), and the
caption is replaced by the empty prompt with probability ``cfg_drop_prob`` (classifier-free
guidance). Where a record lacks the drawn pair (real data often has no ``long`` or no ``zh``
caption) the fallback is deterministic: the drawn type in another configured language, then
another configured type of the drawn language, then any configured pair, in config order; a
record with none of the configured pairs raises ``KeyError`` naming it.

This is the one implementation: the in-memory synthetic source (``data/sources.py``) and the
Grain pipeline (``data/pipeline.py``) both call ``choose_captions``.
"""
from typing import List, Mapping, Sequence, Tuple

import numpy as np

Captions = Mapping[str, Mapping[str, str]]


def caption_pairs(data_cfg) -> List[Tuple[str, str]]:
    """Every configured (language, type) pair, languages outer, in config order."""
    return [(lang, kind) for lang in data_cfg.caption_languages for kind in data_cfg.caption_types]


def _resolve(captions: Captions, lang: str, kind: str, data_cfg, where: str) -> Tuple[str, str]:
    order = [(lang, kind)] + [(other, kind) for other in data_cfg.caption_languages if other != lang]
    order += [(lang, k) for k in data_cfg.caption_types if k != kind] + caption_pairs(data_cfg)
    for pair in order:
        if captions.get(pair[0], {}).get(pair[1]):
            return pair
    raise KeyError(f"{where}: no caption of languages {tuple(data_cfg.caption_languages)} and types "
                   f"{tuple(data_cfg.caption_types)}; it has {({k: sorted(v) for k, v in captions.items()})}")


def choose_caption_pairs(captions: Sequence[Captions], rng: np.random.Generator, data_cfg,
                         keys: Sequence[str] = ()) -> List[Tuple[str, str] | None]:
    """Per record, the (language, type) used, or None where the caption is dropped for CFG.

    ``captions``: one ``{lang: {type: text}}`` per record; ``rng`` supplies three vectorised
    draws (languages, types, drops) of ``len(captions)`` each; ``keys`` name records in errors.
    """
    n = len(captions)
    langs = rng.choice(list(data_cfg.caption_languages), size=n, p=list(data_cfg.language_probs))
    kinds = rng.choice(list(data_cfg.caption_types), size=n, p=list(data_cfg.caption_type_probs))
    drop = rng.random(n) < float(data_cfg.cfg_drop_prob)
    out = []
    for i, (caps, lang, kind, d) in enumerate(zip(captions, langs, kinds, drop)):
        where = f"record {keys[i]!r}" if i < len(keys) else f"record {i} of the batch"
        out.append(None if d else _resolve(caps, str(lang), str(kind), data_cfg, where))
    return out


def choose_captions(captions: Sequence[Captions], rng: np.random.Generator, data_cfg,
                    keys: Sequence[str] = ()) -> List[str]:
    """One caption text per record ("" where dropped for CFG); see ``choose_caption_pairs``."""
    pairs = choose_caption_pairs(captions, rng, data_cfg, keys)
    return ["" if p is None else caps[p[0]][p[1]] for caps, p in zip(captions, pairs)]
