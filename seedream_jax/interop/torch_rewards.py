"""Run exported Seedream-JAX reward models in plain PyTorch.

This file depends only on numpy, torch, safetensors and transformers (plus sentencepiece for the
alignment model's tokenizer), never on JAX: a reward export (``interop/rewards_export.py``)
writes a copy of it as ``seedream_rewards_torch.py`` next to the weights, together with
``seedream_torch.py`` (``interop/torch_pipeline.py``), whose strict loaders and tokenizers it
uses. A PyTorch user does

    import sys; sys.path.insert(0, "exported_folder")
    from seedream_rewards_torch import load_reward
    model = load_reward("exported_folder")       # AlignmentRewardTorch, AestheticRewardTorch or GlyphAlignerTorch

The forwards are those of ``models/rewards.py`` and ``models/glyph.py``:

    AlignmentRewardTorch  score(images, ids, mask) -> [B] cosine of (image i, prompt i);
                          ids/mask from ``tokenize(prompts)`` (the run's tokenizer, in tokenizer/)
    AestheticRewardTorch  forward(images) -> [B] scores (only differences mean something)
    GlyphAlignerTorch     encode_boxes(images, boxes [B, 4] or [B, K, 4]) -> [B(, K), E];
                          encode_spans(ids, mask, spans) -> [N, E], inputs from ``template_inputs(texts)``

Images are NHWC [B, S, S, 3] (S = the model's ``image_size``), uint8 or float in [-1, 1], as in
JAX; other sizes are refused (the JAX scorers resize with ``jax.image.resize(antialias=True)``,
which torch does not reproduce exactly: resize to S first). Convolutions pad as XLA's 'SAME'
(a stride-2 3x3 convolution on an even size pads one row/column at the end only), GELU is the
tanh approximation, GroupNorm's epsilon is 1e-6 (statistics in float64, ``GroupNorm``), and
flattened feature maps are in NHWC order.
Every weight file is loaded strictly: a missing, unexpected or mis-shaped tensor raises
``StrictLoadError`` naming it. Nothing runs under ``torch.no_grad``: the scores are differentiable
with respect to the pixels, as the JAX scorers are (wrap calls in ``torch.no_grad()`` to score only).
"""
import importlib.util
import json
import os
import sys
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:  # inside the seedream_jax package
    from . import torch_pipeline as _pipeline
except ImportError:  # the exported copy: seedream_torch.py lies next to this file
    _pipeline = sys.modules.get("seedream_torch")
    if _pipeline is None:
        _spec = importlib.util.spec_from_file_location(
            "seedream_torch", os.path.join(os.path.dirname(os.path.abspath(__file__)), "seedream_torch.py"))
        _pipeline = importlib.util.module_from_spec(_spec)
        sys.modules["seedream_torch"] = _pipeline
        _spec.loader.exec_module(_pipeline)

StrictLoadError = _pipeline.StrictLoadError
REWARD_FILE = "seedream_reward.json"
MAX_LOGIT_SCALE = 100.0


# ----------------------------------------------------------------------------- shared pieces

def gelu(x):
    """Flax's ``nn.gelu`` (tanh approximation)."""
    return F.gelu(x, approximate="tanh")


def unit_normalise(x):
    """x [..., E] -> float32 rows of unit L2 norm (``models/rewards.unit_normalise``)."""
    x = x.float()
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-12)


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """(before, after) padding of XLA's 'SAME' for one spatial axis."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def model_pixels(images, size: int) -> torch.Tensor:
    """uint8 [B, S, S, 3] (0-255) or float in [-1, 1] (NumPy or torch) -> float32 tensor in [-1, 1];
    S must be ``size``."""
    x = images if torch.is_tensor(images) else torch.from_numpy(np.array(images))  # a copy: writable
    if x.ndim != 4 or tuple(x.shape[1:]) != (size, size, 3):
        raise ValueError(f"images must be [B, {size}, {size}, 3] (the model's image_size), got {tuple(x.shape)}: "
                         "resize them first")
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` (same ``weight``/``bias``) with two-pass statistics in float64 (float32
    on MPS, which has no float64): torch's float32 kernel drifts by ~1e-4 on groups whose variance
    is small next to their mean, where XLA's float32 reductions stay within ~1e-5 of the exact value."""

    def forward(self, x):
        b, c = x.shape[:2]
        xf = x.to(torch.float32 if x.device.type == "mps" else torch.float64).reshape(b, self.num_groups, -1)
        mean = xf.mean(dim=-1, keepdim=True)
        var = (xf - mean).square().mean(dim=-1, keepdim=True)
        y = ((xf - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape).to(x.dtype)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class Conv(nn.Conv2d):
    """An NCHW convolution padded like XLA: 'SAME' (``same=True``) or 'VALID'."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, same: bool = True):
        super().__init__(cin, cout, kernel, stride=stride)
        self.same = same

    def forward(self, x):
        if self.same:
            top, bottom = same_padding(x.shape[2], self.kernel_size[0], self.stride[0])
            left, right = same_padding(x.shape[3], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ResidualBlock(nn.Module):
    """x + conv2(gelu(norm2(conv1(gelu(norm1(x)))))) at constant width (NCHW)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1, self.norm2 = (GroupNorm(groups, channels, eps=1e-6) for _ in range(2))
        self.conv1, self.conv2 = Conv(channels, channels, 3), Conv(channels, channels, 3)

    def forward(self, x):
        h = self.conv1(gelu(self.norm1(x)))
        return x + self.conv2(gelu(self.norm2(h)))


class ConvTrunk(nn.Module):
    """The residual CNN both image towers share: ``stem`` (``stem`` x ``stem``, stride ``stem``,
    VALID), ``block.0``, then per further width ``down.i`` (3x3, stride 2, SAME) and ``block.i``;
    ``norm_out``. ``features(images NHWC)`` -> (gelu(norm_out(x)) NCHW, [each stage's output NCHW])."""

    def __init__(self, channels: Sequence[int], groups: int, stem: int):
        super().__init__()
        self.stem = Conv(3, channels[0], stem, stride=stem, same=False)
        self.block = nn.ModuleList(ResidualBlock(c, groups) for c in channels)
        self.down = nn.ModuleDict({str(i): Conv(channels[i - 1], channels[i], 3, stride=2)
                                   for i in range(1, len(channels))})
        self.norm_out = GroupNorm(groups, channels[-1], eps=1e-6)

    def features(self, images):
        x = self.block[0](self.stem(images.permute(0, 3, 1, 2)))
        stages = [x]
        for i in range(1, len(self.block)):
            x = self.block[i](self.down[str(i)](gelu(x)))
            stages.append(x)
        return gelu(self.norm_out(x)), stages

    def forward(self, images):
        return self.features(images)[0]


class ImageTower(ConvTrunk):
    """``models/rewards.ImageTower``: images [B, S, S, 3] in [-1, 1] -> [B, embed_dim] (not normalised).
    ``head`` reads [mean and max over positions of every stage, then the last map flattened NHWC]."""

    def __init__(self, cfg: dict):
        ch = list(cfg["image_channels"])
        super().__init__(ch, cfg["groups"], cfg["patch_size"])
        side = cfg["image_size"] // (cfg["patch_size"] * 2 ** (len(ch) - 1))
        self.head = nn.Linear(2 * sum(ch) + side * side * ch[-1], 2 * cfg["embed_dim"])
        self.proj = nn.Linear(2 * cfg["embed_dim"], cfg["embed_dim"])

    def forward(self, images):
        x, stages = self.features(images)
        pooled = [t for s in stages for t in (s.mean(dim=(2, 3)), s.amax(dim=(2, 3)))]
        flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.proj(gelu(self.head(torch.cat(pooled + [flat], dim=-1))))


def roi_align(features, boxes, roi_size: Tuple[int, int], stride: int):
    """``models/glyph.roi_align``: features [B, h, w, C] (NHWC), boxes [B, 4] (y0, x0, y1, x1) pixels,
    end-exclusive -> [B, across, along, C]; bin (i, j) averages 2 x 2 bilinear samples, ``along``
    runs along the box's longer side (left to right when it is at least as wide as tall)."""
    across, along = roi_size
    b, h, w, _ = features.shape
    boxes = boxes.float() / stride - 0.5
    y0, x0, y1, x1 = (boxes[:, k, None, None] for k in range(4))
    wide = (x1 - x0) >= (y1 - y0)

    def offsets(n):  # 2n sample positions in [0, 1], computed in float64 as the JAX side does
        return torch.from_numpy(((np.arange(2 * n) + 0.5) / (2 * n)).astype(np.float32)).to(features.device)

    u, v = offsets(across)[None, :, None], offsets(along)[None, None, :]
    ys = torch.where(wide, y0 + u * (y1 - y0), y0 + v * (y1 - y0)).clamp(0.0, h - 1.0)
    xs = torch.where(wide, x0 + v * (x1 - x0), x0 + u * (x1 - x0)).clamp(0.0, w - 1.0)
    yf, xf = torch.floor(ys), torch.floor(xs)
    wy, wx = (ys - yf)[..., None], (xs - xf)[..., None]
    yi, xi = yf.long(), xf.long()
    yj, xj = (yi + 1).clamp(max=h - 1), (xi + 1).clamp(max=w - 1)
    rows = torch.arange(b, device=features.device)[:, None, None]
    g = lambda y, x: features[rows, y, x]  # [B, 2a, 2l, C]
    samples = ((1 - wy) * (1 - wx) * g(yi, xi) + (1 - wy) * wx * g(yi, xj)
               + wy * (1 - wx) * g(yj, xi) + wy * wx * g(yj, xj))
    return samples.reshape(b, across, 2, along, 2, -1).mean(dim=(2, 4))


def _tensor(x, device, dtype) -> torch.Tensor:
    """A NumPy array or tensor as a tensor of ``dtype`` on ``device``."""
    return (x if torch.is_tensor(x) else torch.from_numpy(np.array(x))).to(device=device, dtype=dtype)


def read_export(folder: str, model: str) -> Tuple[dict, dict]:
    """(``seedream_reward.json``, the model's ``config.json``) of an export holding ``model``."""
    with open(os.path.join(folder, REWARD_FILE)) as f:
        info = json.load(f)
    if info.get("model") != model:
        raise ValueError(f"{folder} holds a {info.get('model')!r} reward model, not {model!r}")
    with open(os.path.join(folder, info["components"][model], "config.json")) as f:
        return info, json.load(f)


def _finish(model: nn.Module, folder: str, info: dict, name: str, skip: Tuple[str, ...], torch_dtype, device):
    """Strict load of the model's own safetensors file, then dtype, device, eval mode."""
    path = os.path.join(folder, info["components"][name], f"{name}.safetensors")
    _pipeline.load_tensors_strict(model, path, name, skip)
    return model.to(device=device, dtype=torch_dtype).eval()


def _hf(cls, folder: str, info: dict, component: str, torch_dtype):
    """A transformers text tower of the export, loaded strictly from safetensors."""
    return _pipeline.load_strict(cls, os.path.join(folder, info["components"][component]), component,
                                 local_files_only=True, use_safetensors=True,
                                 **_pipeline.hf_dtype_kwargs(torch_dtype))


def _scale(logit_scale, config: dict):
    return torch.clamp(torch.exp(logit_scale.float()), max=config.get("max_logit_scale", MAX_LOGIT_SCALE))


# ----------------------------------------------------------------------------- the three models

class AlignmentRewardTorch(nn.Module):
    """``models/rewards.AlignmentReward``: ``image`` (ImageTower), ``text.llm`` (transformers
    ``Qwen2Model``, from text_encoder/), ``text.proj`` and ``logit_scale``."""

    def __init__(self, config: dict, llm, tokenizer=None):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.image = ImageTower(config)
        self.text = nn.Module()
        self.text.llm = llm
        self.text.proj = nn.Linear(2 * config["llm_hidden_size"], config["embed_dim"])
        self.logit_scale = nn.Parameter(torch.zeros(()))

    @classmethod
    def from_pretrained(cls, folder: str, torch_dtype=torch.float32, device="cpu") -> "AlignmentRewardTorch":
        from transformers import Qwen2Model
        info, config = read_export(folder, "alignment")
        llm = _hf(Qwen2Model, folder, info, "text_encoder", torch_dtype)
        tokenizer = _pipeline.LLMTokenizer(folder, info["tokenizer"]) if info.get("tokenizer") else None
        return _finish(cls(config, llm, tokenizer), folder, info, "alignment", ("text.llm.",), torch_dtype, device)

    def tokenize(self, prompts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(ids int32, mask bool) [B, max_length]: the run's tokenizer, no BOS/EOS, right-padded."""
        if self.tokenizer is None:
            raise ValueError("this export has no tokenizer/: pass token ids of the run's tokenizer")
        return self.tokenizer(list(prompts), self.config["max_length"])

    def encode_image(self, images) -> torch.Tensor:
        """Unit image embeddings [B, E] float32."""
        x = model_pixels(images, self.config["image_size"]).to(self.logit_scale.device, self.image.head.weight.dtype)
        return unit_normalise(self.image(x))

    def encode_text(self, ids, mask) -> torch.Tensor:
        """Unit prompt embeddings [B, E] float32 of right-padded ``ids``/``mask`` [B, L]: the LLM's
        final states at the last real token and averaged over the real tokens, projected."""
        device = self.logit_scale.device
        ids, mask = _tensor(ids, device, torch.long), _tensor(mask, device, torch.bool)
        attend = mask.clone()
        attend[:, 0] = True  # an empty prompt: token 0 sees itself, as the JAX model's diagonal lets it
        h = self.text.llm(input_ids=ids, attention_mask=attend.long()).last_hidden_state
        last = (mask.sum(1) - 1).clamp(min=0)
        final = h[torch.arange(h.shape[0], device=device), last]
        weights = mask.to(h.dtype)[..., None]
        mean = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return unit_normalise(self.text.proj(torch.cat([final, mean], dim=-1)))

    def scale(self) -> torch.Tensor:
        """The trained inverse temperature exp(logit_scale), capped at 100."""
        return _scale(self.logit_scale, self.config)

    def score(self, images, ids, mask) -> torch.Tensor:
        """Cosine of each (image i, prompt i): [B] float32."""
        return (self.encode_image(images) * self.encode_text(ids, mask)).sum(-1)

    def score_prompts(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """``score`` with the prompts tokenised by the export's tokenizer."""
        return self.score(images, *self.tokenize(prompts))

    def forward(self, images, ids, mask):
        """(image embeddings [B, E], text embeddings [N, E], logit scale)."""
        return self.encode_image(images), self.encode_text(ids, mask), self.scale()


class AestheticRewardTorch(nn.Module):
    """``models/rewards.AestheticReward``: ``image`` (ImageTower) and the scalar head ``score``."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.image = ImageTower(config)
        self.score = nn.Linear(config["embed_dim"], 1)

    @classmethod
    def from_pretrained(cls, folder: str, torch_dtype=torch.float32, device="cpu") -> "AestheticRewardTorch":
        info, config = read_export(folder, "aesthetic")
        return _finish(cls(config), folder, info, "aesthetic", (), torch_dtype, device)

    def forward(self, images) -> torch.Tensor:
        """images [B, S, S, 3] (uint8 or [-1, 1]) -> scores float32 [B], higher = cleaner."""
        w = self.score.weight
        x = model_pixels(images, self.config["image_size"]).to(w.device, w.dtype)
        return self.score(gelu(self.image(x)))[:, 0].float()


class GlyphAlignerTorch(nn.Module):
    """``models/glyph.GlyphAligner``: ``image_encoder`` (ConvTrunk with a 2x2 stem), ``byt5``
    (transformers ``T5EncoderModel``, from byt5/), ``roi_head``, ``roi_proj``, ``text_proj``, ``logit_scale``."""

    def __init__(self, config: dict, byt5):
        super().__init__()
        self.config = config
        ch, e = list(config["image_channels"]), config["embed_dim"]
        across, along = config["roi_size"]
        self.image_encoder = ConvTrunk(ch, config["groups"], 2)
        self.byt5 = byt5
        self.roi_head = nn.Linear(across * along * ch[-1], 2 * e)
        self.roi_proj = nn.Linear(2 * e, e)
        self.text_proj = nn.Linear(config["byt5_d_model"], e)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    @classmethod
    def from_pretrained(cls, folder: str, torch_dtype=torch.float32, device="cpu") -> "GlyphAlignerTorch":
        from transformers import T5EncoderModel
        info, config = read_export(folder, "glyph")
        byt5 = _hf(T5EncoderModel, folder, info, "byt5", torch_dtype)
        return _finish(cls(config, byt5), folder, info, "glyph", ("byt5.",), torch_dtype, device)

    def template_inputs(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ByT5 input of the neutral glyph template of each text (``data/glyph_pairs``): (ids int32,
        mask bool) [N, max_length] and spans int32 [N, 2], the text's byte positions in it."""
        c = self.config
        templates = [c["template"].format(text=t) for t in texts]
        longest = max((len(t.encode("utf-8")) for t in templates), default=0)
        if longest + 1 > c["max_length"]:
            raise ValueError(f"a glyph template has {longest} bytes; max_length {c['max_length']} must be at least "
                             f"{longest + 1}")
        ids, mask = _pipeline.byt5_tokenize(templates, c["max_length"])
        spans = np.array([[c["span_start"], c["span_start"] + len(t.encode("utf-8"))] for t in texts],
                         np.int32).reshape(-1, 2)
        return ids, mask, spans

    def encode_boxes(self, images, boxes) -> torch.Tensor:
        """Unit box embeddings float32: boxes [B, 4] (y0, x0, y1, x1) pixels -> [B, E], or K
        candidate boxes per image [B, K, 4] -> [B, K, E]."""
        c, w = self.config, self.roi_head.weight
        x = model_pixels(images, c["image_size"]).to(w.device, w.dtype)
        feats = self.image_encoder(x).permute(0, 2, 3, 1)
        boxes = _tensor(boxes, w.device, torch.float32)
        candidates = boxes.ndim == 3
        k = boxes.shape[1] if candidates else 1
        feats = feats.repeat_interleave(k, dim=0) if candidates else feats
        roi = roi_align(feats, boxes.reshape(-1, 4), tuple(c["roi_size"]), 2 ** len(c["image_channels"]))
        out = unit_normalise(self.roi_proj(gelu(self.roi_head(roi.reshape(roi.shape[0], -1).to(w.dtype)))))
        return out.reshape(-1, k, out.shape[-1]) if candidates else out

    def encode_spans(self, ids, mask, spans) -> torch.Tensor:
        """Unit span embeddings [N, E] float32: ByT5 states of template bytes ``ids``/``mask`` [N, L]
        averaged over ``spans`` [N, 2] (start, end) and projected."""
        device = self.logit_scale.device
        ids, mask = _tensor(ids, device, torch.long), _tensor(mask, device, torch.bool)
        spans = _tensor(spans, device, torch.long)
        h = self.byt5(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
        pos = torch.arange(ids.shape[1], device=device)[None, :]
        inside = ((pos >= spans[:, :1]) & (pos < spans[:, 1:]) & mask).float()[..., None]
        pooled = (h * inside).sum(1) / inside.sum(1).clamp(min=1.0)
        return unit_normalise(self.text_proj(pooled.to(self.text_proj.weight.dtype)))

    def scale(self) -> torch.Tensor:
        """The trained inverse temperature exp(logit_scale), capped at 100."""
        return _scale(self.logit_scale, self.config)

    def forward(self, images, boxes, ids, mask, spans):
        """(box embeddings, span embeddings, logit scale)."""
        return self.encode_boxes(images, boxes), self.encode_spans(ids, mask, spans), self.scale()


MODELS = {"alignment": AlignmentRewardTorch, "aesthetic": AestheticRewardTorch, "glyph": GlyphAlignerTorch}


def load_reward(folder: str, torch_dtype=torch.float32, device="cpu") -> nn.Module:
    """The reward model of an export folder, whichever of the three it holds."""
    with open(os.path.join(folder, REWARD_FILE)) as f:
        model = json.load(f).get("model")
    if model not in MODELS:
        raise ValueError(f"{folder}/{REWARD_FILE}: unknown reward model {model!r} (expected one of {sorted(MODELS)})")
    return MODELS[model].from_pretrained(folder, torch_dtype=torch_dtype, device=device)
