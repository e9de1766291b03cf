"""The pretrain stage on ``data.format='arrayrecord'``: Grain batches of one bucket with tokens."""
import os
import sys

import numpy as np
import pytest

from seedream_jax.data import synthetic as S
from seedream_jax.data import synthetic_records as SR
from seedream_jax.data.pipeline import RecordPipeline
from seedream_jax.data.tokenizer import train_sentencepiece
from seedream_jax.stages import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pretrain_task_reads_bucketed_record_batches(tmp_path):
    world = SR.RecordWorldConfig(S.SyntheticWorldConfig(num_images=40, image_size=32, seed=6),
                                 sizes=((32, 32), (24, 40)))
    manifest = SR.write_record_world(world, str(tmp_path / "ds"))
    texts = [c for i in range(40) for by in S.all_captions(SR.extended_scene(world, i)[0]).values() for c in by.values()]
    os.makedirs(tmp_path / "tokenizer")
    train_sentencepiece(texts, str(tmp_path / "tokenizer" / "spm"), 512, user_defined_symbols=S.zh_caption_words())
    sys.path.insert(0, os.path.join(REPO, "configs"))
    import tiny
    cfg = tiny.get_config()
    cfg.model.resolution = 32
    cfg.model.mmdit.rope_base_grid = 4
    cfg.tokenizer.vocab_size = 512
    cfg.pretrain.init_from = {}
    cfg.pretrain.train.batch_size = 4
    cfg.data.update(dict(format="arrayrecord", path=str(tmp_path / "ds"), image_size=32, bucket_multiple=8,
                         caption_types=("short", "text"), caption_type_probs=(0.5, 0.5)))
    task = pretrain.build_task(cfg, cfg.pretrain, str(tmp_path))
    assert isinstance(task.data, RecordPipeline) and manifest["num_records"] == len(task.data.source)
    shapes = set()
    for k in range(task.data.plan.steps_per_epoch):
        batch = next(task.data)
        assert "caption" not in batch and "index" not in batch
        assert batch["image"].shape == (4, *task.data.bucket_of(k), 3) and batch["image"].dtype == np.float32
        token_keys = [key for key in batch if key != "image"]
        assert token_keys and all(batch[key].shape[0] == 4 for key in token_keys)
        shapes.add(batch["image"].shape[1:3])
    assert shapes == {(32, 32), (24, 40)}
    cfg.data.format = "parquet"
    with pytest.raises(ValueError, match="data.format must be one of"):
        pretrain.build_task(cfg, cfg.pretrain, str(tmp_path))
