"""benchmarks/learning.py: variants, shared stages, tables; and (marked slow, about 3 minutes) a
whole run on a tiny budget that prints a well-formed table. The real figures come from running
the benchmark, not from tests."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import learning  # noqa: E402

SHRUNK = ["data.num_images=48", "data.image_size=32", "model.resolution=32", "model.mmdit.rope_base_grid=4",
          "tokenizer.vocab_size=512", "vae.train.steps=3", "vae.train.batch_size=8", "pretrain.train.steps=3",
          "pretrain.train.batch_size=8", "pretrain.eval_prompts=()", "eval.num_steps=2", "eval.height=32",
          "eval.width=32", "eval.batch_size=16"]


def test_variant_parsing_and_unknown_keys():
    assert learning.parse_variant("base") == ("base", [])
    assert learning.parse_variant("tz: model.mmdit.text_ids=zeros ; pretrain.optimizer.lr=2e-3") == (
        "tz", ["model.mmdit.text_ids=zeros", "pretrain.optimizer.lr=2e-3"])
    with pytest.raises(ValueError, match="empty name"):
        learning.parse_variant(":a=1")
    with pytest.raises(KeyError, match="text_idz"):
        learning.main(["--config", os.path.join(REPO, "configs", "tiny.py"), "--workdir", "/nonexistent",
                       "--set", "model.mmdit.text_idz=zeros"])


def test_variants_share_data_and_vae_only_when_those_settings_agree():
    from seedream_jax.config_lib import apply_overrides, load_run_config
    base = load_run_config(os.path.join(REPO, "configs", "tiny.py"))
    fp = lambda *over: learning.shared_fingerprint(apply_overrides(base.copy_and_resolve_references(), list(over)))
    assert fp() == fp("model.mmdit.text_ids=zeros") == fp("pretrain.optimizer.lr=2e-3")
    assert len({fp(), fp("data.world.shuffle_objects=True"), fp("model.vae.block_out_channels=(8, 16)"),
                fp("vae.train.steps=10")}) == 4


def _fake_result(name, value):
    cell = {s: {lang: value for lang in ("en", "zh", "all")} for s in ("seen", "heldout", "all")}
    categories = ("colour", "shape", "count", "position", "relation", "binding", "groups")
    return {"name": name, "accuracy": {c: cell for c in categories}, "by_language": {"en": value, "zh": value},
            "by_split": {"seen": value, "heldout": value}, "text_exact": None,
            "shared_seconds": {"data": 1.0, "vae": 2.0}, "train_seconds": 30.4, "eval_seconds": 5.0}


def test_tables_have_one_row_per_result_and_every_column():
    b_result = dict(_fake_result("b", 1.0), text_use={"0.80": {"text_gain": 0.0123}, "0.95": {"text_gain": -0.002}})
    table = learning.summary_table([_fake_result("a", 0.5), b_result])
    header, rule, a, b = table.splitlines()
    assert header.split(" | ")[1:8] == ["colour", "shape", "count", "position", "relation", "binding", "groups"]
    assert a == "| a | " + " | ".join(["0.50"] * 11) + " | – | – | – | 3 | 30 | 5 |"
    assert b.startswith("| b | 1.00 |") and "| 0.0123 | -0.0020 |" in b and all(line.count("|") == header.count("|") for line in (rule, a, b))
    detail = learning.detail_table(_fake_result("a", 0.25)).splitlines()
    assert detail[2] == "| category | en seen | zh seen | en heldout | zh heldout | all |"
    assert detail[4] == "| colour | 0.25 | 0.25 | 0.25 | 0.25 | 0.25 |" and len(detail) == 4 + 7


@pytest.mark.slow
def test_a_tiny_run_prints_a_well_formed_table(tmp_path, capsys):
    args = ["--config", os.path.join(REPO, "configs", "tiny.py"), "--workdir", str(tmp_path), "--eval_items", "1"]
    for item in SHRUNK:
        args += ["--set", item]
    results = learning.main(args + ["--variant", "zeros:model.mmdit.text_ids=zeros"])
    out = capsys.readouterr().out
    r, = results
    assert r["name"] == "zeros" and r["overrides"] == ["model.mmdit.text_ids=zeros"]
    assert r["pretrain"]["steps"] == 3 and r["train_seconds"] > 0 and r["eval_seconds"] > 0
    assert set(r["text_use"]) == {"0.40", "0.80", "0.95"}
    assert all(set(v) == {"matched", "shuffled", "empty", "text_gain", "empty_gain"} for v in r["text_use"].values())
    categories = ["colour", "shape", "count", "position", "relation", "binding", "groups"]
    for row in (r, r["ceiling"]):  # the variant and its VAE's round-trip ceiling
        assert list(row["accuracy"]) == categories
        for cell in row["accuracy"].values():
            assert all(0.0 <= cell[s][lang] <= 1.0 for s in ("seen", "heldout") for lang in ("en", "zh"))
    header = next(line for line in out.splitlines() if line.startswith("| variant"))
    assert header.split(" | ")[1:8] == categories
    rows = [line for line in out.splitlines() if line.startswith(("| zeros", "| VAE ceiling"))]
    assert len(rows) == 2 and all(line.count("|") == header.count("|") for line in rows)
    assert "**zeros**" in out and "| binding |" in out  # the per-variant category x language x split table
    with open(tmp_path / "learning.json") as f:
        assert [x["name"] for x in json.load(f)] == ["zeros"]
    # A second invocation reuses the saved result instead of training again.
    again = learning.main(args + ["--variant", "zeros:model.mmdit.text_ids=zeros"])
    assert again[0]["train_seconds"] == r["train_seconds"]
