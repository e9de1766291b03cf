"""benchmarks/style_control.py on stub pipelines: a pipeline that draws the world's truth for the
tags (or words) it is given scores 1.0; one that ignores them scores chance."""
import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest

from seedream_jax.data import style_tags, synthetic

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "style_control.py")
_spec = importlib.util.spec_from_file_location("style_control_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

N, SEED = 6, 2024


class WorldPipeline:
    """Draws the scene whose caption starts the prompt, in the style of its tags (``use_tags``),
    of the style words in the prompt (``use_words``), or plainly; the TextToImage call signature."""

    def __init__(self, scenes, use_tags=False, use_words=False, language="en"):
        self.scenes = {synthetic.captions(s)[language]["long"].rstrip(".。"): s for s in scenes}
        self.use_tags, self.use_words, self.language = use_tags, use_words, language
        self.calls = []

    def _scene(self, prompt):
        matches = [c for c in self.scenes if prompt.startswith(c)]
        assert matches, prompt
        return self.scenes[max(matches, key=len)]

    def _words(self, prompt):
        k = 0 if self.language == "en" else 1
        return {a: v for a, table in synthetic.STYLES.items() for v, phrases in table.items() if phrases[k] in prompt}

    def __call__(self, params, prompts, *, height, width, num_steps=28, guidance_scale=4.0, seed=0, style_tags=None,
                 negative_tags=None, negative_scale=0.0):
        self.calls.append((len(prompts), seed, style_tags is not None))
        out = []
        for i, prompt in enumerate(prompts):
            names = {}
            if self.use_tags:
                names = style_tags_rows_to_names(style_tags, i)
            elif self.use_words:
                names = self._words(prompt)
            scene = dataclasses.replace(self._scene(prompt), style=synthetic.Style(**names))
            out.append(synthetic.render_scene(scene, (height, width)))
        return np.stack(out)


def style_tags_rows_to_names(rows, i):
    return style_tags.to_names(np.asarray(rows)[i])


def _fns(adapter, base):
    kw = dict(height=64, width=64, seed=0)
    return (lambda prompts, rows: adapter(None, prompts, style_tags=rows, **kw),
            lambda prompts: base(None, prompts, **kw))


@pytest.mark.parametrize("mode", ["full", "single"])
def test_truth_scores_one_and_ignoring_tags_scores_chance(mode):
    scenes = bench.world_scenes(N, SEED)
    groups = bench.style_groups(N, mode, SEED)
    assert len(groups) == sum(len(t) for t in synthetic.STYLES.values())
    result = bench.measure(*_fns(WorldPipeline(scenes, use_tags=True), WorldPipeline(scenes)), scenes, groups)
    for attribute, table in synthetic.STYLES.items():
        assert result["attributes"][attribute]["adapter"] == 1.0
        # drawn plainly whatever the words: right only for the plain value
        assert result["attributes"][attribute]["base"] == pytest.approx(1.0 / len(table))
    table = bench.format_table(result)
    assert "| palette | 1.000 | 0.333 |" in table and "| lighting | 1.000 | 0.250 |" in table


def test_words_reach_the_base_as_the_style_caption_does():
    scenes = bench.world_scenes(N, SEED)
    result = bench.measure(*_fns(WorldPipeline(scenes), WorldPipeline(scenes, use_words=True)), scenes,
                           bench.style_groups(N, "full", SEED))
    assert all(acc["base"] == 1.0 for acc in result["attributes"].values())
    # the appended words are the world's own style caption
    scene = scenes[0]
    style = {"palette": "pastel", "lighting": "warm", "texture": "grain", "composition": "framed"}
    styled = synthetic.all_captions(synthetic.Scene(scene.background, scene.objects, scene.text,
                                                    synthetic.Style(**style)))
    for lang in ("en", "zh"):
        short = synthetic.captions(scene)[lang]["short"]
        assert bench.style_words(short, style, lang) == styled[lang]["style"]


def test_tag_rows_follow_the_vocabulary():
    rows = bench.tag_rows([{"lighting": "vignette"}, {"palette": "plain", "composition": "shadow"}])
    assert rows.dtype == np.int32 and rows.shape == (2, style_tags.NUM_ATTRIBUTES)
    assert style_tags.to_names(rows[0]) == {"lighting": "vignette"}
    assert style_tags.to_names(rows[1]) == {"palette": "plain", "composition": "shadow"}


def test_main_wires_stages_seeds_and_output(tmp_path, monkeypatch, capsys):
    from seedream_jax.checkpoint import stage_dir
    from seedream_jax.stages import sample
    scenes = bench.world_scenes(4, SEED)
    pipes = {"ct": WorldPipeline(scenes, use_tags=True), "pretrain": WorldPipeline(scenes)}
    (tmp_path / "ct").mkdir()
    (tmp_path / "pretrain").mkdir()
    with open(tmp_path / "ct" / "stage.json", "w") as f:
        json.dump({"init_from": {"mmdit": {"source": str(tmp_path / "pretrain")}}}, f)

    class FakeStage:
        def __init__(self, directory):
            self.directory, self.step = directory, 7

        def params(self, weights):
            return {"weights": weights}

    monkeypatch.setattr(stage_dir, "open_stage", FakeStage)
    monkeypatch.setattr(sample, "stage_pipeline", lambda stage: pipes[os.path.basename(stage.directory)])
    out = tmp_path / "out"
    assert bench.main(["--workdir", str(tmp_path), "--n", "4", "--batch-size", "3", "--num-steps", "2",
                       "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| palette | 1.000 | 0.333 |" in printed and "| composition | 1.000 | 0.333 |" in printed
    # batches of 3 then 1, seeds seed + start; tags only to the ct stage
    assert pipes["ct"].calls[:2] == [(3, 0, True), (1, 3, True)]
    assert pipes["pretrain"].calls[:2] == [(3, 0, False), (1, 3, False)]
    saved = json.load(open(out / "style_control.json"))
    assert saved["attributes"]["texture"] == {"adapter": 1.0, "base": pytest.approx(1 / 3)}
    assert saved["config"]["base_dir"] == str(tmp_path / "pretrain")
    assert all((out / f"grid_{a}.png").exists() for a in synthetic.STYLES)
