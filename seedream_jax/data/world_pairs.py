"""Preference pairs from the synthetic world: a scene against the same scene with one attribute changed.

For a scene (the truth) ``perturb`` builds a second spec that differs in exactly one attribute:

  colour    one group of identical objects gets another colour (visible on the background)
  shape     one group of identical objects gets another shape
  count     one group gains an identical object in a free cell, or (n >= 2) loses one
  position  one object moves to a free cell; a two-object relation ("A is left of B") is kept
  relation  the two objects of a two-object scene swap cells, so the relation reverses
  text      the quoted word becomes another word of its language (vertical words stay multi-character)

A group is the set of objects with the same (shape, colour, size), as the captions count them; a
new colour or shape never merges a group with another one (that would change the counts too).
Objects are listed in grid order in both specs. Each pair gives two preferences in either
language: the true caption over the perturbed spec's caption for the true image (a caption pair),
and the true image over the perturbed spec's rendering for the true caption (an image pair).
Position and relation pairs use the long caption (the short one names no cell); the other kinds
use the short one, or in training either.

Splits never share a scene: ``train`` scenes are drawn by ``synthetic.sample_scene``, which never
draws a held-out (colour, shape) pair (``data/heldout.py``), and neither does a train perturbation;
every ``heldout`` scene has one group of a held-out pair. Pair ``index`` of a split is a pure
function of (seed, split, index); its kind is ``KINDS[index % 6]`` unless given (a training stream
may weight the kinds: ``kind_cycle``).
"""
import collections
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from seedream_jax.data import heldout, synthetic
from seedream_jax.data.synthetic import Scene, ShapeObject

KINDS = ("colour", "shape", "count", "position", "relation", "text")
SPLITS = ("train", "heldout")
LANGUAGES = ("en", "zh")
# Caption type of a held-out pair (and of every train pair of position and relation).
EVAL_CAPTION = {"colour": "short", "shape": "short", "count": "short", "position": "long", "relation": "long",
                "text": "short"}
_MIX = dict(num_images=1, max_objects=4, object_count_weights=(4.0, 3.0, 2.0, 1.0), text_probability=0.2,
            same_probability=0.3, group_probability=0.2)
# The scene mix each kind draws from (its perturbation must apply to most of its scenes).
WORLDS = {
    "colour": synthetic.SyntheticWorldConfig(**_MIX),
    "shape": synthetic.SyntheticWorldConfig(**_MIX),
    "count": synthetic.SyntheticWorldConfig(**dict(_MIX, same_probability=0.45, group_probability=0.35)),
    "position": synthetic.SyntheticWorldConfig(**dict(_MIX, object_count_weights=(4.0, 3.0, 1.0, 1.0))),
    "relation": synthetic.SyntheticWorldConfig(**dict(_MIX, max_objects=2, object_count_weights=(0.0, 1.0),
                                                      same_probability=0.0, group_probability=0.0)),
    "text": synthetic.SyntheticWorldConfig(**dict(_MIX, text_probability=1.0)),
}
_MAX_TRIES = 100


@dataclasses.dataclass
class PreferencePair:
    """``scene`` (chosen) and ``negative`` (rejected): specs differing in ``kind``; ``caption_type``
    'short' or 'long'; ``split`` and ``index`` say where it came from."""
    kind: str
    split: str
    index: int
    scene: Scene
    negative: Scene
    caption_type: str

    def captions(self, language: str) -> Tuple[str, str]:
        """(chosen caption, rejected caption) in ``language``."""
        return (synthetic.captions(self.scene)[language][self.caption_type],
                synthetic.captions(self.negative)[language][self.caption_type])

    def images(self, size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) renderings, uint8 [size, size, 3] each."""
        return synthetic.render_scene(self.scene, size), synthetic.render_scene(self.negative, size)


def _key(o: ShapeObject) -> Tuple[str, str, str]:
    return o.shape, o.colour, o.size


def _groups(scene: Scene) -> Dict[Tuple[str, str, str], List[int]]:
    """{(shape, colour, size): indices of its objects}, in order of first appearance."""
    out = collections.OrderedDict()
    for i, o in enumerate(scene.objects):
        out.setdefault(_key(o), []).append(i)
    return out


def _free_cells(scene: Scene) -> List[str]:
    used = {o.position for o in scene.objects}
    return [p for p in synthetic.POSITIONS if p not in used and (scene.text is None or not scene.text.covers(p))]


def _copy(scene: Scene, objects: List[ShapeObject], text=None) -> Scene:
    """A new scene with ``objects`` listed in grid order, as ``sample_scene`` lists them (so that no
    negative caption gives itself away by naming objects out of that order)."""
    order = list(synthetic.POSITIONS)
    objects = sorted(objects, key=lambda o: order.index(o.position))
    return Scene(scene.background, objects, scene.text if text is None else text, scene.style)


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))] if options else None


def _regroup(scene: Scene, rng, allow_heldout: bool, attribute: str) -> Optional[Scene]:
    """One group's colour or shape (``attribute``) changed without merging it into another group."""
    groups = _groups(scene)
    key = _choice(rng, list(groups))
    shape, colour, size = key
    if attribute == "colour":
        options = [(shape, c, size) for c in synthetic.visible_colours(scene.background) if c != colour]
    else:
        options = [(s, colour, size) for s in synthetic.SHAPES if s != shape]
    options = [k for k in options if k not in groups and (allow_heldout or not heldout.is_heldout(k[1], k[0]))]
    new = _choice(rng, options)
    if new is None:
        return None
    objects = [ShapeObject(new[0], new[1], new[2], o.position) if i in groups[key] else o
               for i, o in enumerate(scene.objects)]
    return _copy(scene, objects)


def _count(scene: Scene, rng, allow_heldout: bool) -> Optional[Scene]:
    groups, free = _groups(scene), _free_cells(scene)
    moves = [(k, "add") for k in groups if free and len(scene.objects) < synthetic.MAX_OBJECTS]
    moves += [(k, "drop") for k, idx in groups.items() if len(idx) >= 2]
    move = _choice(rng, moves)
    if move is None:
        return None
    key, action = move
    if action == "drop":
        gone = _choice(rng, groups[key])
        return _copy(scene, [o for i, o in enumerate(scene.objects) if i != gone])
    return _copy(scene, scene.objects + [ShapeObject(key[0], key[1], key[2], _choice(rng, free))])


def _position(scene: Scene, rng, allow_heldout: bool) -> Optional[Scene]:
    which = int(rng.integers(len(scene.objects)))
    relation = synthetic._relation(scene.objects)
    options = []
    for cell in _free_cells(scene):
        objects = [dataclasses.replace(o, position=cell) if i == which else o for i, o in enumerate(scene.objects)]
        if synthetic._relation(objects) == relation:
            options.append(objects)
    objects = _choice(rng, options)
    return None if objects is None else _copy(scene, objects)


def _relation(scene: Scene, rng, allow_heldout: bool) -> Optional[Scene]:
    if synthetic._relation(scene.objects) is None:
        return None
    a, b = scene.objects
    return _copy(scene, [dataclasses.replace(a, position=b.position), dataclasses.replace(b, position=a.position)])


def _text(scene: Scene, rng, allow_heldout: bool) -> Optional[Scene]:
    t = scene.text
    if t is None:
        return None
    words = [w for w in synthetic.WORDS[t.language] if w != t.text and (t.orientation == "horizontal" or len(w) > 1)]
    return _copy(scene, list(scene.objects), dataclasses.replace(t, text=_choice(rng, words)))


_PERTURB = {"colour": lambda s, r, h: _regroup(s, r, h, "colour"), "shape": lambda s, r, h: _regroup(s, r, h, "shape"),
            "count": _count, "position": _position, "relation": _relation, "text": _text}


def perturb(scene: Scene, kind: str, rng: np.random.Generator, allow_heldout: bool = False) -> Optional[Scene]:
    """``scene`` with its ``kind`` attribute changed (see the module doc), or None when that kind
    does not apply to it (no text to change, no relation to reverse, no free cell...). Unless
    ``allow_heldout``, the result has no object of a held-out (colour, shape) pair."""
    if kind not in _PERTURB:
        raise ValueError(f"unknown perturbation kind {kind!r}; expected one of {KINDS}")
    out = _PERTURB[kind](scene, rng, allow_heldout)
    if out is not None:
        out.validate()
    return out


def with_heldout_group(scene: Scene, rng) -> Optional[Scene]:
    """``scene`` with one group turned into a held-out (colour, shape) pair, groups kept apart
    (None when no held-out pair fits): a scene no train split draws (``data/heldout.py``)."""
    groups = _groups(scene)
    key = _choice(rng, list(groups))
    options = [(s, c, key[2]) for c, s in heldout.HELDOUT_COLOUR_SHAPES if (s, c, key[2]) not in groups]
    new = _choice(rng, options)
    if new is None:
        return None
    return _copy(scene, [ShapeObject(new[0], new[1], new[2], o.position) if _key(o) == key else o
                         for o in scene.objects])


def split_scene(rng: np.random.Generator, mix: synthetic.SyntheticWorldConfig, split: str) -> Scene:
    """A scene of ``mix`` for ``split``, drawn with ``rng``: a train scene (``sample_scene``, never a
    held-out colour-shape pair), or a held-out one (a train scene with one group turned into a
    held-out pair by ``with_heldout_group``; scenes where none fits are redrawn)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    for _ in range(_MAX_TRIES):
        scene = synthetic.sample_scene(rng, mix)
        if split == "train":
            return scene
        scene = with_heldout_group(scene, rng)
        if scene is not None:
            return scene
    raise RuntimeError(f"no held-out scene found in {_MAX_TRIES} tries")


def alternating_caption(scene: Scene, index: int, rng: np.random.Generator) -> str:
    """Caption ``index`` of a stream of world prompts: English for even ``index``, Chinese for odd,
    the short or the long caption at random (``rng``)."""
    return synthetic.captions(scene)[LANGUAGES[index % 2]][("short", "long")[int(rng.integers(2))]]


def kind_cycle(weights, kinds: Sequence[str] = KINDS) -> List[str]:
    """``kinds`` repeated by their integer ``weights`` (in that order): pair i of a training
    stream is of kind ``cycle[i % len(cycle)]``."""
    weights, kinds = [int(w) for w in weights], tuple(kinds)
    if len(weights) != len(kinds) or min(weights) < 0 or sum(weights) == 0:
        raise ValueError(f"kind weights {weights} must be {len(kinds)} non-negative integers (for {kinds}) "
                         "with a positive sum")
    return [k for k, w in zip(kinds, weights) for _ in range(w)]


def make_pair(seed: int, split: str, index: int, mixed_captions: Optional[bool] = None,
              kind: Optional[str] = None) -> PreferencePair:
    """Pair ``index`` of ``split``, deterministic in (seed, split, index, kind); ``kind`` defaults
    to ``KINDS[index % 6]``.

    mixed_captions: colour, shape, count and text pairs take the short or the long caption at
    random (default: in the train split) instead of ``EVAL_CAPTION``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    kind = KINDS[index % len(KINDS)] if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; expected one of {KINDS}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    for _ in range(_MAX_TRIES):
        scene = synthetic.sample_scene(rng, WORLDS[kind])
        if split == "heldout":
            scene = with_heldout_group(scene, rng)
            if scene is None or (kind == "relation" and synthetic._relation(scene.objects) is None):
                continue
        negative = perturb(scene, kind, rng, allow_heldout=split == "heldout")
        if negative is not None:
            break
    else:
        raise RuntimeError(f"no {kind} pair found for {split} pair {index} in {_MAX_TRIES} scenes")
    caption_type = EVAL_CAPTION[kind]
    if (split == "train" if mixed_captions is None else mixed_captions) and caption_type == "short":
        caption_type = ("short", "long")[int(rng.integers(2))]
    return PreferencePair(kind, split, index, scene, negative, caption_type)


def heldout_pairs(seed: int, per_kind: int) -> List[PreferencePair]:
    """The first ``per_kind`` held-out pairs of every kind (indices 0 .. 6 * per_kind - 1)."""
    return [make_pair(seed, "heldout", i) for i in range(per_kind * len(KINDS))]
