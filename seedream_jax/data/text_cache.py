"""Text cache: the frozen conditioner's outputs for every caption of every record, in ArrayRecord.

What is cached: entry ``i`` holds, for every (language, caption type) that record ``i`` has, the
conditioner's outputs for that caption (``models/conditioner.py``, as ``TextToImage.encode``
computes them in the pretrain loss): ``context`` [K, L, D], ``mask`` bool [K, L] and ``pooled``
[K, D] for its K captions, with ``pairs`` [K] naming them ("en/short", ...), as ``np.savez``
bytes. ``L`` is the conditioner's token count (``llm_max_length + byt5_max_length``) and ``D``
its ``context_dim``. The empty prompt's outputs (the unconditional embedding a CFG-dropped
caption uses) are stored once, in ``unconditional.npz`` of the cache directory. Floats are
stored as ``float32``, ``float16`` or ``bfloat16`` (the ``dtype`` of the manifest summary);
``TextCache`` returns them in that dtype and the loss casts them to the compute dtype. Size per
record: K x (L x D + D) x bytes-per-float + K x L bytes of mask, plus ~0.8 KB of ``npz`` headers.

Caption sampling is unchanged: the pipeline draws (language, type, CFG drop) exactly as without
a cache (``captions.choose_caption_pairs``) and looks up the drawn pair. The outputs are only
valid while the text stack does not train, so training uses the cache only when every
conditioner parameter is frozen (``stages/record_data.py`` refuses otherwise).

The manifest ``summary`` records ``dataset`` (as the latent cache), ``dtype`` and ``text``: the
conditioner's source stage, checkpoint step and parameter CRC32, its config, and the tokenizer's
CRC32. ``TextCache.check_matches`` / ``check_text_stack`` raise ``latent_cache.CacheMismatchError``
naming what differs, so a stale cache is never trained on.

    python tools/cache_latents.py --dataset data/world --text_config configs/tiny.py --workdir runs/x
"""
import io
import os
from typing import Callable, List, Optional, Sequence, Tuple

import ml_dtypes
import numpy as np

from seedream_jax.data import arrayrecord_io, latent_cache, records as records_lib
from seedream_jax.data.latent_cache import CacheMismatchError

CACHE_KIND = "seedream-text-cache"
CACHE_VERSION = 1
UNCONDITIONAL = "unconditional.npz"
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}

# texts -> (context [B, L, D], mask bool [B, L], pooled [B, D])
EncodeFn = Callable[[List[str]], Tuple[np.ndarray, np.ndarray, np.ndarray]]


def default_text_cache_dir(dataset_path: str) -> str:
    """Where a dataset's text cache sits when the config names none: ``<dataset>-text``."""
    return os.path.normpath(dataset_path).rstrip(os.sep) + "-text"


def _store(x: np.ndarray, dtype: str) -> np.ndarray:
    """Float array in the cache's dtype; bfloat16 is kept as its uint16 bits (``npz`` has no bf16)."""
    x = np.asarray(x, np.float32).astype(DTYPES[dtype])
    return x.view(np.uint16) if dtype == "bfloat16" else x


def _load(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.view(ml_dtypes.bfloat16) if dtype == "bfloat16" else x


def _pack(pairs: Sequence[str], context, mask, pooled, dtype: str) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, pairs=np.asarray(pairs, dtype=str), context=_store(context, dtype),
             mask=np.asarray(mask, bool), pooled=_store(pooled, dtype))
    return buf.getvalue()


def _record_captions(data: bytes) -> List[Tuple[str, str]]:
    """(pair name "lang/type", text) of every non-empty caption of an encoded record, sorted."""
    caps = records_lib.decode_header(data)["captions"]
    return [(f"{lang}/{kind}", text) for lang in sorted(caps) for kind, text in sorted(caps[lang].items()) if text]


def write_text_cache(source, out_dir: str, encode: EncodeFn, text_identity: dict, dtype: str = "float16",
                     chunk: int = 64, records_per_shard: int = 4096) -> dict:
    """Encodes every caption of every record of ``source`` and writes the text cache to ``out_dir``.

    encode: ``EncodeFn``; it is called with exactly ``chunk`` texts each time (the last group is
      padded with empty prompts), so a jitted encoder compiles once.
    text_identity: JSON dict identifying the conditioner weights, config and tokenizer
      (``record_data.text_identity``). dtype: "float32", "float16" or "bfloat16".
    An interrupted write resumes (finished shards are kept). Returns the manifest.
    """
    if dtype not in DTYPES:
        raise ValueError(f"text cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    identity = {"kind": CACHE_KIND, "version": CACHE_VERSION, "dtype": dtype,
                "dataset": latent_cache.dataset_identity(source), "text": text_identity}
    writer = arrayrecord_io.ShardedWriter(out_dir, records_per_shard, config=identity, prefix="text")
    if writer.complete:
        return writer.close()

    def run(texts: List[str]):
        outs = [encode(texts[s:s + chunk] + [""] * (chunk - len(texts[s:s + chunk])))
                for s in range(0, len(texts), chunk)]
        return [np.concatenate([o[j] for o in outs])[:len(texts)] for j in range(3)]

    context, mask, pooled = run([""])
    np.savez(os.path.join(out_dir, UNCONDITIONAL), context=_store(context[0], dtype), mask=mask[0],
             pooled=_store(pooled[0], dtype))
    for start in range(writer.records_done, len(source), chunk):
        per_record = [_record_captions(source[i]) for i in range(start, min(start + chunk, len(source)))]
        context, mask, pooled = run([text for caps in per_record for _, text in caps])
        at = 0
        for caps in per_record:
            rows = slice(at, at + len(caps))
            writer.write(_pack([name for name, _ in caps], context[rows], mask[rows], pooled[rows], dtype))
            at += len(caps)
    return writer.close(identity)


class TextCache:
    """Reads a text cache: ``conditioning(i, pair)`` -> (context [L, D], mask [L], pooled [D])."""

    def __init__(self, path: str):
        self.path = path
        self.source, self.identity = latent_cache.open_cache(path, CACHE_KIND, "text cache")
        self.dtype = self.identity["dtype"]
        with np.load(os.path.join(path, UNCONDITIONAL)) as z:
            self.unconditional = (_load(z["context"], self.dtype), z["mask"], _load(z["pooled"], self.dtype))

    def check_matches(self, source) -> None:
        """Raises ``CacheMismatchError`` unless the cache was built from the dataset ``source``."""
        latent_cache.check_dataset(self.identity, source, self.path, "text cache")

    def check_text_stack(self, text_identity: dict) -> None:
        """Raises ``CacheMismatchError`` unless the cache was encoded by the text stack ``text_identity``."""
        if self.identity["text"] != text_identity:
            differ = sorted(k for k in set(text_identity) | set(self.identity["text"])
                            if text_identity.get(k) != self.identity["text"].get(k))
            raise CacheMismatchError(f"text cache {self.path} was encoded by another text stack (differs in "
                                     f"{differ}): cache {self.identity['text']}, training {text_identity}; "
                                     "rebuild it with tools/cache_latents.py")

    def conditioning(self, index: int, pair: Optional[Tuple[str, str]]) -> Tuple[np.ndarray, ...]:
        """The cached (context [L, D], mask bool [L], pooled [D]) of record ``index``'s caption ``pair``
        (language, type); ``pair`` None (CFG drop) gives the unconditional embedding."""
        if pair is None:
            return self.unconditional
        name = f"{pair[0]}/{pair[1]}"
        with np.load(io.BytesIO(self.source[int(index)])) as z:
            names = [str(p) for p in z["pairs"]]
            if name not in names:
                raise CacheMismatchError(f"text cache {self.path}: entry {index} has captions {names}, not {name!r}")
            k = names.index(name)
            return _load(z["context"][k], self.dtype), z["mask"][k], _load(z["pooled"][k], self.dtype)

