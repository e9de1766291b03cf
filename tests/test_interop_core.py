"""Safetensors I/O (single, sharded, refusal of pickles) and the generic key/shape checking."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from seedream_jax.interop import convert, safetensors_io
from seedream_jax.models import layers


def _tensors():
    rng = np.random.default_rng(0)
    return {f"layers.{i}.proj.weight": rng.normal(size=(16, 8)).astype(np.float32) for i in range(5)}


def test_sharded_round_trip(tmp_path):
    tensors = _tensors()
    files = safetensors_io.save_tensors(tensors, str(tmp_path), max_shard_bytes=1200)
    index = [f for f in files if f.endswith(".index.json")]
    assert len(index) == 1 and len(files) > 2
    with open(index[0]) as f:
        assert set(json.load(f)["weight_map"]) == set(tensors)
    for source in (str(tmp_path), index[0]):
        loaded = safetensors_io.load_tensors(source)
        assert set(loaded) == set(tensors)
        for k in tensors:
            np.testing.assert_array_equal(loaded[k], tensors[k])


def test_single_file_and_bf16(tmp_path):
    t = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)}
    (path,) = safetensors_io.save_tensors(t, str(tmp_path))
    loaded = safetensors_io.load_tensors(path)
    assert loaded["a.weight"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(loaded["a.weight"].astype(np.float32), np.arange(6).reshape(2, 3))


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickled"):
        safetensors_io.load_tensors(str(path))
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        safetensors_io.load_tensors(str(tmp_path))


class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = layers.dense(8, "embed", "mlp", name="layers_0")(x)
        return layers.RMSNorm(name="norm")(layers.dense(4, "mlp", "embed", name="layers_1")(x))


def test_import_export_round_trip_and_mismatch_report():
    model = Two()
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 3)))["params"]
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), jnp.ones((1, 3)))["params"])
    exported = dict(convert.export_params(params, convert.default_torch_name))
    assert set(exported) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "norm.weight"}
    assert exported["layers.0.weight"].shape == (8, 3)  # torch [out, in]
    back = convert.import_params(exported, abstract, convert.default_torch_name)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
    broken = dict(exported)
    del broken["norm.weight"]
    broken["extra.weight"] = np.zeros(1)
    broken["layers.1.weight"] = np.zeros((4, 7))
    with pytest.raises(convert.CheckpointMismatchError) as err:
        convert.import_params(broken, abstract, convert.default_torch_name, source="ckpt")
    e = err.value
    assert e.missing == ["norm.weight"] and e.unexpected == ["extra.weight"]
    assert e.misshaped == [("layers.1.weight", (4, 7), (4, 8))]
    assert "missing keys (1)" in str(e) and "ckpt" in str(e)


def test_conv_layout_round_trip():
    k = np.random.default_rng(0).normal(size=(3, 3, 4, 5))
    torch_k = convert.to_torch_layout(k, convert.CONV)
    assert torch_k.shape == (5, 4, 3, 3)
    np.testing.assert_array_equal(convert.from_torch_layout(torch_k, convert.CONV), k)
