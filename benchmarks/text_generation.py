"""Text generation speed: our compiled KV-cached generation (``sampling/text_generation.generate``)
vs transformers ``Qwen2ForCausalLM.generate`` on the same exported weights.

Both run greedy, fp32, the same batch of prompts of different lengths (ours right-padded, HF's
left-padded with its attention mask) and exactly ``--new-tokens`` new tokens each (no early stop:
no stop ids for us, ``eos_token_id=None`` for HF). One warm-up call each (our compile, HF's first
call) is excluded; then the median of ``--repeats`` timed calls. Prints a Markdown table: tokens/s
= batch x new tokens / seconds, and whether both produced the same tokens (exit status 1 when
they did not: the speed of a wrong generator is no result).

    python benchmarks/text_generation.py                  # configs' tiny LLM (vocab 1024, width 128, 2 layers)
    python benchmarks/text_generation.py --size small     # Qwen2.5-0.5B's shape, random weights
"""
import argparse
import os
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # noqa: E402
from seedream_jax import config_lib  # noqa: E402
from seedream_jax.data.tokenizer import PAD_ID  # noqa: E402
from seedream_jax.interop.qwen2 import causal_lm_abstract_params, export_causal_lm, load_causal_lm  # noqa: E402
from seedream_jax.models.causal_lm import CausalLMConfig  # noqa: E402
from seedream_jax.models.text_encoder import Qwen2Config  # noqa: E402
from seedream_jax.sampling.text_generation import generate  # noqa: E402

SIZES = ("tiny", "small")  # config_lib.MODEL_SIZES' LLMs: configs/tiny.py's, and Qwen2.5-0.5B's shape


def random_lm(size: str, tied: bool, seed: int):
    """(CausalLMConfig, random float32 NumPy parameters) of ``config_lib.MODEL_SIZES[size]``'s LLM:
    kernels N(0, 1/fan_in), the embedding N(0, 0.02^2), biases N(0, 0.02^2), norm scales 1 (drawn
    on the host: a jitted ``init`` of the 0.5B shape needs tens of GB on CPU)."""
    config = CausalLMConfig(Qwen2Config(**config_lib.MODEL_SIZES[size]["llm"]), tie_word_embeddings=tied)
    r = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        std = 1 / np.sqrt(leaf.shape[0]) if name == "kernel" else 0.02
        return (std * r.standard_normal(leaf.shape, np.float32)).astype(np.float32)

    return config, jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(causal_lm_abstract_params(config)))


def prompts(lengths, vocab: int, seed: int):
    """(right-padded ids [B, P] int32, lengths [B] int32, HF left-padded ids, HF mask) for random prompts."""
    import torch
    lengths = np.asarray(lengths, np.int32)
    width = int(lengths.max())
    r = np.random.default_rng(seed)
    right = np.full((len(lengths), width), PAD_ID, np.int32)
    left, mask = np.full_like(right, PAD_ID), np.zeros(right.shape, np.int64)
    for b, n in enumerate(lengths):
        row = r.integers(4, vocab, size=n)
        right[b, :n], left[b, width - n:], mask[b, width - n:] = row, row, 1
    return right, lengths, torch.from_numpy(left).long(), torch.from_numpy(mask)


def timed(fn, repeats: int):
    """(result of the last call, median seconds of ``repeats`` calls after one warm-up, warm-up seconds)."""
    t0 = time.perf_counter()
    out = fn()
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, bench_lib.median(times), warmup


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=SIZES)
    ap.add_argument("--prompt-lengths", default="5,9,13,16", help="comma-separated, one prompt per length")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per framework (median)")
    ap.add_argument("--untied", action="store_true", help="an untied LM head (default: tied, as Qwen2.5-0.5B)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                    help="PyTorch intra-op threads (on a loaded machine 1 can be faster than all cores)")
    args = ap.parse_args(argv)

    import torch
    from transformers import Qwen2ForCausalLM as HFQwen2ForCausalLM
    torch.set_num_threads(args.torch_threads)
    config, params = random_lm(args.size, not args.untied, args.seed)
    with tempfile.TemporaryDirectory() as folder:  # both frameworks read the one exported checkpoint
        export_causal_lm(params, config, folder)
        config, params = load_causal_lm(folder)
        hf = HFQwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    params = jax.device_put(params)
    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    ids, lens, hf_ids, hf_mask = prompts(lengths, config.llm.vocab_size, args.seed)
    new = args.new_tokens

    def ours():
        return np.asarray(generate(config, params, ids, lens, max_new_tokens=new, rng=jax.random.PRNGKey(0),
                                   stop_ids=()).tokens)

    @torch.no_grad()
    def theirs():
        out = hf.generate(input_ids=hf_ids, attention_mask=hf_mask, do_sample=False, max_new_tokens=new,
                          pad_token_id=PAD_ID, eos_token_id=None)
        return out[:, hf_ids.shape[1]:].numpy()

    our_tokens, our_s, compile_s = timed(ours, args.repeats)
    hf_tokens, hf_s, hf_first_s = timed(theirs, args.repeats)
    if hf_tokens.shape != our_tokens.shape:
        raise RuntimeError(f"HF generated {hf_tokens.shape[1]} new tokens per row, we {our_tokens.shape[1]}")
    total = len(lengths) * new
    row = {"size": args.size, "batch": len(lengths), "prompt lengths": args.prompt_lengths, "new tokens": new,
           "ours tok/s": total / our_s, "HF tok/s": total / hf_s, "ratio": hf_s / our_s,
           "tokens identical": bool(np.array_equal(our_tokens, hf_tokens))}
    print(f"{args.size} LLM ({'tied' if config.tie_word_embeddings else 'untied'} head, "
          f"{bench_lib.num_params(params) / 1e6:.1f}M parameters), fp32, {os.cpu_count()} CPUs, "
          f"{args.torch_threads} PyTorch thread(s); "
          f"ours: first call {compile_s:.2f} s (compile included), HF first call {hf_first_s:.2f} s; "
          f"median of {args.repeats} timed call(s)")
    bench_lib.print_table([row], "Greedy generation: compiled KV-cached JAX vs transformers generate")
    if not row["tokens identical"]:
        differing = int(np.sum(np.any(our_tokens != hf_tokens, axis=1)))
        print(f"FAIL: greedy tokens differ from transformers in {differing} of {len(lengths)} rows", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
