"""Text cache: the pretrain loss on cached conditioner outputs equals the loss that runs the
conditioner, for the same rng and caption draws; stale caches and a trainable text stack are refused."""
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from seedream_jax.checkpoint.init_from import apply_init_from
from seedream_jax.checkpoint.manager import Checkpointer
from seedream_jax.data import arrayrecord_io, latent_cache, sources, text_cache
from seedream_jax.data import synthetic as S
from seedream_jax.data import synthetic_records as SR
from seedream_jax.data.tokenizer import train_sentencepiece
from seedream_jax.models.conditioner import Conditioner, tokenize_prompts
from seedream_jax.stages import pretrain, record_data
from record_configs import tiny_record_config

WORLD = SR.RecordWorldConfig(S.SyntheticWorldConfig(num_images=24, image_size=32, seed=5), sizes=((32, 32),))


def _config(root):
    cfg = tiny_record_config(root / "ds")
    cfg.pretrain.train.batch_size = 4
    cfg.pretrain.init_from = {"conditioner": str(root / "text_stage")}
    cfg.data.update(dict(caption_types=("short", "long", "text"), caption_type_probs=(0.4, 0.3, 0.3),
                         cfg_drop_prob=0.3))
    return cfg


def _random_params(shapes, seed):
    """NumPy N(0, 0.05**2) values for a tree of (boxed) ``jax.ShapeDtypeStruct``: weights without
    compiling an init program."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype),
                                  nn.meta.unbox(shapes))


def _save_conditioner(stage_dir, cfg, workdir, seed):
    """A checkpoint whose 'conditioner' component is a random conditioner of ``cfg.model``."""
    pipe = pretrain.build_pipeline(cfg, workdir, cfg.pretrain)[0]
    tokens = tokenize_prompts(["a"], pipe.tokenizer, pipe.conditioner_cfg)
    model = Conditioner(pipe.conditioner_cfg)
    params = _random_params(jax.eval_shape(lambda r: model.init(r, **tokens)["params"], jax.random.PRNGKey(0)), seed)
    ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), async_save=False)
    ckpt.save(1, {"params": {"conditioner": params}}, {}, force=True)
    ckpt.wait()
    ckpt.close()


def _texts():
    return [c for i in range(24) for by in S.all_captions(SR.extended_scene(WORLD, i)[0]).values() for c in by.values()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    SR.write_record_world(WORLD, str(root / "ds"), records_per_shard=10)
    texts = _texts()
    os.makedirs(root / "tokenizer")
    train_sentencepiece(texts, str(root / "tokenizer" / "spm"), 512, user_defined_symbols=S.zh_caption_words())
    cfg = _config(root)
    _save_conditioner(str(root / "text_stage"), cfg, str(root), seed=1)
    encode, identity = record_data.text_stack(cfg, str(root), cfg.pretrain)
    source = arrayrecord_io.ArrayRecordSource(str(root / "ds"))
    manifest = text_cache.write_text_cache(source, text_cache.default_text_cache_dir(str(root / "ds")), encode,
                                           identity, dtype="float32", chunk=16, records_per_shard=10)
    return cfg, str(root), source, manifest


@pytest.fixture(scope="module")
def loss_model(setup):
    """(pipe, jitted pretrain loss (trainable, frozen, batch, rng) -> scalar, trainable, frozen):
    random MMDiT weights (so the velocity depends on the conditioning) and the checkpoint's
    conditioner; compiled once per batch structure for the whole module."""
    cfg, workdir, _, _ = setup
    pipe = pretrain.build_pipeline(cfg, workdir, cfg.pretrain)[0]
    init_params, loss_fn = pretrain.model_functions(pipe, cfg.pretrain, 32, 32)
    trainable, frozen = _random_params(jax.eval_shape(init_params, jax.random.PRNGKey(0)), seed=3)
    trainable, frozen = apply_init_from(trainable, frozen, {"conditioner": cfg.pretrain.init_from["conditioner"]})
    assert "conditioner" not in trainable
    return pipe, jax.jit(lambda t, f, b, r: loss_fn(t, f, b, r)[0]), trainable, frozen


def test_cached_conditioning_gives_the_same_loss(setup, loss_model):
    cfg, workdir, source, manifest = setup
    pipe, loss, trainable, frozen = loss_model
    assert manifest["num_records"] == len(source) and manifest["summary"]["dtype"] == "float32"
    task = pretrain.build_task(cfg, cfg.pretrain, workdir)  # finds <ds>-text and checks it against the checkpoint
    assert task.data._load.text_cache is not None
    plain = sources.open_source(cfg.data, workdir, 4, batch_fn=pretrain.conditioning_batch_fn(pipe))
    dropped = 0
    for k in range(2):
        a, b = next(plain), next(task.data)
        assert "llm_ids" in a and "llm_ids" not in b and b["text_context"].shape[1:] == (
            pipe.conditioner_cfg.num_tokens, pipe.conditioner_cfg.context_dim)
        dropped += int((~a["llm_mask"].any(axis=1)).sum())
        latents = {"latent_mean": a.pop("image")[:, ::4, ::4, :1].repeat(4, -1), "latent_logvar": np.zeros((4, 8, 8, 4))}
        a, b = {**a, **latents}, {**{k: v for k, v in b.items() if k != "image"}, **latents}  # no VAE to compile
        rng = jax.random.PRNGKey(10 + k)
        np.testing.assert_allclose(float(loss(trainable, frozen, b, rng)), float(loss(trainable, frozen, a, rng)),
                                   rtol=0, atol=1e-5)
    assert dropped > 0  # the unconditional (CFG-dropped) embedding was served from the cache too


def test_stale_cache_and_trainable_text_stack_are_refused(setup, tmp_path):
    cfg, workdir, source, _ = setup
    _save_conditioner(str(tmp_path / "text_stage"), cfg, workdir, seed=2)  # other weights, same stage name
    stale = _config(tmp_path)
    stale.data.path, stale.tokenizer.path = cfg.data.path, os.path.join(workdir, cfg.tokenizer.path)
    with pytest.raises(latent_cache.CacheMismatchError, match="params_crc32"):
        record_data.open_text_cache(stale, workdir, stale.pretrain)
    trainable = _config(tmp_path)
    trainable.data.path, trainable.pretrain.frozen = cfg.data.path, ("vae", "conditioner/text_encoder")
    assert record_data.open_text_cache(trainable, workdir, trainable.pretrain) is None  # found, not usable: ignored
    trainable.data.text_cache_dir = text_cache.default_text_cache_dir(cfg.data.path)
    with pytest.raises(ValueError, match="whole conditioner frozen"):
        record_data.open_text_cache(trainable, workdir, trainable.pretrain)


def test_cache_of_another_tokenizer_is_refused(setup, tmp_path):
    """The cache records the tokenizer's CRC32: a copy of the same file elsewhere is accepted, a
    tokenizer trained otherwise (same config, same conditioner) is refused naming only the tokenizer;
    an HF tokenizer folder is fingerprinted over all its files."""
    cfg, workdir, _, _ = setup
    os.makedirs(tmp_path / "copy")
    shutil.copyfile(os.path.join(workdir, cfg.tokenizer.path), tmp_path / "copy" / "spm.model")
    cfg = cfg.copy_and_resolve_references()
    cfg.tokenizer.path = str(tmp_path / "copy" / "spm.model")
    assert record_data.open_text_cache(cfg, workdir, cfg.pretrain) is not None
    train_sentencepiece(_texts(), str(tmp_path / "other"), 500, user_defined_symbols=S.zh_caption_words())
    cfg.tokenizer.path = str(tmp_path / "other.model")
    with pytest.raises(latent_cache.CacheMismatchError, match=r"differs in \['tokenizer_crc32'\]"):
        record_data.open_text_cache(cfg, workdir, cfg.pretrain)
    folder = tmp_path / "hf"
    os.makedirs(folder)
    (folder / "tokenizer.json").write_text('{"model": 1}')
    (folder / "vocab.txt").write_text("a\nb\n")
    before = record_data.tokenizer_fingerprint(str(folder))
    (folder / "vocab.txt").write_text("a\nc\n")
    assert record_data.tokenizer_fingerprint(str(folder)) != before
