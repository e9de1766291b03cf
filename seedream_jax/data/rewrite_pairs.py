"""(user prompt -> rewritten prompt) pairs for the prompt rewriter's SFT: from the world or a JSONL file.

The Seedream 2.0 report builds its prompt-engineering SFT data in two directions: rewrites of short
user prompts, and short prompts written from the long captions of training images. The synthetic
world supplies both exactly, in English and Chinese (prompt and rewrite in the same language):

  rewrite  start from a short prompt: a fresh scene (``synthetic.sample_scene``, with a style drawn
           with ``style_probability``, a data section's ``rewrite_style_probability``), as a user
           would ask for it; its rewrite is the scene's long caption (background, cells, the
           word's layout, the relation), or its style caption where it has a style.
  caption  start from a long training caption: scene ``k`` of the styled record world the image
           model trains on (``synthetic_records.extended_scene``); the prompt written from it is
           its short caption.

Both give a (short -> long or style) pair; ``direction`` records which way it was made. Pair ``i``
of a split is a pure function of (seed, split, i, world): direction ``DIRECTIONS[i % 2]``, language
``languages[(i // 2) % len(languages)]``, caption-direction scene ``k = i // 2``. ``train`` never
shows a held-out (colour, shape) pair (``data/heldout.py``); every ``heldout`` scene has one group of
a held-out pair (``world_pairs.with_heldout_group``), for evaluating the rewriter on prompts its
training never saw. The rewrite always keeps the prompt's content (``eval/prompt_content.preserves``).

A user's pairs: a UTF-8 JSONL file of rows {"prompt": str, "rewrite": str, "language": "en" | "zh"
(optional: else the prompt's ``synthetic.caption_language``, "zh" when it holds a CJK
character outside its quoted words, "en" otherwise)}; rows that are not
JSON objects, lack a field, or name another language are skipped and counted by reason
(``text_files.read_jsonl``). Each row is {"prompt", "rewrite", "language", "direction"} (``FIELDS``;
"user" for file rows).

A config asks for them with a ``text`` data section (``data.format = "text"``, ``data/sources.py``;
the ``pe_sft`` stage's ``data``): ``data.path = "world"`` for the world's train pairs
(``data.num_images`` of them, ``data.seed``, the scene mix ``data.world``, the languages
``data.caption_languages``), any other path for a JSONL file; a ``RowBatches`` of rows.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from seedream_jax.data import synthetic, synthetic_records, world_pairs
from seedream_jax.data.text_files import read_jsonl

WORLD = "world"                         # data.path naming the world's pairs instead of a file
SPLITS = ("train", "heldout")
DIRECTIONS = ("rewrite", "caption")
USER = "user"                           # the direction of a row read from a file
LANGUAGES = ("en", "zh")
FIELDS = ("prompt", "rewrite", "language", "direction")
STYLE_PROBABILITY = 0.5                 # as the styled record world (stages/data.py) draws styles
HELDOUT_EVERY = 4  # every 4th block of world rows of a text data section holds out a pair (``world_rows``)
BAD_LANGUAGE = "language is not 'en' or 'zh'"
_MAX_TRIES = 100
_STREAM = 11  # last seed word of this module's draws: a trailing nonzero word keeps them apart from
              # synthetic.scene_at's default_rng([seed, i]) (a seed sequence pads with zeros)


@dataclasses.dataclass(frozen=True)
class RewritePair:
    """Pair ``index`` of ``split``: ``prompt`` (a short caption) -> ``rewrite`` (the ``target`` caption
    type of the same scene, 'long' or 'style') in ``language``, made in ``direction``; ``spec`` is
    the scene (``Scene.to_dict()``)."""
    prompt: str
    rewrite: str
    language: str
    direction: str
    target: str
    split: str
    index: int
    spec: dict

    def row(self) -> Dict[str, str]:
        """The training row {"prompt", "rewrite", "language", "direction"}."""
        return {f: getattr(self, f) for f in FIELDS}


def _styled(scene: synthetic.Scene, rng: np.random.Generator, style_probability: float) -> synthetic.Scene:
    if rng.random() < style_probability:
        scene.style = synthetic.Style(**{name: list(table)[int(rng.integers(len(table)))]
                                         for name, table in synthetic.STYLES.items()})
    return scene


def _scene(seed: int, split: str, index: int, direction: str, world: synthetic.SyntheticWorldConfig,
           style_probability: float) -> synthetic.Scene:
    rng = np.random.default_rng([seed, SPLITS.index(split), index, _STREAM])
    records = synthetic_records.RecordWorldConfig(dataclasses.replace(world, seed=seed), style_probability)
    for _ in range(_MAX_TRIES):
        if direction == "caption":
            scene, _ = synthetic_records.extended_scene(records, index // 2)
        else:
            scene = _styled(synthetic.sample_scene(rng, world), rng, style_probability)
        if split == "train":
            return scene
        held = world_pairs.with_heldout_group(scene, rng)
        if held is not None:
            return held
    raise RuntimeError(f"no held-out scene found for {split} pair {index} in {_MAX_TRIES} tries")


def _check_languages(languages: Sequence[str]) -> None:
    if not languages or any(lang not in LANGUAGES for lang in languages):
        raise ValueError(f"languages must be a non-empty subset of {LANGUAGES}, got {tuple(languages)}")


def make_pair(seed: int, split: str, index: int, world: Optional[synthetic.SyntheticWorldConfig] = None,
              languages: Sequence[str] = LANGUAGES, style_probability: float = STYLE_PROBABILITY) -> RewritePair:
    """Pair ``index`` of ``split`` (see the module docstring); ``world``: the scene mix (default
    ``SyntheticWorldConfig()``; its seed is replaced by ``seed``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    _check_languages(languages)
    if index < 0:
        raise ValueError(f"pair index must be >= 0, got {index}")
    world = synthetic.SyntheticWorldConfig() if world is None else world
    direction = DIRECTIONS[index % len(DIRECTIONS)]
    language = languages[(index // len(DIRECTIONS)) % len(languages)]
    scene = _scene(seed, split, index, direction, world, style_probability)
    target = "long" if scene.style is None else "style"
    captions = synthetic.all_captions(scene)[language]
    return RewritePair(captions["short"], captions[target], language, direction, target, split, index,
                       scene.to_dict())


def make_pairs(seed: int, split: str, count: int, **options) -> List[RewritePair]:
    """Pairs 0 .. count - 1 of ``split`` (``make_pair`` options)."""
    return [make_pair(seed, split, i, **options) for i in range(count)]


def eval_prompts(seed: int, split: str, language: str, count: int) -> List[str]:
    """The short prompts of pairs 0 .. count - 1 of ``split`` in ``language`` (the same scenes in
    every language), for evaluating a rewriter."""
    return [make_pair(seed, split, i, languages=(language,)).prompt for i in range(count)]


def world_rows(data_cfg) -> List[Dict[str, str]]:
    """The ``FIELDS`` rows of ``data.num_images`` world pairs, with ``data.seed``, the scene mix
    ``data.world``, the languages ``data.caption_languages`` and a style on a share
    ``data.rewrite_style_probability`` of the scenes (their rewrite is the style caption): row i
    is pair i of the ``heldout`` split when its block (``heldout_row``: rows in blocks of one per
    direction and language) is the last of every ``HELDOUT_EVERY`` blocks, else pair i of
    ``train``, so held-out pairs come in every direction and language alike.

    The rewriter is a text model and must rewrite every prompt the world can state, including the
    (colour, shape) pairs the image data holds out: trained on ``train`` pairs alone it learns that
    those never occur and "corrects" them (a purple square becomes a purple circle). The held-out
    pairs stay out of every image and caption the image model trains on; a rewriter's eval prompts
    use another seed (``stages/pe_sft.py``), so they are scenes it never saw."""
    seed = int(data_cfg.seed)
    world = synthetic.SyntheticWorldConfig(seed=seed, **data_cfg.world.to_dict())
    languages = tuple(data_cfg.caption_languages)
    style_probability = float(data_cfg.rewrite_style_probability)
    return [make_pair(seed, "heldout" if heldout_row(i, len(languages)) else "train", i, world=world,
                      languages=languages, style_probability=style_probability).row()
            for i in range(int(data_cfg.num_images))]


def heldout_row(index: int, num_languages: int) -> bool:
    """Whether world row ``index`` is a held-out pair: rows come in blocks of len(DIRECTIONS) x
    ``num_languages`` (one of each direction and language, ``make_pair``'s order), and the last of
    every ``HELDOUT_EVERY`` blocks is held out. (Holding out every 4th row instead made every
    held-out row a Chinese caption-direction row, and English held-out prompts were "corrected".)"""
    block = index // (len(DIRECTIONS) * num_languages)
    return block % HELDOUT_EVERY == HELDOUT_EVERY - 1


def _check_language(row: dict) -> Tuple[Optional[dict], Optional[str]]:
    language = row.get("language")
    if language is None:
        language = synthetic.caption_language(row["prompt"])
    elif language not in LANGUAGES:
        return None, BAD_LANGUAGE
    return {"prompt": row["prompt"], "rewrite": row["rewrite"], "language": language, "direction": USER}, None


def read_pairs(path: str) -> Tuple[List[Dict[str, str]], Dict[str, int]]:
    """(``FIELDS`` rows, {reason: count} of the skipped lines) of a JSONL file of user pairs."""
    return read_jsonl(path, ("prompt", "rewrite"), _check_language, optional=("language",))
