"""Parsing world prompts back to their content, and the content-preservation check (eval/prompt_content.py)."""
import collections
import dataclasses

import numpy as np
import pytest

from seedream_jax.data import synthetic, world_pairs
from seedream_jax.eval import prompt_content as pc

# Scenes of every shape the captions take: 1-4 objects, counted groups, words (vertical too), styles.
_WORLD = synthetic.SyntheticWorldConfig(text_probability=0.6, vertical_text_probability=0.4, same_probability=0.3,
                                        group_probability=0.3)


def _scenes(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scene = synthetic.sample_scene(rng, _WORLD)
        if i % 3 == 0:  # a third with a held-out (colour, shape) group: the grammar allows any pair
            scene = world_pairs.with_heldout_group(scene, rng) or scene
        if i % 2 == 0:
            scene.style = synthetic.Style(**{k: list(t)[int(rng.integers(len(t)))]
                                             for k, t in synthetic.STYLES.items()})
        out.append(scene)
    return out


SCENES = _scenes(240)


def _truth(scene: synthetic.Scene, kind: str, language: str) -> pc.PromptContent:
    """The content a ``kind`` caption of ``scene`` states, from the spec alone."""
    counts = collections.Counter((o.size, o.colour, o.shape) for o in scene.objects)
    objects = tuple(sorted((n, *key) for key, n in counts.items()))
    texts = (scene.text.text,) if scene.text else ()
    if kind == "short":
        return pc.PromptContent("short", language, objects, texts)
    if kind == "style":
        return pc.PromptContent("style", language, objects, texts, style=scene.style)
    t = scene.text
    layout = pc.TextLayout(t.text, t.colour, t.size, t.orientation, t.position) if t else None
    relation = None
    if len(scene.objects) == 2 and len(counts) == 2:
        a, b = scene.objects
        same_kind = (a.shape, a.colour) == (b.shape, b.colour)
        name = lambda o: (o.size if same_kind else None, o.colour, o.shape)  # noqa: E731
        (ra, ca), (rb, cb) = a.cell, b.cell
        if ca != cb:
            first, second = (a, b) if ca < cb else (b, a)
            relation = (name(first), "left of", name(second))
        else:
            first, second = (a, b) if ra < rb else (b, a)
            relation = (name(first), "above", name(second))
    cells = tuple(sorted((o.position, o.size, o.colour, o.shape) for o in scene.objects))
    return pc.PromptContent("long", language, objects, texts, background=scene.background, cells=cells,
                            text_layout=layout, relation=relation)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_caption_kind_parses_back_to_the_scene(language):
    seen = collections.Counter()
    for scene in SCENES:
        captions = synthetic.all_captions(scene)[language]
        for kind in ("short", "long", "style"):
            if kind in captions:
                content = pc.parse(captions[kind], language)
                assert content == _truth(scene, kind, language), captions[kind]
                seen[kind, content.relation is not None, content.text_layout is not None,
                     any(n > 1 for n, *_ in content.objects)] += 1
    # the sample covers relations, words (long) and counted groups
    assert seen["style", False, False, True] and sum(v for (k, rel, *_), v in seen.items() if k == "long" and rel) > 10
    assert sum(v for (k, _, text, _), v in seen.items() if k == "long" and text) > 50


def test_a_hand_written_example():
    long_en = ('On a beige background: a small red circle at the top left and a small red circle on the right. '
               'The text "和平" is written vertically in large blue characters down the middle.')
    content = pc.parse(long_en, "en")
    assert content.objects == ((2, "small", "red", "circle"),) and content.texts == ("和平",)
    assert content.cells == (("right", "small", "red", "circle"), ("top-left", "small", "red", "circle"))
    assert content.text_layout == pc.TextLayout("和平", "blue", "large", "vertical", "center")
    # a quoted word holding the grammar's own "和" is still one word
    assert pc.parse("两个小的红色圆形和文字“和平”", "zh").texts == ("和平",)
    assert pc.preserves('two small red circles and the text "和平"', long_en, "en") == (True, [])


def test_caption_language_sets_quoted_words_aside():
    # an English caption quoting a Chinese word is English, in either quote style
    assert synthetic.caption_language('a small red circle and the text "你好"') == "en"
    assert synthetic.caption_language("a small red circle and the text “你好”") == "en"
    assert synthetic.caption_language("两个小的红色圆形和文字“HELLO”") == synthetic.caption_language("一个小的红色圆形和文字“你好”") == "zh"
    assert synthetic.caption_language('画一只猫 "cat"') == synthetic.caption_language('the text "你好') == "zh"  # unclosed: not a quote
    assert synthetic.caption_language("a cat") == "en"
    with pytest.raises(TypeError, match="prompt must be a str, got NoneType"):
        synthetic.caption_language(None)
    quoting_chinese = 0
    for scene in SCENES:
        for language, captions in synthetic.all_captions(scene).items():
            assert all(synthetic.caption_language(c) == language for c in captions.values()), captions
        quoting_chinese += scene.text is not None and scene.text.language == "zh"
    assert quoting_chinese > 20


def test_objective_claims_are_the_parsed_content():
    from seedream_jax.rewards import objective

    def key(name):
        size, colour, shape = name
        return colour, shape, size
    for scene in SCENES:
        t = scene.text
        objects = collections.Counter((o.colour, o.shape, o.size) for o in scene.objects)
        for language, captions in synthetic.all_captions(scene).items():
            for kind in ("short", "style"):
                if kind in captions:
                    assert objective.parse_caption(captions[kind]) == objective.Claims(objects, text=t and t.text)
            relation = _truth(scene, "long", language).relation
            assert objective.parse_caption(captions["long"]) == objective.Claims(
                objects, collections.Counter((o.colour, o.shape, o.size, o.position) for o in scene.objects),
                scene.background, t and t.text, t and (t.orientation, t.position),
                relation and (key(relation[0]), key(relation[2]), "left" if relation[1] == "left of" else "above"))
            if "text" in captions:  # a word's own caption names no object
                with pytest.raises(pc.ParseError):
                    objective.parse_caption(captions["text"])
    with pytest.raises(ValueError, match="not a caption of the synthetic world: 'a photo of a cat' is neither"):
        objective.parse_caption("a photo of a cat")


def _short(scene, language):
    return synthetic.captions(scene)[language]["short"]


def _long(scene, language):
    return synthetic.captions(scene)[language]["long"]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_rewrites_of_the_same_scene_preserve_and_changed_ones_are_caught(language):
    rng = np.random.default_rng(1)
    caught = collections.Counter()
    for scene in SCENES[:80]:
        captions = synthetic.all_captions(scene)[language]
        for kind in ("long", "style"):
            if kind in captions:
                assert pc.preserves(captions["short"], captions[kind], language) == (True, [])
        for change in ("colour", "shape", "count", "text"):
            negative = world_pairs.perturb(scene, change, rng, allow_heldout=True)
            if negative is None:
                continue
            ok, reasons = pc.preserves(captions["short"], _long(negative, language), language)
            assert not ok and reasons, (change, captions["short"], _long(negative, language))
            caught[change] += 1
        if len(scene.objects) > 1:  # one object dropped
            fewer = dataclasses.replace(scene, objects=scene.objects[1:])
            ok, reasons = pc.preserves(captions["short"], _long(fewer, language), language)
            o = scene.objects[0]
            assert not ok and reasons == [f"drops 1 x {o.size} {o.colour} {o.shape}"]
            caught["dropped"] += 1
        for change in ("position", "relation"):  # a long original also fixes cells and relations
            negative = world_pairs.perturb(scene, change, rng)
            if negative is not None:
                ok, reasons = pc.preserves(_long(scene, language), _long(negative, language), language)
                assert not ok and any(r.startswith("changes cells") for r in reasons)
                caught[change] += 1
    assert min(caught.values()) >= 5 and len(caught) == 7, caught


def test_reasons_name_what_changed():
    ok, reasons = pc.preserves('two small red circles and the text "HI"',
                               'a small red circle, a large red circle and the text "GO"', "en")
    assert not ok and reasons == ["drops 1 x small red circle", "adds 1 x large red circle", "drops 1 x text 'HI'",
                                  "adds 1 x text 'GO'"]
    ok, reasons = pc.preserves("一个大的绿色三角形", "一个大的绿色三角形，柔和的粉彩色，暖色光照，颗粒质感，画面带边框", "zh")
    assert ok and reasons == []
    ok, reasons = pc.preserves("一个大的绿色三角形，柔和的粉彩色，暖色光照，颗粒质感，画面带边框",
                               "一个大的绿色三角形，原色，暖色光照，颗粒质感，画面带边框", "zh")
    assert not ok and reasons[0].startswith("changes style")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_unparseable_prompts_are_a_reason_never_an_exception(language):
    rng = np.random.default_rng(2)
    good = _short(SCENES[0], language)
    for text in ["", "   ", "a cat on a mat", "一只猫", '"unclosed', "the text \"\"", "five small red circles",
                 "two small red circle", "a small red circle, a large blue square", "On a beige background: .",
                 "a small red circle and the text \ue0007\ue001"]:
        ok, reasons = pc.preserves(good, text, language)
        assert not ok and len(reasons) == 1 and reasons[0].startswith("rewrite does not parse: "), (text, reasons)
        assert pc.preserves(text, good, language)[1][0].startswith("original does not parse: ")
    for scene in SCENES[:40]:  # random cuts and deletions of real captions: parsed or ParseError, nothing else
        for caption in synthetic.all_captions(scene)[language].values():
            for _ in range(5):
                i, j = sorted(rng.integers(0, len(caption) + 1, size=2))
                for broken in (caption[:i], caption[:i] + caption[j:]):
                    try:
                        pc.parse(broken, language)
                    except pc.ParseError:
                        pass
    with pytest.raises(ValueError, match="language must be one of"):
        pc.parse(good, "fr")


def test_preservation_rate():
    en = [(_short(s, "en"), _long(s, "en")) for s in SCENES[:3]]
    rewrites = [en[0][1], en[1][1], en[0][1], "garbage"]
    originals = [en[0][0], en[1][0], en[2][0], en[2][0]]
    assert pc.preservation_rate(originals, rewrites, "en") == 0.5
    zh = (_short(SCENES[0], "zh"), _long(SCENES[0], "zh"))
    assert pc.preservation_rate([en[0][0], zh[0]], [en[0][1], zh[1]], ["en", "zh"]) == 1.0
    with pytest.raises(ValueError, match="2 originals, 1 rewrites and 2 languages"):
        pc.preservation_rate(originals[:2], rewrites[:1], ["en", "en"])
    with pytest.raises(ValueError, match="no pairs"):
        pc.preservation_rate([], [], "en")
