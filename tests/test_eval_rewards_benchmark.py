"""benchmarks/eval_rewards.py: scores the images of an eval pass with named rewards."""
import json
import os
import sys

import numpy as np
from PIL import Image

from seedream_jax.data import synthetic as S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import eval_rewards  # noqa: E402


def _eval_dir(path, images_and_prompts):
    os.makedirs(os.path.join(path, "images"))
    rows = []
    for i, (image, prompt, language) in enumerate(images_and_prompts):
        rows.append({"id": f"single/seen/{i:02d}", "language": language, "prompt": prompt})
        Image.fromarray(image).save(os.path.join(path, "images", f"single_seen_{i:02d}_{language}.png"))
    with open(os.path.join(path, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"images": rows}, f, ensure_ascii=False)
    return str(path)


def test_objective_reward_table_separates_right_and_wrong_images(tmp_path, capsys):
    red = S.Scene("beige", [S.ShapeObject("circle", "red", "large", "center")])
    blue = S.Scene("beige", [S.ShapeObject("circle", "blue", "large", "center")])
    caps = S.captions(red)
    right = _eval_dir(tmp_path / "right", [(S.render_scene(red), caps["en"]["short"], "en"),
                                           (S.render_scene(red), caps["zh"]["short"], "zh")])
    wrong = _eval_dir(tmp_path / "wrong", [(S.render_scene(blue), caps["en"]["short"], "en"),
                                           (S.render_scene(red), caps["zh"]["short"], "zh")])
    images, prompts, languages = eval_rewards.eval_images(right)
    assert images.shape == (2, 64, 64, 3) and languages == ["en", "zh"]
    assert eval_rewards.main(["--eval-dir", right, "--eval-dir", wrong, "--reward", "objective"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tmp_path}")]
    cells = [[float(c) for c in row.strip("|").split("|")[1:]] for row in rows]
    np.testing.assert_allclose(cells, [[1.0, 1.0, 1.0], [0.5, 0.0, 1.0]])


def test_reward_agreement_reads_each_images_correctness_and_ranks_inside_each_category(tmp_path):
    import reward_agreement
    red = S.Scene("beige", [S.ShapeObject("circle", "red", "large", "center")])
    path = _eval_dir(tmp_path / "eval", [(S.render_scene(red), S.captions(red)["en"]["short"], "en")] * 2)
    with open(os.path.join(path, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    report["images"][0]["scores"] = {"colour": 1.0, "shape": 0.0}
    report["images"][1].update(id="text/seen/01", scores={})
    os.rename(os.path.join(path, "images", "single_seen_01_en.png"), os.path.join(path, "images", "text_seen_01_en.png"))
    with open(os.path.join(path, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f)
    images, prompts, correct, categories = reward_agreement.eval_images(path)
    assert images.shape == (2, 64, 64, 3) and list(correct) == [0.5, 0.0] and list(categories) == ["single", "text"]

    reward = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.5])
    correct = np.array([0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.0])
    categories = np.array(["a"] * 3 + ["b"] * 3 + ["c"])  # a ranks perfectly, b in reverse, c is constant
    assert reward_agreement.within_categories(reward, correct, categories) == 0.0
    assert reward_agreement.within_categories(reward[:3], correct[:3], categories[:3]) == 1.0
