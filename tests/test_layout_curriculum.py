"""configs/tiny_layout.py, shrunk as test_chain shrinks the chain: data_layout writes a world of
single objects without words, pretrain_layout trains on it with long captions only, and pretrain
starts its DiT and conditioner from pretrain_layout's last step (stage.json's init_from records)."""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "configs"))

import tiny_layout  # noqa: E402
from seedream_jax.checkpoint.stage_dir import open_stage  # noqa: E402
from seedream_jax.data import synthetic  # noqa: E402
from seedream_jax.main import run_stages  # noqa: E402
from test_chain import chain_config  # noqa: E402


def test_layout_curriculum_feeds_single_object_long_captions_and_hands_its_dit_on(tmp_path):
    cfg = tiny_layout.add_layout_curriculum(chain_config(), steps=2)
    cfg.stages = ("data", "data_layout", "tokenizer", "vae", "pretrain_layout", "pretrain")
    cfg.pretrain.train.steps = cfg.pretrain_layout.train.steps = 2
    cfg.pretrain_layout.eval_prompts = ()
    workdir = str(tmp_path)
    run_stages(cfg, workdir)

    _, records = synthetic.load_dataset(os.path.join(workdir, "data", "layout"))
    specs = [r["spec"] for r in records]
    assert len(specs) == cfg.data.num_images
    assert all(len(s["objects"]) == 1 and not s.get("text") for s in specs)
    assert len({s["objects"][0]["position"] for s in specs}) > 3  # the cells vary
    assert tuple(cfg.pretrain_layout.data.caption_type_probs) == (0.0, 1.0)  # long captions name the cell
    _, ordinary = synthetic.load_dataset(os.path.join(workdir, "data", "synthetic"))
    assert any(len(r["spec"]["objects"]) > 1 for r in ordinary)  # the ordinary mix stays the run-wide data

    layout_step = open_stage(os.path.join(workdir, "pretrain_layout")).step
    with open(os.path.join(workdir, "pretrain", "stage.json")) as f:
        init_from = json.load(f)["init_from"]
    for component in ("mmdit", "conditioner"):
        assert init_from[component]["source"].endswith("pretrain_layout"), init_from[component]
        assert init_from[component]["step"] == layout_step == 2
    before = open_stage(os.path.join(workdir, "pretrain_layout")).params("raw")["mmdit"]
    after = open_stage(os.path.join(workdir, "pretrain")).params("raw")["mmdit"]
    leaf = lambda tree: np.asarray(tree["proj_out"]["kernel"])
    assert leaf(before).any() and not np.array_equal(leaf(before), leaf(after))  # it trained on from there


def test_tiny_long_runs_the_curriculum_inside_its_ten_thousand_dit_steps():
    import tiny_long

    cfg = tiny_long.get_config()
    stages = list(cfg.stages)
    assert stages.index("data_layout") < stages.index("pretrain_layout") < stages.index("pretrain") < stages.index("eval")
    assert cfg.pretrain_layout.train.steps + cfg.pretrain.train.steps == 10000
    assert cfg.data_layout.data.num_images == cfg.pretrain_layout.data.num_images == tiny_long.LAYOUT_SCENES
    assert cfg.data.num_images == 20000  # the ordinary world stays large; the layout world is its own
    assert cfg.data_layout.data.dir == "data/layout" != cfg.data.dir
    assert dict(cfg.pretrain.init_from) == dict(vae="vae", mmdit="pretrain_layout", conditioner="pretrain_layout")
