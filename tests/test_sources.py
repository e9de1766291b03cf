"""Data sources by format (``data/sources.py``): each resumes exactly and counts its bad rows by
reason; the registry names the known formats; ``DiffusionBatch`` is a pytree the loss reads; a
stage with its own ``data`` section reads another dataset than ``cfg.data``."""
import json
import logging
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from seedream_jax import config_lib
from seedream_jax.data import sources
from seedream_jax.data import synthetic as S
from seedream_jax.data.tokenizer import train_sentencepiece
from seedream_jax.data.types import DiffusionBatch
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.stages import common, pretrain, vae as vae_stage

PROMPTS = ("a red circle", "红色的圆形", "two blue squares", "两个蓝色的正方形", "the word 'OPEN'")


def _equal(a, b) -> bool:
    """Batches (dicts of lists / arrays) equal element for element."""
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _assert_resumes(open_source, k=3, n=4):
    """get_state after k batches, set_state on a fresh source: the same next n batches."""
    first = open_source()
    for _ in range(k):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
    want = [next(first) for _ in range(n)]
    fresh = open_source()
    fresh.set_state(state)
    assert all(_equal(a, b) for a, b in zip(want, [next(fresh) for _ in range(n)]))


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


# ---- prompts

def test_prompts_from_the_config_cycle_each_epoch_shuffled_and_resume():
    d = config_lib.data_section(format="prompts", prompts=PROMPTS, seed=3)
    src = sources.open_source(d, "/unused", 3, yields="prompts")
    drawn = [p for _ in range(5) for p in next(src)["prompt"]]  # 15 draws = 3 epochs of 5
    epochs = [drawn[i:i + 5] for i in range(0, 15, 5)]
    assert all(sorted(e) == sorted(PROMPTS) for e in epochs)  # each prompt once per epoch
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled epoch after epoch
    again = sources.open_source(d, "/unused", 3)
    assert [p for _ in range(5) for p in next(again)["prompt"]] == drawn  # seeded
    _assert_resumes(lambda: sources.open_source(d, "/unused", 3), k=2)
    short = sources.open_source(config_lib.data_section(format="prompts", prompts=PROMPTS[:2]), "", 5)
    assert sorted(next(short)["prompt"][:2]) == sorted(PROMPTS[:2])  # fewer prompts than a batch still fill it
    whole = next(sources.open_source(d, "/unused", 4))["prompt"]
    shards = [next(sources.RowBatches(src.rows, ("prompt",), 4, 3, process_index=p, process_count=2))["prompt"]
              for p in range(2)]
    assert shards == [whole[0::2], whole[1::2]]  # each process its rows of the same global batch


def test_prompts_from_text_and_jsonl_files(tmp_path, caplog):
    _write_lines(tmp_path / "prompts.txt", ["\ufeff" + PROMPTS[0], "", *PROMPTS[1:], "  "])
    d = config_lib.data_section(format="prompts", path="prompts.txt")
    src = sources.open_source(d, str(tmp_path), 5)
    assert sorted(next(src)["prompt"]) == sorted(PROMPTS) and src.skipped == {}  # BOM and blank lines dropped
    rows = [json.dumps({"prompt": p}, ensure_ascii=False) for p in PROMPTS]
    jsonl = _write_lines(tmp_path / "prompts.jsonl", rows + ["{not json", '{"text": "x"}', '{"prompt": 7}', "[1]"])
    d.path = jsonl  # absolute
    with caplog.at_level(logging.INFO):
        src = sources.open_source(d, str(tmp_path), 2)
    assert src.skipped == {"invalid JSON": 1, "missing or empty 'prompt'": 2, "not a JSON object": 1}
    assert sorted(r["prompt"] for r in src.rows) == sorted(PROMPTS)
    assert "skipped 4" in caplog.text
    _assert_resumes(lambda: sources.open_source(d, str(tmp_path), 2))
    # a line of bytes that is not UTF-8 is skipped and counted; the rest of the file is read
    bad = "\n".join(PROMPTS[:2]).encode("utf-8") + b"\n\xff\xfe broken \xc3\n" + PROMPTS[2].encode("utf-8") + b"\n"
    (tmp_path / "bad.txt").write_bytes(bad)
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(json.dumps({"prompt": p}, ensure_ascii=False).encode("utf-8")
                                                     for p in PROMPTS[:3]) + b'\n{"prompt": "\xff"}\n')
    for name, kept in (("bad.txt", PROMPTS[:3]), ("bad.jsonl", PROMPTS[:3])):
        src = sources.open_source(config_lib.data_section(format="prompts", path=name), str(tmp_path), 2)
        assert sorted(r["prompt"] for r in src.rows) == sorted(kept) and src.skipped == {sources.BAD_UTF8: 1}, name
    d.prompts = PROMPTS
    with pytest.raises(ValueError, match="not both"):
        sources.open_source(d, str(tmp_path), 2)


# ---- preference pairs

def test_pairs_of_texts_and_images_bad_rows_counted(tmp_path, caplog):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    rows = [
        {"prompt": "a red circle", "chosen": "a.png", "rejected": "b.png"},
        {"prompt": "改写", "chosen": "一个红色的圆形", "rejected": "圆"},
        {"prompt": "p", "chosen": "sharp text", "rejected": "blurry text"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},                    # chosen equals rejected
        {"prompt": "p", "chosen": "a.png", "rejected": "a text"},                 # mixes an image and a text
        {"prompt": "p", "chosen": "a.png", "rejected": "missing.jpg"},            # missing image file
        {"prompt": "p", "chosen": "x"},                                           # missing 'rejected'
        {"prompt": "", "chosen": "x", "rejected": "y"},                           # empty 'prompt'
    ]
    path = _write_lines(tmp_path / "pairs.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows] + ["{oops"])
    d = config_lib.data_section(format="pairs", path="pairs.jsonl", seed=1)
    with caplog.at_level(logging.INFO):
        src = sources.open_source(d, str(tmp_path), 2, yields="pairs")
    assert src.skipped == {"chosen equals rejected": 1, "mixes an image and a text": 1, "missing image file": 1,
                           "missing or empty 'rejected'": 1, "missing or empty 'prompt'": 1, "invalid JSON": 1}
    assert f"{path}: 3 rows, skipped 6" in caplog.text
    images = [r for r in src.rows if r["prompt"] == "a red circle"][0]
    assert images["chosen"] == str(tmp_path / "a.png") and images["rejected"] == str(tmp_path / "b.png")
    batch = next(src)
    assert set(batch) == {"prompt", "chosen", "rejected"} and all(len(v) == 2 for v in batch.values())
    _assert_resumes(lambda: sources.open_source(d, str(tmp_path), 2))


# ---- rewrite pairs

def test_text_pairs_bad_rows_counted_and_an_empty_file_refused(tmp_path):
    rows = [{"prompt": "猫", "rewrite": "一只橘色的猫坐在窗台上，柔和的晨光"},
            {"prompt": "a cat", "rewrite": "a ginger cat on a windowsill, soft morning light"},
            {"prompt": "dog", "rewrite": "a dog"}, {"prompt": "x", "rewrite": ""}, {"prompt": "y"}]
    _write_lines(tmp_path / "pe.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows] + ["nope", "3"])
    d = config_lib.data_section(format="text", path="pe.jsonl")
    src = sources.open_source(d, str(tmp_path), 2, yields="text")
    assert src.skipped == {"missing or empty 'rewrite'": 2, "invalid JSON": 1, "not a JSON object": 1}
    assert len(src.rows) == 3 and set(next(src)) == {"prompt", "rewrite", "language", "direction"}
    _assert_resumes(lambda: sources.open_source(d, str(tmp_path), 2), k=4)
    fresh = sources.open_source(d, str(tmp_path), 2)
    with pytest.raises(ValueError, match="seed=9"):
        fresh.set_state(dict(src.get_state(), seed=9))
    _write_lines(tmp_path / "bad.jsonl", ["nope", '{"prompt": "x"}'])
    with pytest.raises(ValueError, match="bad.jsonl has no usable text rows"):
        sources.open_source(config_lib.data_section(format="text", path="bad.jsonl"), str(tmp_path), 2)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        sources.open_source(config_lib.data_section(format="text", path="missing.jsonl"), str(tmp_path), 2)


# ---- the registry

def test_registry_names_known_formats(monkeypatch):
    assert sources.known_formats() == ["arrayrecord", "image_pairs", "pairs", "prompts", "synthetic", "text"]
    with pytest.raises(ValueError, match=r"data.format must be one of \['arrayrecord', 'image_pairs', 'pairs', 'prompts', "
                                         r"'synthetic', 'text'\], got 'parquet'"):
        sources.open_source(config_lib.data_section(format="parquet"), "", 2)
    with pytest.raises(ValueError, match=r"'prompts' yields prompts, but this stage reads images: use one of "
                                         r"\['arrayrecord', 'synthetic'\]"):
        sources.lookup("prompts", yields="images")
    with pytest.raises(ValueError, match="already registered"):
        sources.register("text", yields="text")(lambda *a: None)
    monkeypatch.setattr(sources, "_FORMATS", dict(sources._FORMATS))  # a user's own format, this test only
    sources.register("numbers", yields="numbers")(lambda d, workdir, b: iter([{"n": list(range(b))}]))
    assert next(sources.open_source(config_lib.data_section(format="numbers"), "", 3)) == {"n": [0, 1, 2]}


# ---- typed batches

def test_diffusion_batch_is_a_pytree_with_checked_fields():
    d = {"image": np.zeros((8, 8, 8, 3), np.float32), "llm_ids": np.ones((8, 5), np.int32),
         "llm_mask": np.ones((8, 5), bool)}  # batch 8: one row per virtual CPU device (conftest)
    b = DiffusionBatch.from_dict(d)
    assert b.latent_mean is None and set(b.tokens()) == {"llm_ids", "llm_mask"} and _equal(b.to_dict(), d)
    assert DiffusionBatch.from_dict(b) is b
    assert len(jax.tree_util.tree_leaves(b)) == 3  # absent fields have no leaves
    doubled = jax.jit(lambda x: jax.tree_util.tree_map(lambda v: v * 2, x))(b)
    assert isinstance(doubled, DiffusionBatch) and int(doubled.llm_ids[0, 0]) == 2
    # what the loop's device placement of a DiffusionBatch would do: map over its leaves
    mesh = mesh_lib.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    placed = jax.tree_util.tree_map(
        lambda v: jax.make_array_from_process_local_data(mesh_lib.batch_sharding(mesh, np.ndim(v)), np.asarray(v)), b)
    assert isinstance(placed, DiffusionBatch) and isinstance(placed.image, jax.Array) and placed.text_context is None
    with pytest.raises(KeyError, match="unknown keys \\['caption'\\]"):
        DiffusionBatch.from_dict({**d, "caption": ["x"] * 8})
    with pytest.raises(ValueError, match="either image or latent_mean"):
        DiffusionBatch.from_dict({**d, "latent_mean": d["image"], "latent_logvar": d["image"]})
    with pytest.raises(ValueError, match="either the token arrays"):
        DiffusionBatch.from_dict({"image": d["image"]})


# ---- per-stage data sections

def test_data_section_and_stage_data_cfg():
    cfg = config_lib.base_config("tiny")
    assert cfg.data.to_dict() == config_lib.data_section(image_size=cfg.model.resolution).to_dict()
    assert common.stage_data_cfg(cfg, cfg.pretrain) is cfg.data
    cfg.sft = ConfigDict(dict(kind="pretrain", data=config_lib.data_section(format="arrayrecord", path="sft_ds")))
    own = common.stage_data_cfg(cfg, cfg.sft)
    assert own is cfg.sft.data and own.path == "sft_ds" and cfg.data.format == "synthetic"
    config_lib.apply_overrides(cfg, ["sft.data.seed=7"])
    assert common.stage_data_cfg(cfg, cfg.sft).seed == 7 and cfg.data.seed == 0
    with pytest.raises(KeyError, match="unknown keys \\['fromat'\\]"):
        config_lib.data_section(fromat="synthetic")
    with pytest.raises(TypeError, match="must be a ConfigDict"):
        common.stage_data_cfg(cfg, ConfigDict(dict(data="sft_ds")))


@pytest.fixture(scope="module")
def two_worlds(tmp_path_factory):
    """A workdir whose cfg.data.dir world (16 images, 32 px) differs from a second world in
    ``other`` (12 images, 16 px, another seed), and a tokenizer trained on both."""
    root = tmp_path_factory.mktemp("worlds")
    S.write_dataset(S.SyntheticWorldConfig(num_images=16, image_size=32, seed=1), str(root / "data" / "synthetic"))
    S.write_dataset(S.SyntheticWorldConfig(num_images=12, image_size=16, seed=2), str(root / "other"))
    texts = [c for d in ("data/synthetic", "other") for r in S.load_dataset(str(root / d))[1]
             for by in r["captions"].values() for c in by.values()]
    train_sentencepiece(texts, str(root / "tokenizer" / "spm"), 512, user_defined_symbols=S.zh_caption_words())
    return str(root)


def _tiny_cfg():
    cfg = config_lib.base_config("tiny")
    cfg.model.update(resolution=16, llm_max_length=16, byt5_max_length=8)
    cfg.model.mmdit.update(num_double_blocks=1, num_single_blocks=1, rope_base_grid=2)
    cfg.model.llm.num_hidden_layers = cfg.model.byt5.num_layers = 1
    cfg.model.vae.block_out_channels = (8, 8, 8)
    cfg.tokenizer.vocab_size = 512
    cfg.pretrain.init_from = {}
    cfg.pretrain.train.batch_size = cfg.vae.train.batch_size = 4
    return cfg


def test_pretrain_and_vae_stages_read_their_own_data_section(two_worlds):
    workdir = two_worlds
    cfg = _tiny_cfg()
    plain = pretrain.build_task(cfg, cfg.pretrain, workdir)
    assert plain.data.images.shape == (16, 32, 32, 3)  # cfg.data: the default world
    cfg.pretrain.data = config_lib.data_section(dir="other", seed=5)
    cfg.vae.data = config_lib.data_section(dir=os.path.join(workdir, "other"))
    cfg.data.dir = "does_not_exist"  # neither stage may read cfg.data now
    task = pretrain.build_task(cfg, cfg.pretrain, workdir)
    other_images, _ = S.load_dataset(os.path.join(workdir, "other"))
    assert isinstance(task.data, sources.SyntheticImages) and task.data.seed == 5
    np.testing.assert_array_equal(task.data.images, other_images)
    assert task.data.image_size == (16, 16)
    batch = next(task.data)
    idx = np.sort(task.data.indices(0))
    np.testing.assert_allclose(batch["image"], other_images[idx] / 127.5 - 1.0, atol=1e-6)
    assert "caption" not in batch and batch["llm_ids"].shape == (4, 16)
    params, frozen = jax.eval_shape(lambda r: nn.meta.unbox(task.init_params(r)), jax.random.PRNGKey(0))
    loss, _ = jax.eval_shape(task.loss_fn, params, frozen, DiffusionBatch.from_dict(batch), jax.random.PRNGKey(1))
    assert loss.shape == ()  # the loss reads a DiffusionBatch as well as the dict
    assert vae_stage.build_task(cfg, cfg.vae, workdir).data.num_records == 12
