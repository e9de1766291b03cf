"""Run an exported Seedream-JAX pipeline in plain PyTorch.

This file depends only on numpy, torch, safetensors, transformers and diffusers (plus
sentencepiece for a SentencePiece tokenizer), never on JAX or seedream_jax: a whole-pipeline
export (``seedream_jax.interop.pipeline.export_pipeline``) writes a copy of it as
``seedream_torch.py`` next to the weights, so that a PyTorch user can do

    from seedream_torch import SeedreamPipeline
    pipe = SeedreamPipeline.from_pretrained("exported_folder")
    images = pipe(["a red circle", '招牌上写着“你好”'], height=512, width=512)  # uint8 [B, H, W, 3]

Components (each loaded with ``from_pretrained(..., use_safetensors=True)``: no pickle is read;
strictly: a folder whose files miss a key, add one or change a shape is refused with a
``StrictLoadError`` naming the keys, never loaded with random-initialised or dropped weights):

    text_encoder/  transformers Qwen2Model (or Qwen2ForCausalLM, whose ``.model`` is used)
    byt5/          transformers T5EncoderModel
    conditioner/   ConditionerLayers below (glyph mapper, LLM adapter, context projection)
    transformer/   diffusers FluxTransformer2DModel (2x2-packed latents, true CFG, no guidance embedding)
    vae/           diffusers AutoencoderKL (its config holds the latent scaling/shift)
    tokenizer/     the LLM tokenizer (SentencePiece model or HF tokenizer files)

An export with a refiner (``seedream_pipeline.json`` has a ``refiner`` entry) also has

    refiner/       diffusers FluxTransformer2DModel whose in_channels hold the noisy latent and the
                   conditioning latent (the upsampled base image, VAE-encoded): ``SeedreamPipeline.refine``

and ``pipe(prompts, refine=True)`` runs the cascade base -> uint8 -> refiner.

A model trained with the style adapter (``seedream_pipeline.json`` has a ``style_adapter``
entry) also has ``transformer/seedream_style_adapter.safetensors``: ``StyleAdapter`` below, applied
by ``flux_velocity`` through forward hooks on each double block's ``attn.to_v``; the pipeline then
takes style tags and negative-tag guidance (``SeedreamPipeline.__call__``).

The helpers for text inputs, position ids and the time grid mirror, in NumPy, the JAX code
they name (``models/conditioner.py``, ``models/byt5.py``, ``models/rope.py``,
``sampling/schedules.py``); ``tests/test_export_pipeline.py`` checks that they agree.
"""
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PIPELINE_FILE = "seedream_pipeline.json"
STYLE_FILE = "seedream_style_adapter.safetensors"  # in the transformer folder (interop/flux.py)

# ----------------------------------------------------------------------------- text inputs
# Mirror of models/conditioner.py: the quoted spans of a prompt are the text to render.
QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "\u300c": "\u300d", "\u300e": "\u300f", "'": "'"}
_QUOTED = re.compile("|".join(
    f"{re.escape(o)}([^{re.escape(c)}]+?){re.escape(c)}" for o, c in QUOTE_PAIRS.items()))
_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")  # don't, it's: not quotes


def extract_quoted_text(prompt: str) -> List[str]:
    """The spans inside "..", “..”, 「..」, 『..』 or '..', in order."""
    cleaned = _APOSTROPHE.sub("\u0000", prompt)
    spans = [next(g for g in m.groups() if g is not None).replace("\u0000", "'").strip()
             for m in _QUOTED.finditer(cleaned)]
    return [s for s in spans if s]


def glyph_text(prompt: str) -> str:
    """The string fed to ByT5: the quoted spans joined by a space ('' if none)."""
    return " ".join(extract_quoted_text(prompt))


def byt5_tokenize(texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes + 3, then EOS (1), truncated keeping the EOS, right-padded with 0:
    (ids int32 [B, max_length], mask bool [B, max_length]). Special-token markup stays literal bytes."""
    ids = np.zeros((len(texts), max_length), np.int32)
    mask = np.zeros((len(texts), max_length), bool)
    for i, text in enumerate(texts):
        seq = [b + 3 for b in text.encode("utf-8")[: max_length - 1]] + [1]
        ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = True
    return ids, mask


class LLMTokenizer:
    """``tok(texts, max_length) -> (ids int32 [B, L], mask bool [B, L])``: no BOS/EOS, truncated,
    right-padded with the pad id. ``spec`` is the ``tokenizer`` entry of seedream_pipeline.json."""

    def __init__(self, folder: str, spec: dict):
        path = os.path.join(folder, spec["path"])
        if spec["kind"] == "sentencepiece":
            import sentencepiece as spm
            sp = spm.SentencePieceProcessor(model_file=path)
            self._encode, self.pad_id = (lambda texts: sp.encode(list(texts))), sp.pad_id()
        elif spec["kind"] == "hf":
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)  # never trusts remote code
            self._encode = lambda texts: tok(list(texts), add_special_tokens=False)["input_ids"]
            self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        else:
            raise ValueError(f"unknown tokenizer kind {spec['kind']!r} in {PIPELINE_FILE}")

    def __call__(self, texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_length), bool)
        for i, seq in enumerate(self._encode(texts) if len(texts) else []):
            seq = seq[:max_length]
            ids[i, :len(seq)] = seq
            mask[i, :len(seq)] = True
        return ids, mask


def text_inputs(prompts: Sequence[str], tokenizer, config: dict) -> Dict[str, np.ndarray]:
    """Prompts -> llm_ids/llm_mask [B, llm_max_length] and, with a glyph branch, byt5_ids/byt5_mask
    [B, byt5_max_length] and has_glyphs [B]. ``config``: the conditioner's config.json. The empty
    prompt gets an all-False mask (the unconditional embedding)."""
    ids, mask = tokenizer(list(prompts), config["llm_max_length"])
    empty = np.array([not p.strip() for p in prompts])
    out = {"llm_ids": ids, "llm_mask": mask & ~empty[:, None]}
    if config["byt5_d_model"] is not None:
        texts = [glyph_text(p) for p in prompts]
        b_ids, b_mask = byt5_tokenize(texts, config["byt5_max_length"])
        out.update(byt5_ids=b_ids, byt5_mask=b_mask, has_glyphs=np.array([bool(t) for t in texts]))
    return out


# ----------------------------------------------------------------------------- positions and time grid
# Mirror of models/rope.py: image ids centred on the image, the central base_grid window keeps
# the base ids ('scaled'), text on the diagonal beyond the image ('diagonal').

def _scale_offsets(d: np.ndarray, grid: int, base_grid: int, rule: str) -> np.ndarray:
    if rule == "centered":
        return d
    if rule == "scaled":
        half = base_grid / 2.0
        excess = np.maximum(np.abs(d) - half, 0.0)
        return np.sign(d) * (np.minimum(np.abs(d), half) + excess * min(1.0, base_grid / grid))
    if rule == "interpolate":
        return d * base_grid / grid
    raise ValueError(f"unknown RoPE rule {rule!r}")


def image_position_ids(grid_h: int, grid_w: int, rule: str, base_grid: int) -> np.ndarray:
    """[grid_h * grid_w, 3] float32 (0, row id, column id), patches in row-major order."""
    rows = _scale_offsets(np.arange(grid_h, dtype=np.float64) + 0.5 - grid_h / 2.0, grid_h, base_grid, rule)
    cols = _scale_offsets(np.arange(grid_w, dtype=np.float64) + 0.5 - grid_w / 2.0, grid_w, base_grid, rule)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([np.zeros_like(r), r, c], axis=-1).reshape(-1, 3).astype(np.float32)


def sincos_position_embedding(img_ids: np.ndarray, dim: int, max_period: float = 10000.0) -> np.ndarray:
    """[N, 3] image ids -> [N, dim] float32 [sin(r w), cos(r w), sin(c w), cos(c w)] with
    w_k = max_period ** (-k / (dim / 4)): added to the image tokens after ``x_embedder`` in models
    exported with ``image_pos_embed = 'sincos'`` (mirror of ``models/rope.sincos_position_embedding``)."""
    n = dim // 4
    omega = (max_period ** (-np.arange(n, dtype=np.float64) / n)).astype(np.float32)
    parts = []
    for axis in (1, 2):
        angles = img_ids[:, axis:axis + 1].astype(np.float32) * omega
        parts += [np.sin(angles), np.cos(angles)]
    return np.concatenate(parts, axis=-1).astype(np.float32)


def text_position_ids(num_tokens: int, grid_h: int, grid_w: int, scheme: str, rule: str, base_grid: int):
    """[num_tokens, 3] float32: 'diagonal' (0, m + k, m + k) with m = 1 + max |image id|, or 'zeros'."""
    if scheme == "zeros":
        return np.zeros((num_tokens, 3), np.float32)
    m = 1.0 + float(np.abs(image_position_ids(grid_h, grid_w, rule, base_grid)[:, 1:]).max())
    k = m + np.arange(num_tokens, dtype=np.float64)
    return np.stack([np.zeros_like(k), k, k], axis=-1).astype(np.float32)


# Mirror of sampling/schedules.py: x_t = (1 - t) x0 + t eps, v = eps - x0, t = 1 is noise.

def resolution_shift(num_image_tokens: int, base_tokens: int, max_tokens: int, base_shift: float,
                     max_shift: float) -> float:
    """mu, linear in the number of image tokens."""
    return base_shift + (max_shift - base_shift) / (max_tokens - base_tokens) * (num_image_tokens - base_tokens)


def sampling_times(num_steps: int, mu: float) -> torch.Tensor:
    """[num_steps + 1] float32 times from 1 to 0: a uniform grid shifted by exp(mu) / (exp(mu) + 1/t - 1)."""
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)
    e = torch.exp(torch.tensor(mu, dtype=torch.float32))
    shifted = e / (e + (1.0 / t.clamp(1e-12, 1.0) - 1.0))
    return torch.where(t <= 0.0, torch.zeros_like(t), shifted)


def pack_latents(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """NHWC latents [B, h, w, C] -> Flux tokens [B, (h/p)(w/p), C p^2], features ordered (c, ph, pw)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 5, 2, 4).reshape(b, (h // p) * (w // p), c * p * p)


def unpack_latents(x: torch.Tensor, h: int, w: int, p: int = 2) -> torch.Tensor:
    """Inverse of ``pack_latents``: [B, N, C p^2] -> NHWC [B, h, w, C]."""
    b, _, f = x.shape
    c = f // (p * p)
    return x.reshape(b, h // p, w // p, c, p, p).permute(0, 1, 4, 2, 5, 3).reshape(b, h, w, c)


# ----------------------------------------------------------------------------- strict loading

class StrictLoadError(ValueError):
    """A component's weight files do not match its model: missing, unexpected or mis-shaped keys."""


def check_keys(component: str, folder: str, model_name: str, missing=(), unexpected=(), mismatched=()) -> None:
    """Raises ``StrictLoadError`` naming every missing / unexpected key and every mis-shaped one
    (``mismatched``: (key, shape in the files, shape in the model)); returns if all three are empty."""
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {sorted(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {sorted(unexpected)}")
    if mismatched:
        parts.append(f"mis-shaped keys ({len(mismatched)}): " + ", ".join(
            f"{k}: files {tuple(a)} vs model {tuple(b)}" for k, a, b in sorted(mismatched, key=lambda m: m[0])))
    if parts:
        raise StrictLoadError(f"{component} ({folder}) does not match {model_name}: {'; '.join(parts)}. Refusing "
                              f"to load it (those weights would be random-initialised or dropped)")


def load_tensors_strict(model: nn.Module, path: str, component: str, skip: Tuple[str, ...] = ()) -> nn.Module:
    """Load the safetensors file ``path`` into ``model`` (a ``torch.nn.Module``): raises
    ``StrictLoadError`` unless it holds exactly the model's state-dict keys and shapes, apart from
    those starting with a ``skip`` prefix (submodules loaded on their own, e.g. an HF text tower)."""
    from safetensors.torch import load_file
    tensors = load_file(path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(skip)}
    check_keys(component, os.path.dirname(path), type(model).__name__, expected.keys() - tensors.keys(),
               tensors.keys() - expected.keys(),
               [(k, tuple(tensors[k].shape), expected[k]) for k in expected.keys() & tensors.keys()
                if tuple(tensors[k].shape) != expected[k]])
    model.load_state_dict(tensors, strict=not skip)
    return model


def hf_dtype_kwargs(torch_dtype) -> dict:
    """The ``from_pretrained`` keyword for a dtype: 'dtype' from transformers 5 on, 'torch_dtype' before."""
    import transformers
    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch_dtype}


def load_strict(cls, folder: str, component: str, **kwargs):
    """``cls.from_pretrained(folder, **kwargs)`` (a transformers / diffusers model class) that raises
    ``StrictLoadError`` unless the files hold exactly the model's keys with the model's shapes."""
    model, info = cls.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    check_keys(component, folder, cls.__name__, info.get("missing_keys") or (), info.get("unexpected_keys") or (),
               [tuple(m) for m in info.get("mismatched_keys") or ()])
    return model


# ----------------------------------------------------------------------------- conditioner layers

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) in float32, cast back, times ``weight``."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class AdapterBlock(nn.Module):
    """Pre-norm residual block: optional bidirectional self-attention, then a tanh-GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, use_attention: bool, eps: float):
        super().__init__()
        self.heads, self.use_attention = heads, use_attention
        if use_attention:
            self.attn_norm = RMSNorm(width, eps)
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width) for _ in range(4))
        self.mlp_norm = RMSNorm(width, eps)
        self.fc1, self.fc2 = nn.Linear(width, int(width * mlp_ratio)), nn.Linear(int(width * mlp_ratio), width)

    def forward(self, x, attn_mask):
        """x [B, L, W]; attn_mask [B, 1, L, L] bool (True = may attend)."""
        if self.use_attention:
            b, n, w = x.shape
            h = self.attn_norm(x)
            q, k, v = (p(h).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            x = x + self.o_proj(a.transpose(1, 2).reshape(b, n, w))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_norm(x)), approximate="tanh"))


class Adapter(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        block = lambda: AdapterBlock(cfg["llm_hidden_size"], cfg["adapter_heads"], cfg["adapter_mlp_ratio"],
                                     cfg["adapter"] == "transformer", cfg["adapter_norm_eps"])
        self.layers = nn.ModuleList(block() for _ in range(cfg["adapter_layers"]))

    def forward(self, x, mask):
        n = mask.shape[1]
        attn_mask = (mask[:, None, None, :] | torch.eye(n, dtype=torch.bool, device=mask.device))
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


class GlyphMapper(nn.Module):
    """LayerNorm, Linear, GELU, Linear, GELU, Linear (exact GELU): ByT5 width -> LLM width."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, hid, w = cfg["byt5_d_model"], cfg["glyph_mapper_hidden"], cfg["llm_hidden_size"]
        self.norm = nn.LayerNorm(d, eps=cfg["glyph_mapper_norm_eps"])
        self.linear_1, self.linear_2, self.linear_3 = nn.Linear(d, hid), nn.Linear(hid, hid), nn.Linear(hid, w)

    def forward(self, x):
        x = F.gelu(self.linear_1(self.norm(x)))
        return self.linear_3(F.gelu(self.linear_2(x)))


class ConditionerLayers(nn.Module):
    """The conditioner's own layers; keys and config documented in seedream_jax/interop/conditioner_layers.py."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        if config["adapter"] != "none":
            self.adapter = Adapter(config)
        if config["byt5_d_model"] is not None:
            self.glyph_mapper = GlyphMapper(config)
        self.context_proj = nn.Linear(config["llm_hidden_size"], config["context_dim"])

    @classmethod
    def from_pretrained(cls, folder: str) -> "ConditionerLayers":
        """Strict load of ``folder/conditioner.safetensors``: missing, unexpected or mis-shaped keys
        raise ``StrictLoadError`` naming them."""
        with open(os.path.join(folder, "config.json")) as f:
            model = cls(json.load(f))
        return load_tensors_strict(model, os.path.join(folder, "conditioner.safetensors"), "conditioner").eval()

    def forward(self, llm_hidden, llm_mask, glyph_hidden=None, glyph_mask=None):
        """llm_hidden [B, L, W] (the LLM's selected hidden states), llm_mask [B, L]; glyph_hidden
        [B, G, Db] (ByT5 last_hidden_state), glyph_mask [B, G] (ByT5 mask & has_glyphs)
        -> (context [B, L+G, C], mask [B, L+G] bool, pooled [B, C] masked mean)."""
        mask = llm_mask.bool()
        # Padded positions never reach real ones; zeroing them first also drops the NaNs an
        # LLM may return for a fully masked (empty) prompt.
        x = torch.where(mask[..., None], llm_hidden, torch.zeros((), dtype=llm_hidden.dtype))
        if hasattr(self, "adapter"):
            x = torch.where(mask[..., None], self.adapter(x, mask), torch.zeros((), dtype=x.dtype))
        if hasattr(self, "glyph_mapper"):
            x = torch.cat([x, self.glyph_mapper(glyph_hidden).to(x.dtype)], dim=1)
            mask = torch.cat([mask, glyph_mask.bool()], dim=1)
        context = torch.where(mask[..., None], self.context_proj(x), torch.zeros((), dtype=x.dtype))
        w = mask.float()[..., None]
        pooled = (context.float() * w).sum(1) / w.sum(1).clamp(min=1.0)
        return context, mask, pooled.to(context.dtype)


# ----------------------------------------------------------------------------- style adapter
# Mirror of models/style_adapter.py (the VMix-style value mixing of the MMDiT's double blocks).

class StyleAdapter(nn.Module):
    """Style tags [B, A] int (0 = attribute absent, k = value k-1) -> per double block i the value
    offset delta_i [B, D] that ``flux_velocity`` adds to ``transformer_blocks[i].attn.to_v``'s output:

        e       = mlp_out(silu(mlp_in(sum_a tag_embedding[a](tags[:, a]))))
        delta_i = style_value[i](e)

    Keys of ``seedream_style_adapter.safetensors`` are this module's state dict."""

    def __init__(self, tag_sizes: Sequence[int], dim: int, hidden_size: int, num_double_blocks: int):
        super().__init__()
        self.tag_sizes = tuple(int(n) for n in tag_sizes)
        self.tag_embedding = nn.ModuleList(nn.Embedding(n + 1, dim) for n in self.tag_sizes)
        self.mlp_in, self.mlp_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.style_value = nn.ModuleList(nn.Linear(dim, hidden_size) for _ in range(num_double_blocks))

    @classmethod
    def from_file(cls, path: str) -> "StyleAdapter":
        """Strict load; the tag sizes, width and block count come from the tensors' shapes."""
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            shape = lambda k: tuple(f.get_slice(k).get_shape())
            n_attr = sum(1 for k in keys if re.fullmatch(r"tag_embedding\.\d+\.weight", k))
            n_blocks = sum(1 for k in keys if re.fullmatch(r"style_value\.\d+\.weight", k))
            if not n_attr or not n_blocks:
                raise StrictLoadError(f"{path}: not a style-adapter file (no tag_embedding.<a>.weight or "
                                      "style_value.<i>.weight tensors)")
            sizes = [shape(f"tag_embedding.{a}.weight")[0] - 1 for a in range(n_attr)]
            hidden, dim = shape("style_value.0.weight")
        return load_tensors_strict(cls(sizes, dim, hidden, n_blocks), path, "style_adapter").eval()

    def forward(self, tags: torch.Tensor) -> List[torch.Tensor]:
        tags = tags.long()
        if tags.ndim != 2 or tags.shape[1] != len(self.tag_sizes):
            raise ValueError(f"style tags must be [batch, {len(self.tag_sizes)}] (tag sizes {self.tag_sizes}), "
                             f"got {tuple(tags.shape)}")
        for a, n in enumerate(self.tag_sizes):
            if bool(((tags[:, a] < 0) | (tags[:, a] > n)).any()):
                raise ValueError(f"style tag attribute {a} takes ids 0 (absent) .. {n}, got {tags[:, a].tolist()}")
        h = sum(emb(tags[:, a]) for a, emb in enumerate(self.tag_embedding))
        e = self.mlp_out(F.silu(self.mlp_in(h)))
        return [lin(e) for lin in self.style_value]


def style_value_hooks(transformer, deltas: Sequence[torch.Tensor]) -> list:
    """Register forward hooks adding deltas[i] [B, D] to every image token's value in double block i
    (``transformer_blocks[i].attn.to_v``, which diffusers' FluxAttnProcessor applies to the image
    tokens only); returns the handles (``.remove()`` them)."""
    blocks = transformer.transformer_blocks
    if len(blocks) != len(deltas):
        raise ValueError(f"style adapter has {len(deltas)} double blocks, the transformer {len(blocks)}")
    handles = []
    for block, delta in zip(blocks, deltas):
        if getattr(block.attn, "fused_projections", False):
            raise ValueError("the style adapter hooks attn.to_v; unfuse the QKV projections first")
        handles.append(block.attn.to_v.register_forward_hook(
            lambda module, inputs, out, d=delta: out + d[:, None, :].to(device=out.device, dtype=out.dtype)))
    return handles


# ----------------------------------------------------------------------------- the pipeline

@torch.no_grad()
def flux_velocity(transformer, packed, t, context, mask, pooled, img_ids, txt_ids, image_pos_embed=None,
                  style_tags=None, style_adapter: Optional[StyleAdapter] = None, cond_packed=None):
    """A diffusers ``FluxTransformer2DModel``'s velocity [B, N, 4C] for packed latents [B, N, 4C]
    at times t [B] in [0, 1], text tokens context [B, T, C] with mask [B, T] (padded text tokens
    are masked out of the joint attention), pooled [B, C], img_ids [N, 3], txt_ids [T, 3].
    ``cond_packed`` [B, N, 4Cc] (a refiner's packed conditioning latents, Flux Fill's convention)
    is concatenated to ``packed`` on the feature axis; the velocity keeps 4C features.
    ``image_pos_embed`` [N, D] (``sincos_position_embedding``), when given, is added to the image
    tokens right after ``x_embedder`` (a forward hook; diffusers' Flux has no such term).
    ``style_adapter`` (``StyleAdapter``) with ``style_tags`` [B, A] int (None = all absent) adds the
    style adapter's value offsets in every double block (forward hooks on ``attn.to_v``)."""
    b, n = packed.shape[:2]
    key_mask = torch.cat([mask.bool(), torch.ones((b, n), dtype=torch.bool, device=mask.device)], dim=1)
    if style_tags is not None and style_adapter is None:
        raise ValueError("style_tags given without a style_adapter (this export has no style adapter)")
    hooks = []
    try:
        if image_pos_embed is not None:
            hooks.append(transformer.x_embedder.register_forward_hook(
                lambda module, inputs, out: out + image_pos_embed.to(device=out.device, dtype=out.dtype)))
        if style_adapter is not None:
            if style_tags is None:
                style_tags = torch.zeros((b, len(style_adapter.tag_sizes)), dtype=torch.long)
            dev = next(style_adapter.parameters()).device
            hooks += style_value_hooks(transformer, style_adapter(torch.as_tensor(style_tags).to(dev)))
        if cond_packed is not None:
            packed = torch.cat([packed, cond_packed.to(device=packed.device, dtype=packed.dtype)], dim=-1)
        return transformer(hidden_states=packed, encoder_hidden_states=context, pooled_projections=pooled,
                           timestep=t, img_ids=img_ids, txt_ids=txt_ids, return_dict=False,
                           joint_attention_kwargs={"attention_mask": key_mask[:, None, None, :]})[0]
    finally:
        for hook in hooks:
            hook.remove()


# ----------------------------------------------------------------------------- the refiner's conditioning
# Mirror of data/sr_pairs.upsample and sampling/generate.Refiner.condition.

def upsample_images(images: torch.Tensor, scale: int) -> torch.Tensor:
    """float images NHWC [B, h, w, 3] in [-1, 1] -> [B, scale h, scale w, 3]: bicubic
    (``F.interpolate``, align_corners=False), clipped to [-1, 1]."""
    h, w = images.shape[1:3]
    up = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(scale * h, scale * w), mode="bicubic",
                       align_corners=False)
    return up.clamp(-1.0, 1.0).permute(0, 2, 3, 1)


class SeedreamPipeline:
    """Text-to-image with the exported components; ``__call__`` mirrors seedream_jax's
    ``TextToImage`` (Euler steps on the shifted time grid, batched classifier-free guidance), and
    with ``refine=True`` its ``Cascade`` (``refine`` below).
    ``style_adapter``: the ``StyleAdapter`` when the export has one (else None); ``refiner``: the
    refiner's ``FluxTransformer2DModel`` when the export has one (seedream_pipeline.json ``refiner``),
    else None."""

    def __init__(self, folder: str, text_encoder, byt5, conditioner: ConditionerLayers, transformer, vae,
                 tokenizer, config: dict, style_adapter: Optional[StyleAdapter] = None, refiner=None):
        self.folder, self.config = folder, config
        self.text_encoder, self.byt5, self.conditioner = text_encoder, byt5, conditioner
        self.transformer, self.vae, self.tokenizer = transformer, vae, tokenizer
        self.style_adapter, self.refiner = style_adapter, refiner

    @classmethod
    def from_pretrained(cls, folder: str, torch_dtype=torch.float32, device="cpu") -> "SeedreamPipeline":
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import Qwen2ForCausalLM, Qwen2Model, T5EncoderModel

        with open(os.path.join(folder, PIPELINE_FILE)) as f:
            config = json.load(f)
        sub = lambda name: os.path.join(folder, config["components"][name])
        kw = dict(local_files_only=True, use_safetensors=True)
        dtype_kw = hf_dtype_kwargs(torch_dtype)
        with open(os.path.join(sub("text_encoder"), "config.json")) as f:
            causal = "Qwen2ForCausalLM" in json.load(f).get("architectures", [])
        llm = load_strict(Qwen2ForCausalLM if causal else Qwen2Model, sub("text_encoder"), "text_encoder",
                          **dtype_kw, **kw)
        llm = llm.model if causal else llm
        cond = ConditionerLayers.from_pretrained(sub("conditioner")).to(torch_dtype)
        byt5 = (load_strict(T5EncoderModel, sub("byt5"), "byt5", **dtype_kw, **kw)
                if cond.config["byt5_d_model"] is not None else None)
        transformer = load_strict(FluxTransformer2DModel, sub("transformer"), "transformer", torch_dtype=torch_dtype,
                                  **kw)
        vae = load_strict(AutoencoderKL, sub("vae"), "vae", torch_dtype=torch_dtype, **kw)
        style = config.get("style_adapter")
        style = StyleAdapter.from_file(os.path.join(folder, style["file"])).to(torch_dtype) if style else None
        refiner = (load_strict(FluxTransformer2DModel, sub("refiner"), "refiner", torch_dtype=torch_dtype, **kw)
                   if config.get("refiner") else None)
        for m in (llm, byt5, cond, transformer, vae, style, refiner):
            if m is not None:
                m.to(device).eval()
        return cls(folder, llm, byt5, cond, transformer, vae, LLMTokenizer(folder, config["tokenizer"]), config,
                   style, refiner)

    @property
    def device(self):
        return next(self.conditioner.parameters()).device

    @property
    def dtype(self):
        return next(self.conditioner.parameters()).dtype

    def text_inputs(self, prompts: Sequence[str]) -> Dict[str, np.ndarray]:
        return text_inputs(prompts, self.tokenizer, self.conditioner.config)

    @torch.no_grad()
    def encode(self, inputs: Dict[str, np.ndarray]):
        """Text inputs -> (context [B, T, C], mask [B, T] bool, pooled [B, C])."""
        t = lambda k: torch.from_numpy(np.asarray(inputs[k])).to(self.device)
        cfg = self.conditioner.config
        layer, n = cfg["llm_output_layer"], cfg["llm_num_hidden_layers"]
        out = self.text_encoder(input_ids=t("llm_ids").long(), attention_mask=t("llm_mask").long(),
                                output_hidden_states=layer not in (-1, n))
        hidden = out.last_hidden_state if layer in (-1, n) else out.hidden_states[layer]
        glyph = glyph_mask = None
        if self.byt5 is not None:
            glyph = self.byt5(input_ids=t("byt5_ids").long(), attention_mask=t("byt5_mask").long()).last_hidden_state
            glyph_mask = t("byt5_mask").bool() & t("has_glyphs").bool()[:, None]
        return self.conditioner(hidden, t("llm_mask"), glyph, glyph_mask)

    def _dit(self, refiner: bool):
        """(transformer, settings) of the base DiT or the refiner; settings: the JSON entry holding
        its 'rope', 'schedule' and 'latent' patch size."""
        if not refiner:
            return self.transformer, self.config
        if self.refiner is None:
            raise ValueError(f"this export has no refiner (no 'refiner' entry in {PIPELINE_FILE})")
        return self.refiner, self.config["refiner"]

    @property
    def patch_size(self) -> int:
        """Side of the latent patches packed into one transformer token (2 for Flux)."""
        return self.config["latent"]["patch_size"]

    def latent_shape(self, height: int, width: int, refiner: bool = False) -> Tuple[int, int, int]:
        f, p = self.config["latent"]["vae_downsample_factor"], self._dit(refiner)[1]["latent"]["patch_size"]
        if height % (p * f) or width % (p * f):
            raise ValueError(f"image size {height}x{width} must be a multiple of {p * f}")
        return height // f, width // f, self.config["latent"]["latent_channels"]

    def mu(self, height: int, width: int, refiner: bool = False) -> float:
        h, w, _ = self.latent_shape(height, width, refiner)
        settings = self._dit(refiner)[1]
        p = settings["latent"]["patch_size"]
        return resolution_shift((h // p) * (w // p), **settings["schedule"])

    def position_ids(self, latent_h: int, latent_w: int, num_text_tokens: int, refiner: bool = False):
        """(img_ids [N, 3], txt_ids [T, 3]) float32 tensors for FluxTransformer2DModel."""
        settings = self._dit(refiner)[1]
        r, p = settings["rope"], settings["latent"]["patch_size"]
        gh, gw = latent_h // p, latent_w // p
        img = image_position_ids(gh, gw, r["rule"], r["base_grid"])
        txt = text_position_ids(num_text_tokens, gh, gw, r["text_ids"], r["rule"], r["base_grid"])
        return torch.from_numpy(img).to(self.device), torch.from_numpy(txt).to(self.device)

    def style_tag_ids(self, tags, batch: int) -> Optional[torch.Tensor]:
        """Style tags as int64 [batch, A] (0 = absent, k = value k-1), or None (all absent / no adapter).

        ``tags``: None; ids [A] (every image) or [batch, A]; or, when the export records the tag
        vocabulary (``style_adapter.vocab`` of seedream_pipeline.json), a dict {attribute: value
        name} or a list of ``batch`` such dicts (attributes left out are absent)."""
        if tags is None:
            return None
        if self.style_adapter is None:
            raise ValueError("style tags given, but this export has no style adapter")
        vocab = (self.config.get("style_adapter") or {}).get("vocab")
        if isinstance(tags, dict) or (isinstance(tags, (list, tuple)) and tags and isinstance(tags[0], dict)):
            if not vocab:
                raise ValueError("named style tags need the vocabulary, which this export does not record; "
                                 "pass integer ids")
            rows = [tags] * batch if isinstance(tags, dict) else list(tags)
            names = [v["attribute"] for v in vocab]
            ids = np.zeros((len(rows), len(vocab)), np.int64)
            for r, row in enumerate(rows):
                for attr, value in row.items():
                    if attr not in names:
                        raise ValueError(f"unknown style attribute {attr!r}; expected one of {names}")
                    a = names.index(attr)
                    if value not in vocab[a]["values"]:
                        raise ValueError(f"unknown {attr} value {value!r}; expected one of {vocab[a]['values']}")
                    ids[r, a] = vocab[a]["values"].index(value) + 1
            tags = ids
        tags = torch.as_tensor(np.asarray(tags), dtype=torch.long)
        if tags.ndim == 1:
            tags = tags[None].expand(batch, -1)
        if tags.shape[0] != batch:
            raise ValueError(f"style tags for {tags.shape[0]} images, but {batch} prompts")
        return tags

    def velocity(self, packed, t, context, mask, pooled, img_ids, txt_ids, style_tags=None, refiner: bool = False,
                 cond_packed=None):
        """The base DiT's velocity (or, ``refiner=True``, the refiner's given its packed conditioning
        latents ``cond_packed``) for packed latents [B, N, F] (``flux_velocity``)."""
        transformer, settings = self._dit(refiner)
        pos = None
        if settings["rope"].get("image_pos_embed", "none") == "sincos":
            c = transformer.config
            pos = torch.from_numpy(sincos_position_embedding(img_ids.cpu().numpy(),
                                                             c.num_attention_heads * c.attention_head_dim))
        return flux_velocity(transformer, packed, t, context, mask, pooled, img_ids, txt_ids, pos,
                             style_tags=style_tags, style_adapter=None if refiner else self.style_adapter,
                             cond_packed=cond_packed)

    @torch.no_grad()
    def decode(self, latents_nhwc: torch.Tensor) -> torch.Tensor:
        """DiT-space latents NHWC -> images NHWC in [-1, 1] (undoes the VAE's shift and scale)."""
        c = self.vae.config
        z = latents_nhwc / c.scaling_factor + (c.shift_factor or 0.0)
        return self.vae.decode(z.permute(0, 3, 1, 2).to(self.dtype)).sample.permute(0, 2, 3, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """float images NHWC in [-1, 1] -> DiT-space latents NHWC float32: the VAE's posterior mean,
        shifted and scaled (inverse of ``decode``'s first step)."""
        c = self.vae.config
        mean = self.vae.encode(images.permute(0, 3, 1, 2).to(device=self.device, dtype=self.dtype)).latent_dist.mean
        return (mean.permute(0, 2, 3, 1).float() - (c.shift_factor or 0.0)) * c.scaling_factor

    def _uint8(self, latents_nhwc: torch.Tensor) -> np.ndarray:
        images = self.decode(latents_nhwc).float()
        return torch.clamp((images + 1.0) * 127.5, 0, 255).round().to(torch.uint8).cpu().numpy()

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], height: Optional[int] = None, width: Optional[int] = None,
                 num_steps: Optional[int] = None, guidance_scale: Optional[float] = None, noise=None,
                 generator: Optional[torch.Generator] = None, style_tags=None, negative_style_tags=None,
                 negative_guidance_scale: float = 0.0, refine: bool = False, refiner_noise=None) -> np.ndarray:
        """uint8 images [B, height, width, 3] (``sample_latents``, then ``decode``); with ``refine``
        (exports with a refiner), those images through ``refine`` (its own defaults, noise
        ``refiner_noise``): uint8 [B, scale height, scale width, 3]."""
        x = self.sample_latents(prompts, height, width, num_steps, guidance_scale, noise, generator,
                                style_tags=style_tags, negative_style_tags=negative_style_tags,
                                negative_guidance_scale=negative_guidance_scale)
        images = self._uint8(x)
        return self.refine(images, prompts, noise=refiner_noise, generator=generator) if refine else images

    def _prompt_branches(self, prompts: Sequence[str], g: float, negative: bool):
        """Text conditioning of the stacked guidance branches [unconditional if g != 1; conditional;
        conditional again if ``negative``] -> (context, mask, pooled, number of branches)."""
        b = len(prompts)
        context, mask, pooled = self.encode(self.text_inputs(prompts))
        ctxs, masks, pools = [context], [mask], [pooled]
        if g != 1.0:
            u_ctx, u_mask, u_pooled = self.encode(self.text_inputs([""]))
            ctxs.insert(0, u_ctx.expand(b, -1, -1))
            masks.insert(0, u_mask.expand(b, -1))
            pools.insert(0, u_pooled.expand(b, -1))
        if negative:
            ctxs.append(context)
            masks.append(mask)
            pools.append(pooled)
        return torch.cat(ctxs), torch.cat(masks), torch.cat(pools), len(ctxs)

    @staticmethod
    def _euler(x, times, branch_velocity, b: int, g: float, g_neg: float = 0.0):
        """Euler steps of packed latents x [B, N, F] from times[0] to times[-1]; ``branch_velocity(x, t)``
        returns the velocities of the stacked branches ([unconditional if g != 1; conditional; negative
        if g_neg != 0], each B rows), combined as v = v_u + g (v_c - v_u) + g_neg (v_c - v_neg)."""
        for i in range(len(times) - 1):
            t_cur, t_next = times[i], times[i + 1]
            v = list(branch_velocity(x, t_cur).float().split(b))
            v_c = v[1] if g != 1.0 else v[0]
            out = v[0] + g * (v_c - v[0]) if g != 1.0 else v_c
            if g_neg != 0.0:
                out = out + g_neg * (v_c - v[-1])
            x = x + (t_next - t_cur) * out
        return x

    @torch.no_grad()
    def sample_latents(self, prompts: Sequence[str], height: Optional[int] = None, width: Optional[int] = None,
                       num_steps: Optional[int] = None, guidance_scale: Optional[float] = None, noise=None,
                       generator: Optional[torch.Generator] = None, style_tags=None, negative_style_tags=None,
                       negative_guidance_scale: float = 0.0) -> torch.Tensor:
        """Final DiT-space latents NHWC [B, h, w, C] float32. ``noise``: NHWC [B, h, w, C] starting
        latents (default: ``torch.randn`` with ``generator``).

        With a style adapter: ``style_tags`` (see ``style_tag_ids``; None = all absent) condition
        the prompt's branch; the unconditional branch (empty prompt) has every tag absent. Negative-
        tag guidance (``negative_style_tags``, e.g. the "generated" source tag, weight g_neg =
        ``negative_guidance_scale``) adds a third branch, the prompt with the negative tags:

            v = v_u + g (v_c - v_u) + g_neg (v_c - v_neg)

        g_neg = 0 (the default) runs no third branch: exactly plain classifier-free guidance."""
        d = self.config["defaults"]
        height, width = height or d["height"], width or d["width"]
        num_steps = num_steps or d["num_steps"]
        g = d["guidance_scale"] if guidance_scale is None else guidance_scale
        g_neg = float(negative_guidance_scale)
        h, w, c = self.latent_shape(height, width)
        b = len(prompts)
        tags = self.style_tag_ids(style_tags, b)
        if g_neg != 0.0 and negative_style_tags is None:
            raise ValueError("negative_guidance_scale != 0 needs negative_style_tags")
        neg_tags = self.style_tag_ids(negative_style_tags, b) if g_neg != 0.0 else None
        if noise is None:
            noise = torch.randn((b, h, w, c), generator=generator, dtype=torch.float32)
        x = pack_latents(torch.tensor(np.asarray(noise), dtype=torch.float32).to(self.device), self.patch_size)
        context, mask, pooled, n_branch = self._prompt_branches(prompts, g, g_neg != 0.0)
        tag_rows = ([None] if g != 1.0 else []) + [tags] + ([neg_tags] if g_neg != 0.0 else [])
        all_tags = None
        if self.style_adapter is not None and any(r is not None for r in tag_rows):
            absent = torch.zeros((b, len(self.style_adapter.tag_sizes)), dtype=torch.long)
            all_tags = torch.cat([absent if r is None else r for r in tag_rows])
        img_ids, txt_ids = self.position_ids(h, w, context.shape[1])
        velocity = lambda x, t: self.velocity(torch.cat([x] * n_branch).to(self.dtype),
                                              t.repeat(n_branch * b).to(self.device), context, mask, pooled,
                                              img_ids, txt_ids, all_tags)
        x = self._euler(x, sampling_times(num_steps, self.mu(height, width)), velocity, b, g, g_neg)
        return unpack_latents(x, h, w, self.patch_size)

    @torch.no_grad()
    def refine(self, images, prompts: Sequence[str], num_steps: Optional[int] = None,
               guidance_scale: Optional[float] = None, noise=None,
               generator: Optional[torch.Generator] = None, strength: Optional[float] = None) -> np.ndarray:
        """The refiner (mirror of seedream_jax's ``generate.refine``): uint8 images [B, h, w, 3] and
        their B prompts -> uint8 [B, s h, s w, 3] (s = the refiner's ``scale``).

        The images, as floats in [-1, 1], are upsampled (``upsample_images``) and VAE-encoded
        (``encode_images``): that latent is concatenated to the noisy latent of every guidance
        branch (the refiner's ``in_channels`` hold both); Euler steps from ``noise`` (NHWC
        [B, s h / f, s w / f, C], default ``torch.randn`` with ``generator``) on the refiner's own
        time grid (its schedule at the output size), CFG with the empty prompt at ``guidance_scale``
        (default: the export's), then the VAE decodes. ``strength`` (default: the export's; 1 =
        every step from ``noise``): only the last int(num_steps x strength) steps run, from
        (1 - t0) cond + t0 noise at their first time t0 (SDEdit, diffusers' img2img rule)."""
        settings = self._dit(True)[1]
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(prompts):
            raise ValueError(f"refine: expected uint8 images [B, h, w, 3] and B prompts, got {images.dtype} "
                             f"{images.shape} and {len(prompts)} prompts")
        s, p = settings["scale"], settings["latent"]["patch_size"]
        num_steps = num_steps or settings["num_steps"]
        g = settings["guidance_scale"] if guidance_scale is None else guidance_scale
        strength = float(settings.get("strength", 1.0) if strength is None else strength)
        kept = min(int(num_steps * strength), num_steps)
        if not 0.0 < strength <= 1.0 or kept < 1:
            raise ValueError(f"refine: strength {strength} must be in (0, 1] and run at least one of {num_steps} steps")
        b, height, width = images.shape[0], s * images.shape[1], s * images.shape[2]
        h, w, c = self.latent_shape(height, width, refiner=True)
        pixels = torch.from_numpy(images).float() / 127.5 - 1.0
        cond = pack_latents(self.encode_images(upsample_images(pixels, s)), p)
        if noise is None:
            noise = torch.randn((b, h, w, c), generator=generator, dtype=torch.float32)
        x = pack_latents(torch.tensor(np.asarray(noise), dtype=torch.float32).to(self.device), p)
        times = sampling_times(num_steps, self.mu(height, width, refiner=True))[num_steps - kept:]
        if kept < num_steps:
            x = (1.0 - times[0]) * cond.float() + times[0] * x
        context, mask, pooled, n_branch = self._prompt_branches(prompts, g, False)
        img_ids, txt_ids = self.position_ids(h, w, context.shape[1], refiner=True)
        cond = torch.cat([cond] * n_branch).to(self.dtype)
        velocity = lambda x, t: self.velocity(torch.cat([x] * n_branch).to(self.dtype),
                                              t.repeat(n_branch * b).to(self.device), context, mask, pooled,
                                              img_ids, txt_ids, refiner=True, cond_packed=cond)
        x = self._euler(x, times, velocity, b, g)
        return self._uint8(unpack_latents(x, h, w, p))
