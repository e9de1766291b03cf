"""The content of a world prompt, and whether a rewrite of it keeps that content.

``parse(prompt, language)`` reads a caption of the synthetic world's grammar back into what it says
(``data/synthetic.py``: ``captions`` and ``all_captions``; tables such as ``COLOURS`` and ``POSITIONS``
are the vocabulary, so the two cannot drift apart). Three kinds, in English or Chinese:

  short  objects and the quoted word:   'two small red circles and the text "HELLO"'
                                        '两个小的红色圆形和文字“HELLO”'
  long   background, every object with its cell, the word's colour, size and band, and for two
         distinguishable objects their relation:
         'On a beige background: a small red circle at the top left and a large blue square on the
         right. The red circle is to the left of the blue square.'
  style  the short caption followed by the four style attributes (palette, lighting, texture,
         composition): 'a small red circle, in pastel colours, warm lighting, a grainy texture and
         no frame'

Which of the two a caption is written in: ``synthetic.caption_language``.

``preserves(original, rewrite, language)`` checks a prompt rewriter: the rewrite must state the same
objects (a multiset of (count, size, colour, shape)) and the same quoted words as the original, and
every detail the original states besides (background, cells, the word's layout, the relation, the
style) unchanged; it may add layout or style the original leaves open. It returns (ok, reasons) and
never raises for a prompt that does not parse: that is a reason like any other.
"""
import collections
import dataclasses
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

from seedream_jax.data import synthetic

LANGUAGES = ("en", "zh")
# Quote marks around a word in each caption language, and the placeholder a quoted word becomes while
# the rest is parsed (private-use characters, never in a world caption), so that a word such as
# "和平" cannot be read as the grammar's "和".
_QUOTES = {"en": ('"', '"'), "zh": ("“", "”")}
_MARK = "\ue000{}\ue001"
_PLACEHOLDER = "\ue000(\\d+)\ue001"
_MARKED = re.compile(_PLACEHOLDER)

Name = Tuple[Optional[str], str, str]  # (size or None, colour, shape): how a relation names an object


class ParseError(ValueError):
    """The prompt is not a caption of the world's grammar; the message says where it fails."""


@dataclasses.dataclass(frozen=True)
class TextLayout:
    """Where and how a long caption draws its quoted word (``synthetic.TextItem`` less the font)."""
    text: str
    colour: str
    size: str
    orientation: str
    position: str


@dataclasses.dataclass(frozen=True)
class PromptContent:
    """What a world prompt states.

    objects: ((count, size, colour, shape), ...), one entry per distinct (size, colour, shape), sorted;
    texts: the quoted words, sorted. Long captions only (None otherwise): background; cells
    ((position, size, colour, shape), ...) sorted; text_layout; relation ((first name, 'left of' or
    'above', second name) where the caption states one). Style captions only: style.
    """
    kind: str
    language: str
    objects: Tuple[Tuple[int, str, str, str], ...]
    texts: Tuple[str, ...]
    background: Optional[str] = None
    cells: Optional[Tuple[Tuple[str, str, str, str], ...]] = None
    text_layout: Optional[TextLayout] = None
    relation: Optional[Tuple[Name, str, Name]] = None
    style: Optional[synthetic.Style] = None


# ------------------------------------------------------------------------------------- vocabulary

def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _inverse(table: Dict[str, Tuple[str, str]], which: int) -> Dict[str, str]:
    """{phrase in language ``which`` (0 en, 1 zh): name} of a ``synthetic`` table of (en, zh) pairs."""
    return {pair[which]: name for name, pair in table.items()}


def _flip(table: Dict) -> Dict:
    """{value: key} of a ``synthetic`` table of one phrase per name."""
    return {value: key for key, value in table.items()}


_ZH = {"colour": _inverse(synthetic.COLOURS, 1), "background": _inverse(synthetic.BACKGROUNDS, 1),
       "position": _inverse(synthetic.POSITIONS, 1), "shape": _flip(synthetic.SHAPES), "size": _flip(synthetic.SIZES),
       "text_size": _flip(synthetic.TEXT_SIZES), "count": _flip(synthetic.COUNTS_ZH)}
_EN_POSITION = _inverse(synthetic.POSITIONS, 0)
_EN_COUNT = _flip(synthetic.COUNTS_EN)
_STYLE_PHRASES = [(name, [_inverse(table, i) for i in (0, 1)]) for name, table in synthetic.STYLES.items()]


def _group(words) -> str:
    return f"({_alternation(words)})"


_EN_OBJECT = re.compile(f"{_group(_EN_COUNT)} {_group(synthetic.SIZES)} {_group(synthetic.COLOURS)} "
                        f"{_group(synthetic.SHAPES)}(s?)")
_ZH_OBJECT = re.compile("".join(_group(_ZH[k]) for k in ("count", "size", "colour", "shape")))


# ------------------------------------------------------------------------------------- helpers

def _quoted(language: str) -> str:
    """Pattern of a word in ``language``'s quote marks; group 1 is the word (possibly empty)."""
    opening, closing = _QUOTES[language]
    return f"{re.escape(opening)}([^{re.escape(closing)}]*){re.escape(closing)}"


def _mask(prompt: str, language: str) -> Tuple[str, List[str]]:
    """(the prompt with each quoted word replaced by a numbered placeholder, the words)."""
    if "\ue000" in prompt or "\ue001" in prompt:
        raise ParseError(f"{prompt!r} holds a private-use character of the parser (U+E000/U+E001)")
    opening, closing = _QUOTES[language]
    words: List[str] = []

    def keep(match):
        words.append(match.group(1))
        return _MARK.format(len(words) - 1)
    masked = re.sub(_quoted(language), keep, prompt)
    if opening in masked or closing in masked:
        raise ParseError(f"unbalanced quote marks in {prompt!r}")
    if any(not w for w in words):
        raise ParseError(f"an empty quoted text in {prompt!r}")
    return masked, words


def _split_list(text: str, separator: str, last: str) -> List[str]:
    """Items of a list joined as ``synthetic._join_en``/``_join_zh`` join them: 'A', 'A and B',
    'A, B and C' (separator ', ', last ' and '). A malformed item fails when it is matched."""
    if last not in text:
        return [text]
    head, tail = text.rsplit(last, 1)
    return head.split(separator) + [tail]


def _objects(triples: Sequence[Tuple[int, str, str, str]]) -> Tuple[Tuple[int, str, str, str], ...]:
    """(count, size, colour, shape) entries merged per (size, colour, shape), sorted."""
    counts = collections.Counter()
    for n, size, colour, shape in triples:
        counts[(size, colour, shape)] += n
    return tuple(sorted((n, *key) for key, n in counts.items()))


# ------------------------------------------------------------------------------------- short + style

def _short_items(masked: str, words: List[str], language: str, prompt: str):
    """(object entries, quoted words) of a short caption (``masked``: its placeholders in place)."""
    if language == "en":
        items, text_pattern = _split_list(masked, ", ", " and "), f"the text {_PLACEHOLDER}"
    else:
        items, text_pattern = _split_list(masked, "、", "和"), f"文字{_PLACEHOLDER}"
    objects, texts = [], []
    for item in items:
        quoted = re.fullmatch(text_pattern, item)
        if quoted is not None:
            texts.append(words[int(quoted.group(1))])
            continue
        match = (_EN_OBJECT if language == "en" else _ZH_OBJECT).fullmatch(item)
        if match is None:
            raise ParseError(f"{_unmask(item, words)!r} is neither an object nor a quoted text (in {prompt!r})")
        if language == "en":
            count, size, colour, shape, plural = match.groups()
            n = _EN_COUNT[count]
            if (n > 1) != (plural == "s"):
                raise ParseError(f"{_unmask(item, words)!r}: count and plural disagree (in {prompt!r})")
            objects.append((n, size, colour, shape))
        else:
            count, size, colour, shape = match.groups()
            objects.append((_ZH["count"][count], _ZH["size"][size], _ZH["colour"][colour], _ZH["shape"][shape]))
    if not objects:
        raise ParseError(f"no object in {prompt!r}")
    return _objects(objects), tuple(sorted(texts))


def _style(phrases: List[str], language: str, prompt: str) -> synthetic.Style:
    if len(phrases) != len(_STYLE_PHRASES):
        raise ParseError(f"a style caption names {len(_STYLE_PHRASES)} style attributes, found {len(phrases)} "
                         f"(in {prompt!r})")
    values = {}
    for phrase, (name, by_language) in zip(phrases, _STYLE_PHRASES):
        table = by_language[LANGUAGES.index(language)]
        if phrase not in table:
            raise ParseError(f"{phrase!r} is not a {name} of the world (expected one of {sorted(table)}; "
                             f"in {prompt!r})")
        values[name] = table[phrase]
    return synthetic.Style(**values)


def _unmask(text: str, words: List[str]) -> str:
    return _MARKED.sub(lambda m: words[int(m.group(1))], text)


# ------------------------------------------------------------------------------------- long

def _text_layout(word: str, orientation_flag: bool, size: str, colour: str, band: str, language: str,
                 prompt: str) -> TextLayout:
    orientation = "vertical" if orientation_flag else "horizontal"
    bands = {phrases[LANGUAGES.index(language)]: name for name, phrases in synthetic.TEXT_BANDS[orientation].items()}
    if band not in bands:
        raise ParseError(f"{band!r} is not a band of {orientation} text (expected one of {sorted(bands)}; "
                         f"in {prompt!r})")
    return TextLayout(word, colour, size, orientation, bands[band])


# The long captions' parts (``synthetic.captions``): the objects' list items, the word's sentence, the
# relation's sentence; a relation names an object by colour and shape, with its size when both have those.
_EN_NAME = f"(?:{_group(synthetic.SIZES)} )?{_group(synthetic.COLOURS)} {_group(synthetic.SHAPES)}"
_ZH_NAME = f"{_group(_ZH['size'])}?{_group(_ZH['colour'])}{_group(_ZH['shape'])}"
_EN_HEAD = re.compile(f"On a {_group(synthetic.BACKGROUNDS)} background: (.+)")
_EN_ITEM = re.compile(f"a {_group(synthetic.SIZES)} {_group(synthetic.COLOURS)} {_group(synthetic.SHAPES)} "
                      f"{_group(_EN_POSITION)}")
_EN_TEXT = re.compile(f"The text {_PLACEHOLDER} is written (vertically )?in {_group(synthetic.TEXT_SIZES)} "
                      f"{_group(synthetic.COLOURS)} (?:characters|letters) (.+)")
_EN_RELATION = re.compile(f"The {_EN_NAME} (is to the left of|is above) the {_EN_NAME}")
_ZH_HEAD = re.compile(f"{_group(_ZH['background'])}背景上，(.+)")
_ZH_ITEM = re.compile(f"{_group(_ZH['position'])}有一个{_group(_ZH['size'])}{_group(_ZH['colour'])}"
                      f"{_group(_ZH['shape'])}")
_ZH_TEXT = re.compile(f"{_group({zh for bands in synthetic.TEXT_BANDS.values() for _, zh in bands.values()})}有"
                      f"{_group(_ZH['text_size'])}{_group(_ZH['colour'])}的(竖排)?文字{_PLACEHOLDER}")
_ZH_RELATION = re.compile(f"{_ZH_NAME}在{_ZH_NAME}的(左边|上面)")


def _en_long(masked: str, words: List[str], prompt: str) -> PromptContent:
    if not masked.endswith("."):
        raise ParseError(f"a long caption ends with '.' (in {prompt!r})")
    sentences = masked[:-1].split(". ")
    head = _EN_HEAD.fullmatch(sentences[0])
    if head is None:
        raise ParseError(f"a long caption starts 'On a <background> background: ' (in {prompt!r})")
    background, listed = head.groups()
    cells = []
    for part in _split_list(listed, ", ", " and "):
        match = _EN_ITEM.fullmatch(part)
        if match is None:
            raise ParseError(f"{_unmask(part, words)!r} is not 'a <size> <colour> <shape> <position>' "
                             f"(in {prompt!r})")
        size, colour, shape, position = match.groups()
        cells.append((_EN_POSITION[position], size, colour, shape))
    layout = relation = None
    for sentence in sentences[1:]:
        text_match, relation_match = _EN_TEXT.fullmatch(sentence), _EN_RELATION.fullmatch(sentence)
        if text_match is not None and layout is None and relation is None:
            index, vertical, size, colour, band = text_match.groups()
            layout = _text_layout(words[int(index)], bool(vertical), size, colour, band, "en", prompt)
        elif relation_match is not None and relation is None:
            g = relation_match.groups()
            relation = (g[0:3], "left of" if g[3] == "is to the left of" else "above", g[4:7])
        else:
            raise ParseError(f"{_unmask(sentence, words)!r} is not a text or relation sentence, or is out of place "
                             f"(in {prompt!r})")
    return _long_content("en", background, cells, layout, relation, words)


def _zh_long(masked: str, words: List[str], prompt: str) -> PromptContent:
    if not masked.endswith("。"):
        raise ParseError(f"a long caption ends with '。' (in {prompt!r})")
    sentences = masked[:-1].split("。")
    head = _ZH_HEAD.fullmatch(sentences[0])
    if head is None:
        raise ParseError(f"a long caption starts '<background>背景上，' (in {prompt!r})")
    background, listed = head.groups()
    cells = []
    for part in listed.split("，"):
        match = _ZH_ITEM.fullmatch(part)
        if match is None:
            raise ParseError(f"{_unmask(part, words)!r} is not '<position>有一个<size><colour><shape>' (in {prompt!r})")
        position, size, colour, shape = match.groups()
        cells.append((_ZH["position"][position], _ZH["size"][size], _ZH["colour"][colour], _ZH["shape"][shape]))
    layout = relation = None
    for sentence in sentences[1:]:
        text_match, relation_match = _ZH_TEXT.fullmatch(sentence), _ZH_RELATION.fullmatch(sentence)
        if text_match is not None and layout is None and relation is None:
            band, size, colour, vertical, index = text_match.groups()
            layout = _text_layout(words[int(index)], bool(vertical), _ZH["text_size"][size], _ZH["colour"][colour],
                                  band, "zh", prompt)
        elif relation_match is not None and relation is None:
            g = relation_match.groups()
            first, second = _zh_name(*g[0:3]), _zh_name(*g[3:6])
            relation = (first, "left of" if g[6] == "左边" else "above", second)
        else:
            raise ParseError(f"{_unmask(sentence, words)!r} is not a text or relation sentence, or is out of place "
                             f"(in {prompt!r})")
    return _long_content("zh", _ZH["background"][background], cells, layout, relation, words)


def _zh_name(size: Optional[str], colour: str, shape: str) -> Name:
    return (_ZH["size"][size] if size else None), _ZH["colour"][colour], _ZH["shape"][shape]


def _long_content(language, background, cells, layout, relation, words) -> PromptContent:
    if len({position for position, *_ in cells}) != len(cells):
        raise ParseError(f"two objects share a cell: {[position for position, *_ in cells]}")
    if len(words) != (0 if layout is None else 1):
        raise ParseError(f"a long caption quotes its word once, in the text sentence; found {len(words)} quoted")
    return PromptContent("long", language, _objects([(1, s, c, sh) for _, s, c, sh in cells]), tuple(words),
                         background=background, cells=tuple(sorted(cells)), text_layout=layout, relation=relation)


# ------------------------------------------------------------------------------------- public API

def parse(prompt: str, language: str) -> PromptContent:
    """The content of a world caption (short, long or style) in ``language`` ('en' or 'zh').

    Raises ``ParseError`` (a ValueError) naming the part that is not the world's grammar, and
    ValueError for an unknown language."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ParseError(f"empty prompt {prompt!r}")
    prompt = prompt.strip()
    masked, words = _mask(prompt, language)
    if language == "en":
        if masked.startswith("On a "):
            return _en_long(masked, words, prompt)
        if ", in " in masked:
            short, styles = masked.split(", in ", 1)
            objects, texts = _short_items(short, words, language, prompt)
            return PromptContent("style", language, objects, texts,
                                 style=_style(_split_list(styles, ", ", " and "), language, prompt))
    else:
        if "背景上，" in masked:
            return _zh_long(masked, words, prompt)
        if "，" in masked:
            short, *styles = masked.split("，")
            objects, texts = _short_items(short, words, language, prompt)
            return PromptContent("style", language, objects, texts, style=_style(styles, language, prompt))
    objects, texts = _short_items(masked, words, language, prompt)
    return PromptContent("short", language, objects, texts)


def _describe(key) -> str:
    size, colour, shape = key
    return f"{size} {colour} {shape}"


def _multiset_reasons(original: collections.Counter, rewrite: collections.Counter, describe) -> List[str]:
    reasons = [f"drops {n} x {describe(k)}" for k, n in sorted((original - rewrite).items())]
    return reasons + [f"adds {n} x {describe(k)}" for k, n in sorted((rewrite - original).items())]


def compare(original: PromptContent, rewrite: PromptContent) -> List[str]:
    """Reasons the ``rewrite`` content does not keep the ``original``'s (empty when it does): objects
    and quoted words must be equal as multisets; every other field the original states (not None) must
    be equal in the rewrite."""
    reasons = _multiset_reasons(collections.Counter({(s, c, sh): n for n, s, c, sh in original.objects}),
                                collections.Counter({(s, c, sh): n for n, s, c, sh in rewrite.objects}),
                                _describe)
    reasons += _multiset_reasons(collections.Counter(original.texts), collections.Counter(rewrite.texts),
                                 lambda w: f"text {w!r}")
    for field in ("background", "cells", "text_layout", "relation", "style"):
        before, after = getattr(original, field), getattr(rewrite, field)
        if before is not None and before != after:
            reasons.append(f"changes {field}: {before} -> {after}")
    return reasons


def preserves(original: str, rewrite: str, language: str) -> Tuple[bool, List[str]]:
    """(whether ``rewrite`` keeps every object, attribute and quoted word of ``original``, the reasons
    it does not). Both are parsed as world captions in ``language``; a prompt that does not parse
    gives (False, ["original does not parse: ..."] or ["rewrite does not parse: ..."])."""
    contents = []
    for role, prompt in (("original", original), ("rewrite", rewrite)):
        try:
            contents.append(parse(prompt, language))
        except ParseError as e:
            return False, [f"{role} does not parse: {e}"]
    reasons = compare(*contents)
    return not reasons, reasons


def preservation_rate(originals: Sequence[str], rewrites: Sequence[str],
                      languages: Union[str, Sequence[str]]) -> float:
    """Fraction of (original, rewrite) pairs whose rewrite ``preserves`` the original, in [0, 1];
    ``languages``: one for all pairs or one per pair."""
    languages = [languages] * len(originals) if isinstance(languages, str) else list(languages)
    if not len(originals) == len(rewrites) == len(languages):
        raise ValueError(f"preservation_rate: {len(originals)} originals, {len(rewrites)} rewrites and "
                         f"{len(languages)} languages; expected as many of each")
    if not originals:
        raise ValueError("preservation_rate: no pairs")
    return sum(preserves(o, r, lang)[0] for o, r, lang in zip(originals, rewrites, languages)) / len(originals)
