"""The evaluation prompt suite: scene specs of the synthetic world with matched zh/en prompts.

Every item is a ``synthetic.Scene`` (the ground truth) whose own caption, in English and in
Chinese, is the prompt, so prompts follow the training captions' templates and every image can
be checked against its spec. Items by kind (``build_suite``, fixed for a seed):

  single    one object, short caption ("a large red circle"): scored for colour and shape
  count     1-4 identical objects, short caption ("three small red circles")
  position  one object, long caption (background, object, grid cell)
  relation  two objects of different colours, long caption ending "A is to the left of B." or
            "A is above B." (objects in one column)
  binding   two objects of different colours and shapes, short caption ("a large red circle and
            a small blue square"): scored as right only when each object's colour and shape are
  groups    two counted groups of different colours and shapes, short caption ("two small red
            circles and a large blue square"): each group's count and shape must be right
  text      one object and a horizontal word, short caption ('... and the text "你好"'): every
            single Chinese character, every 2-4 character Chinese word and every English word
            of the world

Object kinds come in two splits: ``seen`` uses (colour, shape) pairs the training data shows,
``heldout`` objects of the pairs it never shows (``data/heldout.py``). Text items are all seen.
"""
import dataclasses
from typing import Dict, List, Tuple

import numpy as np

from seedream_jax.data import fonts, heldout, synthetic

OBJECT_CATEGORIES = ("colour", "shape", "count", "position", "relation", "binding", "groups")
TEXT_CATEGORIES = ("text_zh_char", "text_zh_word", "text_en_word")
CATEGORIES = OBJECT_CATEGORIES + TEXT_CATEGORIES
SPLITS = ("seen", "heldout")
LANGUAGES = ("en", "zh")
# Items per (kind, split).
SIZES = {("single", "seen"): 16, ("single", "heldout"): 8, ("count", "seen"): 12, ("count", "heldout"): 8,
         ("position", "seen"): 9, ("position", "heldout"): 8, ("relation", "seen"): 8, ("relation", "heldout"): 8,
         ("binding", "seen"): 8, ("binding", "heldout"): 8, ("groups", "seen"): 8, ("groups", "heldout"): 8}
_OBJECT_KINDS = ("single", "count", "position", "relation", "binding", "groups")
_KINDS = _OBJECT_KINDS + ("text",)
_TEXT_RNG_INDEX = 4  # the text items' rng stream (fixed when object kinds were added after 'relation')
_CAPTION = {"single": "short", "count": "short", "position": "long", "relation": "long", "binding": "short",
            "groups": "short", "text": "short"}


@dataclasses.dataclass
class SuiteItem:
    """One scene of the suite: ``id`` '<kind>/<split>/<k>', ``kind`` in _KINDS, ``split`` in SPLITS,
    ``categories`` it is scored in, ``scene`` the ground truth, ``caption`` 'short'/'long'."""
    id: str
    kind: str
    split: str
    categories: Tuple[str, ...]
    scene: synthetic.Scene
    caption: str

    def prompt(self, language: str) -> str:
        """The scene's ``caption``-type caption in ``language`` ('en' or 'zh')."""
        return synthetic.captions(self.scene)[language][self.caption]

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "split": self.split, "categories": list(self.categories),
                "caption": self.caption, "prompts": {lang: self.prompt(lang) for lang in LANGUAGES},
                "spec": self.scene.to_dict()}


def _pairs(split: str) -> List[Tuple[str, str]]:
    """(colour, shape) pairs of a split, in table order."""
    if split == "heldout":
        return list(heldout.HELDOUT_COLOUR_SHAPES)
    return [(c, s) for c in synthetic.COLOURS for s in synthetic.SHAPES if not heldout.is_heldout(c, s)]


def _background(rng: np.random.Generator, colours) -> str:
    """A random background on which every colour of ``colours`` is visible."""
    options = [b for b in synthetic.BACKGROUNDS if all(c in synthetic.visible_colours(b) for c in colours)]
    return options[int(rng.integers(len(options)))]


def _cells(rng: np.random.Generator, n: int, options=None) -> List[str]:
    """``n`` distinct grid positions from ``options`` (default all), in grid order."""
    options = list(synthetic.POSITIONS) if options is None else list(options)
    return [options[i] for i in sorted(rng.choice(len(options), size=n, replace=False))]


def _size(rng: np.random.Generator) -> str:
    return list(synthetic.SIZES)[int(rng.integers(2))]


def _single(rng, split: str, k: int) -> synthetic.Scene:
    """k-th single object: seen items cycle colours (each twice in 16) and shapes; held-out items
    cycle the held-out pairs, large then small."""
    if split == "heldout":
        (colour, shape), size = heldout.HELDOUT_COLOUR_SHAPES[k % 4], list(synthetic.SIZES)[1 - (k // 4) % 2]
    else:
        colour = list(synthetic.COLOURS)[k % len(synthetic.COLOURS)]
        shapes = [s for s in synthetic.SHAPES if not heldout.is_heldout(colour, s)]
        shape, size = shapes[(k + k // len(synthetic.COLOURS)) % len(shapes)], _size(rng)
    return synthetic.Scene(_background(rng, [colour]), [synthetic.ShapeObject(shape, colour, size, _cells(rng, 1)[0])])


def _count(rng, split: str, k: int) -> synthetic.Scene:
    """k-th counting scene: n = 1 + k % 4 identical objects."""
    pairs = _pairs(split)
    colour, shape = pairs[int(rng.integers(len(pairs)))]
    n, size = 1 + k % synthetic.MAX_OBJECTS, _size(rng)
    return synthetic.Scene(_background(rng, [colour]),
                           [synthetic.ShapeObject(shape, colour, size, p) for p in _cells(rng, n)])


def _position(rng, split: str, k: int) -> synthetic.Scene:
    """k-th placed object: seen items visit the nine cells in order, held-out ones random cells."""
    pairs = _pairs(split)
    colour, shape = pairs[int(rng.integers(len(pairs)))] if split == "seen" else pairs[k % len(pairs)]
    cell = list(synthetic.POSITIONS)[k % 9] if split == "seen" else _cells(rng, 1)[0]
    return synthetic.Scene(_background(rng, [colour]), [synthetic.ShapeObject(shape, colour, _size(rng), cell)])


def _relation(rng, split: str, k: int) -> synthetic.Scene:
    """k-th pair of objects of different colours: even k in different columns ('left of'),
    odd k in one column ('above'). A held-out item's first object is of a held-out pair."""
    seen = _pairs("seen")
    while True:
        first = heldout.HELDOUT_COLOUR_SHAPES[k % 4] if split == "heldout" else seen[int(rng.integers(len(seen)))]
        second = seen[int(rng.integers(len(seen)))]
        if first[0] != second[0]:
            break
    if k % 2 == 0:
        cols = sorted(rng.choice(3, size=2, replace=False))
        cells = [int(rng.integers(3)) * 3 + c for c in cols]
    else:
        col, rows = int(rng.integers(3)), sorted(rng.choice(3, size=2, replace=False))
        cells = [r * 3 + col for r in rows]
    if rng.random() < 0.5:  # which object the caption names first
        cells = cells[::-1]
    names = [list(synthetic.POSITIONS)[c] for c in cells]
    objects = [synthetic.ShapeObject(s, c, _size(rng), p) for (c, s), p in zip((first, second), names)]
    return synthetic.Scene(_background(rng, [first[0], second[0]]), objects)


def _two_kinds(rng, split: str):
    """Two (colour, shape) pairs differing in both colour and shape; a held-out item's first
    pair is held out."""
    seen = _pairs("seen")
    while True:
        first = _pairs("heldout")[int(rng.integers(4))] if split == "heldout" else seen[int(rng.integers(len(seen)))]
        second = seen[int(rng.integers(len(seen)))]
        if first[0] != second[0] and first[1] != second[1]:
            return first, second


def _binding(rng, split: str, k: int) -> synthetic.Scene:
    """k-th pair of objects that differ in colour and shape, in two random cells."""
    (c1, s1), (c2, s2) = _two_kinds(rng, split)
    cells = _cells(rng, 2)
    if rng.random() < 0.5:  # the caption names objects in cell order: vary which kind comes first
        cells = cells[::-1]
    objects = [synthetic.ShapeObject(s1, c1, _size(rng), cells[0]), synthetic.ShapeObject(s2, c2, _size(rng), cells[1])]
    return synthetic.Scene(_background(rng, [c1, c2]), objects)


_GROUP_COUNTS = ((2, 1), (1, 2), (2, 2), (3, 1), (1, 3))


def _groups(rng, split: str, k: int) -> synthetic.Scene:
    """k-th scene of two counted groups (n1, n2 from _GROUP_COUNTS, k-th in turn), each group one
    (colour, shape, size), the groups' cells interleaved at random."""
    (c1, s1), (c2, s2) = _two_kinds(rng, split)
    n1, n2 = _GROUP_COUNTS[k % len(_GROUP_COUNTS)]
    cells = _cells(rng, n1 + n2)
    order = rng.permutation(n1 + n2)
    size1, size2 = _size(rng), _size(rng)
    objects = [synthetic.ShapeObject(s1, c1, size1, cells[i]) if j < n1 else
               synthetic.ShapeObject(s2, c2, size2, cells[i]) for j, i in enumerate(order)]
    objects.sort(key=lambda o: list(synthetic.POSITIONS).index(o.position))
    return synthetic.Scene(_background(rng, [c1, c2]), objects)


def _text(rng, word: str, language: str) -> synthetic.Scene:
    """A horizontal ``word`` in a random band and one object in the row farthest from it (so
    that the OCR never reads the two as one line)."""
    band = list(synthetic.TEXT_BANDS["horizontal"])[int(rng.integers(3))]
    row = {"top": 2, "bottom": 0}.get(band, int(rng.choice([0, 2])))
    seen = _pairs("seen")
    colour, shape = seen[int(rng.integers(len(seen)))]
    background = _background(rng, [colour])
    others = [c for c in synthetic.visible_colours(background) if c != colour]
    face = fonts.fonts_for(language)[int(rng.integers(len(fonts.fonts_for(language))))]
    text = synthetic.TextItem(word, language, others[int(rng.integers(len(others)))], _size(rng),
                              "horizontal", band, face)
    cell = list(synthetic.POSITIONS)[row * 3 + int(rng.integers(3))]
    return synthetic.Scene(background, [synthetic.ShapeObject(shape, colour, _size(rng), cell)], text)


def text_category(word: str) -> str:
    """'text_zh_char', 'text_zh_word' or 'text_en_word' for a word of ``synthetic.WORDS``."""
    if word in synthetic.WORDS["zh"]:
        return "text_zh_char" if len(word) == 1 else "text_zh_word"
    if word in synthetic.WORDS["en"]:
        return "text_en_word"
    raise ValueError(f"{word!r} is not a word of the synthetic world")


def build_suite(seed: int = 0) -> List[SuiteItem]:
    """The whole suite (153 items, 306 prompts with seed 0's sizes), deterministic in ``seed``."""
    builders = {"single": _single, "count": _count, "position": _position, "relation": _relation,
                "binding": _binding, "groups": _groups}
    categories = {"single": ("colour", "shape"), "count": ("count",), "position": ("position",),
                  "relation": ("relation",), "binding": ("binding",), "groups": ("groups",)}
    items = []
    for kind_index, kind in enumerate(_OBJECT_KINDS):
        for split in SPLITS:
            rng = np.random.default_rng([seed, kind_index, SPLITS.index(split)])
            for k in range(SIZES[(kind, split)]):
                scene = builders[kind](rng, split, k)
                scene.validate()
                items.append(SuiteItem(f"{kind}/{split}/{k:02d}", kind, split, categories[kind], scene, _CAPTION[kind]))
    rng = np.random.default_rng([seed, _TEXT_RNG_INDEX])
    words = [(w, "zh") for w in synthetic.WORDS["zh"]] + [(w, "en") for w in synthetic.WORDS["en"]]
    words.sort(key=lambda wl: CATEGORIES.index(text_category(wl[0])))
    for k, (word, language) in enumerate(words):
        scene = _text(rng, word, language)
        scene.validate()
        items.append(SuiteItem(f"text/seen/{k:02d}", "text", "seen", (text_category(word),), scene, "short"))
    return items


def suite_summary(items: List[SuiteItem]) -> Dict[str, Dict[str, int]]:
    """Item counts {category: {split: n}} (each item is prompted once per language)."""
    out: Dict[str, Dict[str, int]] = {}
    for item in items:
        for cat in item.categories:
            out.setdefault(cat, {}).setdefault(item.split, 0)
            out[cat][item.split] += 1
    return out
