"""Glyph-alignment examples from the synthetic world (Glyph-ByT5): a drawn word, its box, its
template and seven hard negatives.

An example is a world scene with a word (``synthetic.sample_scene`` with text always on, so
shapes clutter the picture as they do in training images), rendered at ``image_size``; the box
of the word's pixels (``synthetic.text_box``); and the glyph template::

    Text "{text}" in {colour}, {font}.        (TEMPLATE)
    Text "{text}".                            (NEUTRAL_TEMPLATE, with probability neutral_probability)

The neutral form is what the text-rendering score uses, where the colour and font of a generated
word are unknown. The word is a world word (``synthetic.WORDS``), two world words (English
joined by a space, Chinese written together), or a random string (2-6 capital letters; 1-4
Chinese characters of ``CHINESE_CHARS``), so that the model reads glyphs rather than remembering
44 words.

Words of a text: English splits at spaces; Chinese splits into runs of two characters ("你好世界"
is "你好" + "世界"; a lone trailing character is a word). The seven augmentations (hard
negatives), each changing the text as its name says, or not applicable (None):

  replace_char   one character becomes another character of the same script
  repeat_char    one character is written twice
  add_char       a character of the same script is inserted
  drop_char      one character is removed (not applicable where that empties a word)
  wrong_word     one word becomes another world word of the language
  repeat_word    one word is written twice
  drop_word      one word is removed (texts of two or more words only)

Example ``index`` of a split is a pure function of (seed, split, index); ``train`` and
``heldout`` draw from independent streams (new layouts, colours, fonts, sizes and random strings;
the world words are shared, as the DiT only ever draws those).
"""
import dataclasses
import string
from typing import Dict, List, Optional, Tuple

import numpy as np

from seedream_jax.data import synthetic

TEMPLATE = 'Text "{text}" in {colour}, {font}.'
NEUTRAL_TEMPLATE = 'Text "{text}".'
SPAN_START = len('Text "'.encode("utf-8"))  # byte offset of the text in both templates
AUGMENTATIONS = ("replace_char", "repeat_char", "add_char", "drop_char", "wrong_word", "repeat_word", "drop_word")
SPLITS = {"train": 0, "heldout": 1}
LANGUAGES = ("en", "zh")
ENGLISH_CHARS = string.ascii_uppercase
CHINESE_CHARS = "".join(sorted({ch for w in synthetic.WORDS["zh"] + tuple(synthetic.zh_caption_words()) for ch in w
                                 if "\u4e00" <= ch <= "\u9fff"}))
_WORLD = synthetic.SyntheticWorldConfig(num_images=1, text_probability=1.0, vertical_text_probability=0.3,
                                        object_count_weights=(4.0, 3.0, 2.0, 1.0))


def chars_of(language: str) -> str:
    """The characters augmentations and random strings draw from."""
    return ENGLISH_CHARS if language == "en" else CHINESE_CHARS


def words_of(text: str, language: str) -> List[str]:
    """The words of ``text`` (see the module docstring)."""
    if language == "en":
        return text.split(" ")
    return [text[i:i + 2] for i in range(0, len(text), 2)]


def join_words(words: List[str], language: str) -> str:
    return (" " if language == "en" else "").join(words)


def _letters(text: str) -> List[int]:
    return [i for i, ch in enumerate(text) if ch != " "]


def _other(rng: np.random.Generator, pool, current) -> str:
    choices = [c for c in pool if c != current]
    return choices[int(rng.integers(len(choices)))]


def augment(text: str, language: str, kind: str, rng: np.random.Generator) -> Optional[str]:
    """``text`` changed by augmentation ``kind`` (``AUGMENTATIONS``), or None where it does not apply."""
    pool = chars_of(language)
    letters = _letters(text)
    i = letters[int(rng.integers(len(letters)))]
    words = words_of(text, language)
    w = int(rng.integers(len(words)))
    if kind == "replace_char":
        return text[:i] + _other(rng, pool, text[i]) + text[i + 1:]
    if kind == "repeat_char":
        return text[:i + 1] + text[i:]
    if kind == "add_char":
        at = int(rng.integers(len(text) + 1))
        return text[:at] + pool[int(rng.integers(len(pool)))] + text[at:]
    if kind == "drop_char":
        out = text[:i] + text[i + 1:]
        return out if all(words_of(out, language)) and out.strip() and " " not in (out[0], out[-1]) else None
    if kind == "wrong_word":
        return join_words(words[:w] + [_other(rng, synthetic.WORDS[language], words[w])] + words[w + 1:], language)
    if kind == "repeat_word":
        return join_words(words[:w + 1] + words[w:], language)
    if kind == "drop_word":
        return join_words(words[:w] + words[w + 1:], language) if len(words) > 1 else None
    raise ValueError(f"unknown augmentation {kind!r}; expected one of {AUGMENTATIONS}")


def template(text: str, colour: Optional[str] = None, font: Optional[str] = None) -> str:
    """The glyph template of ``text`` (the neutral one when colour or font is None)."""
    if colour is None or font is None:
        return NEUTRAL_TEMPLATE.format(text=text)
    return TEMPLATE.format(text=text, colour=colour, font=font)


def span(text: str) -> Tuple[int, int]:
    """Byte positions [start, end) of ``text`` inside its template (= ByT5 token positions)."""
    return SPAN_START, SPAN_START + len(text.encode("utf-8"))


@dataclasses.dataclass
class GlyphExample:
    """A scene whose word is ``scene.text``; ``prompt`` its template; ``negatives`` {kind: template
    of the augmented text, or None}."""
    scene: synthetic.Scene
    prompt: str
    negatives: Dict[str, Optional[str]]
    random_text: bool

    @property
    def text(self) -> str:
        return self.scene.text.text

    @property
    def language(self) -> str:
        return self.scene.text.language


def _text(rng: np.random.Generator, language: str, two_words: float, random_text: float) -> Tuple[str, bool]:
    u = rng.random()
    if u < random_text:
        n = int(rng.integers(2, 7)) if language == "en" else int(rng.integers(1, 5))
        pool = chars_of(language)
        return "".join(pool[int(k)] for k in rng.integers(len(pool), size=n)), True
    words = synthetic.WORDS[language]
    picked = [words[int(k)] for k in rng.choice(len(words), size=2 if u < random_text + two_words else 1,
                                                 replace=False)]
    return join_words(picked, language), False


def make_example(seed: int, split: str, index: int, *, two_words: float = 0.3, random_text: float = 0.3,
                 neutral_probability: float = 0.25) -> GlyphExample:
    """Example ``index`` of ``split`` (a pure function of the arguments)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    scene = synthetic.sample_scene(rng, _WORLD)
    t = scene.text
    text, is_random = _text(rng, t.language, two_words, random_text)
    if t.orientation == "vertical" and len(text) < 2:
        text += chars_of("zh")[int(rng.integers(len(CHINESE_CHARS)))]
    scene = dataclasses.replace(scene, text=dataclasses.replace(t, text=text))
    neutral = rng.random() < neutral_probability
    colour, font = (None, None) if neutral else (t.colour, t.font)
    negatives = {}
    for kind in AUGMENTATIONS:
        other = augment(text, t.language, kind, rng)
        negatives[kind] = None if other is None else template(other, colour, font)
    return GlyphExample(scene, template(text, colour, font), negatives, is_random)


def heldout_examples(seed: int, count: int) -> List[GlyphExample]:
    """The first ``count`` held-out examples."""
    return [make_example(seed, "heldout", i) for i in range(count)]


def encode_templates(texts: List[str], templates: List[str], max_length: int):
    """ByT5 input of glyph templates: (ids int32 [N, max_length], mask bool [N, max_length],
    spans int32 [N, 2], the byte positions of each text in its template). A template whose text
    would be cut by ``max_length`` (which keeps one position for EOS) fails."""
    from seedream_jax.models.byt5 import byt5_tokenize

    spans = np.array([span(t) for t in texts], np.int32).reshape(-1, 2)
    longest = max((len(p.encode("utf-8")) for p in templates), default=0)
    if longest + 1 > max_length:
        raise ValueError(f"a glyph template has {longest} bytes; max_length {max_length} must be at least "
                         f"{longest + 1}")
    ids, mask = byt5_tokenize(templates, max_length)
    return ids, mask, spans


def text_of(template_text: str) -> str:
    """The text quoted in a glyph template (the inverse of ``template``)."""
    start = template_text.index('"') + 1
    return template_text[start:template_text.rindex('"')]
