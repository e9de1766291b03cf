"""Rewards inside a compiled training step: the reward API's scorers split into host and traced parts.

The reward API (``rewards.score(name, images, prompts)``) takes prompts as strings, which a jitted
step cannot see. ``graph_reward(name)`` splits a registered reward into
  ``prepare(prompts) -> {key: np.ndarray [B, ...]}``  host work, done when the batch is made
                                                       (tokenising, the glyph boxes, prompt ids);
  ``score(images, prepared) -> [B]``                   traced inside the step; images float32
                                                       [B, H, W, 3] in [-1, 1].
The learned scorers (``alignment``, ``aesthetic``, ``text_rendering``: ``AlignmentScorer``,
``AestheticScorer``, ``TextRenderingScorer``) and any reward object with ``prepare`` and
``score_prepared`` methods (e.g. ``PixelReward``) run in the graph and are differentiable with
respect to the pixels. Every other reward (the closed-world ``objective``, a user's NumPy
function) runs on the host through ``jax.pure_callback``: values only, for policy-gradient methods
(GRPO), never differentiated. Its prompts travel in the batch as UTF-8 bytes (``encode_prompts``,
uint8 [B, ``PROMPT_BYTES``]), so any process can read any row; under a mesh (``jax.set_mesh``) the
callback runs per device through ``jax.shard_map`` over the batch axes, each process scoring the
rows its own devices hold (multi-host safe: no process needs another's images or prompts).

``prepare_all`` / ``score_all`` do this for a weighted set of rewards, batch keys
``reward_in/<name>/<key>``.
"""
import dataclasses
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from seedream_jax import rewards as rewards_api
from seedream_jax.parallel import mesh as mesh_lib

PREFIX = "reward_in/"  # batch keys of the prepared reward inputs
PROMPT_BYTES = 2048  # UTF-8 bytes of each prompt a host-callback reward receives (zero-padded)


@dataclasses.dataclass(frozen=True)
class GraphReward:
    """A reward usable inside a jitted step (see the module docstring). ``differentiable``: whether
    ``score`` has a gradient with respect to the pixels (False for host callbacks)."""
    name: str
    differentiable: bool
    prepare: Callable[[Sequence[str]], Dict[str, np.ndarray]]
    score: Callable[[jax.Array, Mapping[str, jax.Array]], jax.Array]


class PixelReward:
    """A reward of the pixels alone (prompts ignored) from a traced ``fn(images [B, H, W, 3] float in
    [-1, 1]) -> [B]``; registered with ``rewards.register(name, PixelReward(fn), differentiable=True)``
    it runs in the graph (and ``rewards.score`` works on it too)."""

    def __init__(self, fn: Callable[[jax.Array], jax.Array]):
        self.fn = fn

    def prepare(self, prompts: Sequence[str]) -> Dict[str, np.ndarray]:
        return {}

    def score_prepared(self, images, prepared) -> jax.Array:
        return self.fn(images.astype(jnp.float32))

    def __call__(self, images, prompts=None) -> jax.Array:
        images = jnp.asarray(images)
        return self.fn(images.astype(jnp.float32) / 127.5 - 1.0 if images.dtype == jnp.uint8 else images)


def encode_prompts(prompts: Sequence[str], width: int = PROMPT_BYTES) -> np.ndarray:
    """uint8 [B, width]: each prompt's UTF-8 bytes, zero-padded; a longer prompt (or one holding a
    NUL character) raises ValueError."""
    out = np.zeros((len(prompts), width), np.uint8)
    for i, p in enumerate(prompts):
        data = p.encode("utf-8")
        nul = b"\0" in data
        if len(data) > width or nul:
            raise ValueError(f"prompt {i} ({len(data)} UTF-8 bytes{', with a NUL' if nul else ''}) does not fit "
                             f"a host reward's {width}-byte prompt field: {p[:60]!r}")
        out[i, :len(data)] = np.frombuffer(data, np.uint8)
    return out


def decode_prompts(encoded) -> List[str]:
    """The prompts of ``encode_prompts``'s [B, width] array."""
    return [bytes(row).rstrip(b"\0").decode("utf-8") for row in np.asarray(encoded, np.uint8)]


def _per_device(fn: Callable) -> Callable:
    """``fn(images, prompt_bytes) -> [B]`` run on each device's rows of the current mesh's batch axes
    (``jax.shard_map``), or as is without a mesh. The devices of one 'tensor' group hold the same
    rows, and each of them scores them (the same values)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn
    spec = PartitionSpec(tuple(a for a in mesh_lib.BATCH_AXES if a in mesh.axis_names))
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False)


def _scorer_parts(fn):
    """(prepare, score) of a learned scorer or of an object with ``prepare``/``score_prepared``, else None."""
    from seedream_jax.rewards.aesthetic import AestheticScorer
    from seedream_jax.rewards.alignment import AlignmentScorer
    from seedream_jax.rewards.glyph import TextRenderingScorer

    if isinstance(fn, AlignmentScorer):
        def prepare(prompts):
            ids, mask = fn.tokenize(prompts)
            return {"ids": np.asarray(ids, np.int32), "mask": np.asarray(mask, bool)}
        return prepare, lambda images, p: fn.score_fn(fn.params, images, p["ids"], p["mask"])
    if isinstance(fn, AestheticScorer):
        return (lambda prompts: {}), (lambda images, p: fn.score_fn(fn.params, images))
    if isinstance(fn, TextRenderingScorer):
        keys = ("ids", "mask", "spans", "boxes", "valid", "has_text")

        def prepare(prompts):
            return dict(zip(keys, (np.asarray(a) for a in fn.inputs(list(prompts)))))

        def score(images, p):
            s = fn.score_fn(fn.params, images, p["ids"], p["mask"], p["spans"], p["boxes"], p["valid"])
            return jnp.where(p["has_text"], s, 0.0)
        return prepare, score
    if callable(getattr(fn, "prepare", None)) and callable(getattr(fn, "score_prepared", None)):
        return fn.prepare, fn.score_prepared
    return None


def graph_reward(name: str) -> GraphReward:
    """The registered reward ``name`` (``rewards.get``) in its in-graph form, or as a host callback
    (per device under a mesh) when it has none."""
    reward = rewards_api.get(name)
    parts = _scorer_parts(reward.fn)
    if parts is not None:
        prepare, score = parts
        return GraphReward(name, reward.differentiable, prepare, lambda images, p: score(images, p).astype(jnp.float32))

    def host(images, prompt_bytes):
        out = np.asarray(reward.fn(np.asarray(images), decode_prompts(prompt_bytes)), np.float32)
        if out.shape != (len(images),):
            raise ValueError(f"reward {name!r} returned shape {out.shape} for {len(images)} images")
        return out

    def callback(images, prompt_bytes):
        return jax.pure_callback(host, jax.ShapeDtypeStruct((images.shape[0],), jnp.float32), images, prompt_bytes)

    def score(images, p):
        images = jax.lax.stop_gradient(images.astype(jnp.float32))
        return _per_device(callback)(images, p["prompt_bytes"])

    return GraphReward(name, False, lambda prompts: {"prompt_bytes": encode_prompts(prompts)}, score)


def prepare_all(graph_rewards: Sequence[GraphReward], prompts: Sequence[str]) -> Dict[str, np.ndarray]:
    """Host inputs of every reward for ``prompts``: {'reward_in/<name>/<key>': array [B, ...]}."""
    return {f"{PREFIX}{r.name}/{k}": v for r in graph_rewards for k, v in r.prepare(list(prompts)).items()}


def score_all(graph_rewards: Sequence[GraphReward], weights: Mapping[str, float], images,
              batch: Mapping[str, jax.Array]) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """(sum_n weights[n] * reward_n [B], {name: reward_n [B]}) of ``images`` [B, H, W, 3] in [-1, 1],
    with the prepared inputs read from ``batch`` (``prepare_all``'s keys)."""
    per = {}
    for r in graph_rewards:
        prefix = f"{PREFIX}{r.name}/"
        per[r.name] = r.score(images, {k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)})
    total = sum(float(weights[n]) * v for n, v in per.items())
    return total, per
