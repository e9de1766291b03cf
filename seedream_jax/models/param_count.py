"""Parameter counts per component of a model config, from abstract shapes (nothing allocated)."""
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.models.conditioner import Conditioner
from seedream_jax.models.mmdit import MMDiT
from seedream_jax.models.vae import AutoencoderKL


def _count(tree) -> int:
    import flax.linen as nn
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.meta.unbox(tree))))


def component_parameter_counts(conditioner_cfg, mmdit_cfg, vae_cfg, resolution: int) -> Dict[str, int]:
    """{component: parameter count} for the LLM, its adapter, ByT5, the conditioner's own layers
    (glyph mapper + projection), the MMDiT and the VAE."""
    rng = jax.random.PRNGKey(0)
    b = 1
    llm_len, g_len = 8, 8
    ids = jnp.zeros((b, llm_len), jnp.int32)
    mask = jnp.ones((b, llm_len), bool)
    counts = {}
    cond = jax.eval_shape(lambda: Conditioner(conditioner_cfg).init(
        rng, ids, mask, jnp.zeros((b, g_len), jnp.int32), jnp.ones((b, g_len), bool), jnp.ones((b,), bool)))["params"]
    te = cond["text_encoder"]
    counts["llm"] = _count(te["llm"])
    counts["llm_adapter"] = _count(te.get("adapter", {}))
    counts["byt5"] = _count(cond.get("byt5", {}))
    counts["conditioner_layers"] = _count({k: v for k, v in cond.items() if k not in ("text_encoder", "byt5")})
    f = vae_cfg.downsample_factor
    lat = jnp.zeros((b, resolution // f, resolution // f, mmdit_cfg.in_channels))
    ctx = jnp.zeros((b, llm_len + g_len, conditioner_cfg.context_dim))
    counts["mmdit"] = _count(jax.eval_shape(lambda: MMDiT(mmdit_cfg).init(
        rng, lat, jnp.zeros((b,)), ctx, jnp.ones((b, llm_len + g_len), bool),
        jnp.zeros((b, mmdit_cfg.pooled_dim))))["params"])
    counts["vae"] = _count(jax.eval_shape(lambda: AutoencoderKL(vae_cfg).init(
        rng, jnp.zeros((b, 8 * f, 8 * f, vae_cfg.in_channels))))["params"])
    counts["total"] = sum(counts.values())
    return counts
