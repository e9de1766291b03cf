"""Qwen2 causal LM: logits and greedy continuations equal to HF Qwen2ForCausalLM (tied and untied),
KV-cached generation equal to uncached, stop tokens, export / import round trips, a sharded run."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import max_abs_diff
from seedream_jax.interop import convert
from seedream_jax.interop.qwen2 import (abstract_params, causal_lm_abstract_params, causal_lm_params_from_tensors,
                                        export_causal_lm, load_causal_lm)
from seedream_jax.models.causal_lm import Qwen2ForCausalLM, token_logprobs
from seedream_jax.parallel import axes, mesh as mesh_lib, sharding as sharding_lib
from seedream_jax.sampling import text_generation
from seedream_jax.sampling.text_generation import generate, generate_uncached, top_p_filter

# initializer_range 0.2: a random LM with N(0, 0.02) weights mostly repeats its last token.
HF_KW = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6, initializer_range=0.2)
LENGTHS = np.array([3, 8, 5], np.int32)  # prompt lengths of the batch (right-padded to 8)
NEW = 7
KEY = jax.random.PRNGKey(0)


def _prompts():
    """(ids [3, 8] int32 right-padded with 0, lengths [3]); real ids avoid the special ids 0..3."""
    ids = np.random.default_rng(0).integers(4, 300, size=(3, 8)).astype(np.int32)
    ids[np.arange(8)[None, :] >= LENGTHS[:, None]] = 0
    return ids, LENGTHS


def _left_padded(ids, lengths):
    """The same prompts left-padded, as HF ``generate`` takes them: (ids, mask) torch int64."""
    left, mask = np.zeros_like(ids), np.zeros(ids.shape, np.int64)
    for b, n in enumerate(lengths):
        left[b, ids.shape[1] - n:], mask[b, ids.shape[1] - n:] = ids[b, :n], 1
    return torch.from_numpy(left).long(), torch.from_numpy(mask)


@pytest.fixture(scope="module", params=["tied", "untied"])
def lm(request, tmp_path_factory):
    """(HF model, its folder, our config, our params loaded from the folder)."""
    from transformers import Qwen2Config as HFConfig, Qwen2ForCausalLM as HFLM
    torch.manual_seed(0)
    hf = HFLM(HFConfig(**HF_KW, tie_word_embeddings=request.param == "tied")).eval()
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    cfg, params = load_causal_lm(str(folder))
    return hf, str(folder), cfg, params


def _hf_logits(hf, ids, mask):
    with torch.no_grad():
        return hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).logits.numpy()


def _real_diff(a, b, lengths):
    return max(max_abs_diff(a[i, :n], b[i, :n]) for i, n in enumerate(lengths))


def test_logits_and_parameters_match_hf(lm):
    hf, _, cfg, params = lm
    tied = cfg.tie_word_embeddings
    assert tied == hf.config.tie_word_embeddings
    assert set(params) == ({"model"} if tied else {"model", "lm_head"})
    # The decoder's subtree is exactly a Qwen2Model's (the text encoder's LLM).
    assert jax.tree.structure(params["model"]) == jax.tree.structure(nn.meta.unbox(abstract_params(cfg.llm)))
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    from_state = causal_lm_params_from_tensors(state, cfg)
    assert jax.tree.all(jax.tree.map(np.array_equal, from_state, params))
    ids, lengths = _prompts()
    mask = np.arange(8)[None, :] < lengths[:, None]
    ours = jax.jit(Qwen2ForCausalLM(cfg).apply)({"params": params}, ids, mask)
    assert ours.dtype == jnp.float32 and ours.shape == (3, 8, 300)
    ref = _hf_logits(hf, ids, mask)
    d = _real_diff(ours, ref, lengths)
    print(f"Qwen2ForCausalLM ({'tied' if tied else 'untied'}) logits vs HF: max abs diff {d:.2e}")
    assert d <= 1e-5
    logp = token_logprobs(ours, ids)
    ref_logp = torch.log_softmax(torch.from_numpy(ref[:, :-1]), -1).gather(-1, torch.from_numpy(ids[:, 1:, None]).long())
    assert logp.shape == (3, 7) and logp.dtype == jnp.float32
    assert _real_diff(logp, ref_logp[..., 0].numpy(), lengths - 1) <= 1e-5


def test_greedy_matches_hf_generate_and_rows_alone(lm):
    hf, _, cfg, params = lm
    ids, lengths = _prompts()
    out = generate(cfg, params, ids, lengths, max_new_tokens=NEW, rng=KEY, stop_ids=())
    left, mask = _left_padded(ids, lengths)
    with torch.no_grad():
        ref = hf.generate(input_ids=left, attention_mask=mask, do_sample=False, max_new_tokens=NEW,
                          pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:].numpy()
    print(f"greedy ({'tied' if cfg.tie_word_embeddings else 'untied'}): ours {np.asarray(out.tokens).tolist()}")
    assert len(set(ref.ravel().tolist())) > NEW  # not a token repeated per row
    np.testing.assert_array_equal(out.tokens, ref)
    np.testing.assert_array_equal(out.lengths, [NEW] * 3)
    for b in (0, 2):  # the padded rows alone, their prompts unpadded
        n = lengths[b]
        alone = generate(cfg, params, ids[b:b + 1, :n], lengths[b:b + 1], max_new_tokens=NEW, rng=KEY, stop_ids=())
        np.testing.assert_array_equal(alone.tokens[0], out.tokens[b])


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.8, top_p=0.9)])
def test_cached_equals_uncached(lm, sampling):
    _, _, cfg, params = lm
    ids, lengths = _prompts()
    stop = (int(generate(cfg, params, ids, lengths, max_new_tokens=NEW, rng=KEY, stop_ids=()).tokens[1, 2]),)
    cached = generate(cfg, params, ids, lengths, max_new_tokens=NEW, rng=KEY, stop_ids=stop, **sampling)
    reference = generate_uncached(cfg, params, ids, lengths, max_new_tokens=NEW, rng=KEY, stop_ids=stop, **sampling)
    print(f"{sampling or 'greedy'}: cached {np.asarray(cached.tokens).tolist()} lengths {cached.lengths}")
    np.testing.assert_array_equal(cached.tokens, reference.tokens)
    np.testing.assert_array_equal(cached.lengths, reference.lengths)
    if sampling:  # sampling differs from greedy and with the key
        greedy = generate(cfg, params, ids, lengths, max_new_tokens=NEW, rng=KEY, stop_ids=stop)
        programs = text_generation._generate_cached._cache_size()
        other = generate(cfg, params, ids, lengths, max_new_tokens=NEW, rng=jax.random.PRNGKey(1), stop_ids=stop,
                         **{k: v * 0.9 for k, v in sampling.items()})
        assert text_generation._generate_cached._cache_size() == programs  # new key and values: no recompile
        assert not np.array_equal(cached.tokens, greedy.tokens) and not np.array_equal(cached.tokens, other.tokens)


def test_rows_stop_independently(lm):
    _, _, cfg, params = lm
    ids, lengths = _prompts()
    free = np.asarray(generate(cfg, params, ids, lengths, max_new_tokens=NEW, rng=KEY, stop_ids=()).tokens)
    stop = int(free[0, 2])  # row 0 stops at its third token (or earlier), the others wherever it occurs
    out = generate(cfg, params, ids, lengths, max_new_tokens=NEW, rng=KEY, stop_ids=(stop, 299), pad_id=1)
    expected_tokens, expected_lengths = np.full_like(free, 1), []
    for b, row in enumerate(free):
        hits = np.flatnonzero(np.isin(row, (stop, 299)))
        n = int(hits[0]) + 1 if hits.size else NEW
        expected_tokens[b, :n] = row[:n]
        expected_lengths.append(n)
    print(f"stop id {stop}: tokens {np.asarray(out.tokens).tolist()}, lengths {expected_lengths}")
    assert expected_lengths[0] <= 3 and len(set(expected_lengths)) > 1  # rows stopped at different steps
    np.testing.assert_array_equal(out.tokens, expected_tokens)
    np.testing.assert_array_equal(out.lengths, expected_lengths)
    # Row 0 alone: every row stops before max_new_tokens, the loop ends early, the rest is padding.
    one = generate(cfg, params, ids[:1], lengths[:1], max_new_tokens=NEW, rng=KEY, stop_ids=(stop, 299), pad_id=1)
    np.testing.assert_array_equal(one.tokens[0], expected_tokens[0])
    assert int(one.lengths[0]) == expected_lengths[0]


def test_export_loads_in_transformers(lm, tmp_path):
    from transformers import Qwen2ForCausalLM as HFLM
    _, _, cfg, params = lm
    ids, lengths = _prompts()
    mask = np.arange(8)[None, :] < lengths[:, None]
    files = export_causal_lm(params, cfg, str(tmp_path))
    model, info = HFLM.from_pretrained(str(tmp_path), output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.config.tie_word_embeddings == cfg.tie_word_embeddings and len(files) == 2
    ours = jax.jit(Qwen2ForCausalLM(cfg).apply)({"params": params}, ids, mask)
    d = _real_diff(ours, _hf_logits(model.eval(), ids, mask), lengths)
    print(f"export -> Qwen2ForCausalLM.from_pretrained: logits max abs diff {d:.2e}")
    assert d <= 1e-5
    cfg_back, back = load_causal_lm(str(tmp_path))
    assert cfg_back == cfg and jax.tree.all(jax.tree.map(np.array_equal, back, params))


def test_import_and_export_errors_name_the_keys(lm, tmp_path):
    _, _, cfg, params = lm
    untied = dataclasses.replace(cfg, tie_word_embeddings=False)
    state = dict(convert.export_params(params, convert.default_torch_name))
    state.pop("lm_head.weight", None)
    del state["model.norm.weight"]
    state["model.extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(convert.CheckpointMismatchError) as err:
        causal_lm_params_from_tensors(state, untied)
    assert err.value.missing == ["lm_head.weight", "model.norm.weight"]
    assert err.value.unexpected == ["model.extra.weight"]
    with pytest.raises(convert.CheckpointMismatchError, match="lm_head/kernel"):
        export_causal_lm({"model": params["model"]}, untied, str(tmp_path))


def test_generate_refuses_bad_inputs(lm):
    _, _, cfg, params = lm
    ids, lengths = _prompts()
    for kwargs, match in ((dict(prompt_lengths=np.array([0, 8, 5])), r"\[0, 8, 5\]"),
                          (dict(prompt_lengths=np.array([3, 9, 5])), r"\[1, 8\]"),
                          (dict(max_new_tokens=0), "max_new_tokens"), (dict(top_p=0.0), "top_p"),
                          (dict(temperature=-1.0), "temperature"), (dict(stop_ids=(300,)), r"\[300\]")):
        args = dict(prompt_lengths=lengths, max_new_tokens=NEW) | kwargs
        with pytest.raises(ValueError, match=match):
            generate(cfg, params, ids, args.pop("prompt_lengths"), rng=KEY, **args)


def test_top_p_filter_keeps_the_nucleus():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda p: np.isfinite(np.asarray(top_p_filter(logits, p)[0])).tolist()
    assert kept(0.4) == [False, True, False, False]      # the top token alone reaches 0.4
    assert kept(0.7) == [False, True, False, True]       # 0.5 + 0.3
    assert kept(0.85) == [False, True, True, True]       # 0.5 + 0.3 + 0.15
    assert kept(1.0) == [True, True, True, True]
    np.testing.assert_array_equal(top_p_filter(logits, 0.7)[0, 1], logits[0, 1])  # kept logits unchanged


def test_logical_axes_and_sharded_generation(lm):
    """The LM head is annotated (embed, vocab); generation with parameters laid out by the fsdp rules
    on a (data 1, fsdp 2, tensor 2) mesh gives the one-device tokens."""
    _, _, cfg, params = lm
    boxed = causal_lm_abstract_params(cfg)
    specs = jax.tree.map(tuple, nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert specs["model"]["embed_tokens"]["embedding"] == (axes.VOCAB, axes.EMBED)
    if not cfg.tie_word_embeddings:
        assert specs["lm_head"]["kernel"] == (axes.EMBED, axes.VOCAB)
    # Batch 4 (no other test's shape): the program is traced here, under the mesh and the rules.
    ids, lengths = np.concatenate([_prompts()[0]] * 2)[:4], np.concatenate([LENGTHS] * 2)[:4]
    expected = generate_uncached(cfg, params, ids, lengths, max_new_tokens=4, rng=KEY, stop_ids=())
    rules = sharding_lib.resolve_rules("fsdp")
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        placed = jax.device_put(params, shardings)
        out = generate(cfg, placed, ids, lengths, max_new_tokens=4, rng=KEY, stop_ids=())
    if cfg.tie_word_embeddings:
        assert tuple(shardings["model"]["embed_tokens"]["embedding"].spec) == ("tensor", "fsdp")
    else:
        assert tuple(shardings["lm_head"]["kernel"].spec) == ("fsdp", "tensor")
    np.testing.assert_array_equal(out.tokens, expected.tokens)
