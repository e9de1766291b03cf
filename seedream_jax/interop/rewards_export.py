"""Export a reward stage (kinds ``reward``, ``aesthetic``, ``glyph_align``) to safetensors and plain PyTorch.

Layout of ``export_reward(stage_dir, out_dir)`` (every weight file is safetensors):

    <out>/
      README.md                  written per export: this layout, the tensors, PyTorch usage
      seedream_reward.json       {'format', 'version', 'model', 'components', 'tokenizer', 'source'}
      seedream_rewards_torch.py  a copy of interop/torch_rewards.py (the three models in plain PyTorch)
      seedream_torch.py          a copy of interop/torch_pipeline.py (the strict loaders and tokenizers it uses)
      text_encoder/              alignment only: transformers Qwen2Model, the text tower's ``llm``
      tokenizer/                 alignment only: the run's LLM tokenizer (SentencePiece model or HF files)
      byt5/                      glyph only: transformers T5EncoderModel, the aligner's ``byt5``
      <model>/                   'alignment', 'aesthetic' or 'glyph': config.json + <model>.safetensors

``<model>/`` holds everything but the HF text tower: the residual CNN image tower and the heads.
No transformers / diffusers class has this shape (a small residual CNN whose head also reads the
mean and maximum of every stage), so these keep our names: the Flax path with '/' -> '.',
``block_<i>`` -> ``block.<i>``, ``kernel`` -> ``weight`` (transposed to PyTorch's [out, in] or
OIHW), ``scale`` -> ``weight`` (``convert.default_torch_name`` is the whole table);
``README_KEYS`` lists them. ``torch_rewards.py`` builds modules with exactly these keys.
"""
import dataclasses
import json
import os
import shutil
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax.interop import convert, orbax_io, pipeline, qwen2, safetensors_io, t5, torch_pipeline, torch_rewards
from seedream_jax.models.rewards import MAX_LOGIT_SCALE

REWARD_FILE = torch_rewards.REWARD_FILE
TORCH_FILE = "seedream_rewards_torch.py"
FORMAT, VERSION = "seedream-jax-reward", 1

README_KEYS = """\
| key | what |
|---|---|
| `<tower>.stem.weight` / `.bias` | `Conv2d(3, image_channels[0], p, stride=p)`, VALID (p = patch_size; 2 for glyph) |
| `<tower>.block.<i>.norm1` / `norm2` `.weight` / `.bias` | `GroupNorm(groups, image_channels[i], eps=1e-6)` |
| `<tower>.block.<i>.conv1` / `conv2` `.weight` / `.bias` | 3x3 convolutions, XLA 'SAME' padding |
| `<tower>.down.<i>.weight` / `.bias` (i >= 1) | 3x3 stride-2 convolution, XLA 'SAME' (even sizes pad at the end only) |
| `<tower>.norm_out.weight` / `.bias` | final GroupNorm (then tanh-GELU) |
| `image.head`, `image.proj` | `Linear`s: [mean, max of every stage, last map flattened NHWC] -> 2E -> E |
| `text.proj` (alignment) | `Linear(2 * llm hidden, E)` over [state at the last real token, mean over real tokens] |
| `score` (aesthetic) | `Linear(E, 1)` over gelu(image embedding) |
| `roi_head`, `roi_proj`, `text_proj` (glyph) | ROI grid flattened (across, along, C) -> 2E -> E; ByT5 span mean -> E |
| `logit_scale` (alignment, glyph) | scalar, the training temperature: min(exp(logit_scale), 100) |

`<tower>` is `image` (alignment, aesthetic) or `image_encoder` (glyph).
"""


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """How one stage kind exports: its ``component`` (the stage's component name, also the export's
    model name and folder), and the HF text tower inside it, if any: its Flax ``text_path`` and
    the export folder ``text_folder``."""
    component: str
    text_path: Tuple[str, ...] = ()
    text_folder: Optional[str] = None


SPECS = {"reward": RewardSpec("alignment", ("text", "llm"), "text_encoder"),
         "aesthetic": RewardSpec("aesthetic"),
         "glyph_align": RewardSpec("glyph", ("byt5",), "byt5")}
REWARD_KINDS = tuple(SPECS)


def stage_kind(stage_dir: str) -> Optional[str]:
    """The ``kind`` in ``stage_dir/stage.json`` (read without touching the checkpoint); None without a
    readable one (``open_stage`` then says what is wrong)."""
    from seedream_jax.checkpoint.source_records import STAGE_FILE
    try:
        with open(os.path.join(stage_dir, STAGE_FILE), encoding="utf-8") as f:
            return json.load(f).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def init_inputs(spec: RewardSpec, config) -> tuple:
    """Dummy inputs that ``init`` the model of ``spec`` (batch 1)."""
    size = config.image_size if spec.component != "aesthetic" else config.tower.image_size
    images = jnp.zeros((1, size, size, 3))
    if spec.component == "aesthetic":
        return (images,)
    ids, mask = jnp.ones((1, config.max_length), jnp.int32), jnp.ones((1, config.max_length), bool)
    if spec.component == "alignment":
        return images, ids, mask
    return images, jnp.array([[0.0, 0.0, 8.0, 32.0]]), ids, mask, jnp.array([[6, 10]], jnp.int32)


def abstract_params(spec: RewardSpec, module, config):
    """The model's parameter tree as ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *init_inputs(spec, config)))["params"]


def torch_config(spec: RewardSpec, config) -> dict:
    """``<model>/config.json``: what ``torch_rewards`` needs to build the model (sizes; no weights)."""
    if spec.component == "aesthetic":
        t = config.tower
        return {"model": "AestheticReward", "image_size": t.image_size, "patch_size": t.patch_size,
                "image_channels": list(t.image_channels), "groups": t.groups, "embed_dim": t.embed_dim}
    common = {"image_size": config.image_size, "image_channels": list(config.image_channels), "groups": config.groups,
              "embed_dim": config.embed_dim, "max_length": config.max_length, "max_logit_scale": MAX_LOGIT_SCALE}
    if spec.component == "alignment":
        return {"model": "AlignmentReward", **common, "patch_size": config.patch_size,
                "llm_hidden_size": config.llm.hidden_size}
    from seedream_jax.data import glyph_pairs
    return {"model": "GlyphAligner", **common, "roi_size": list(config.roi_size), "byt5_d_model": config.byt5.d_model,
            "template": glyph_pairs.NEUTRAL_TEMPLATE, "span_start": glyph_pairs.SPAN_START}


def export_reward(stage_dir: str, out_dir: str, *, step: Optional[int] = None, weights: str = "ema",
                  dtype=np.float32, max_shard_bytes: int = 5 * 2**30) -> dict:
    """Export the reward model of ``stage_dir`` (its stage.json says which) to ``out_dir``.

    ``weights``: 'ema' (where the checkpoint has EMA weights) or 'raw'; ``step``: default the
    latest. Shapes are checked against the recorded config before anything is written
    (``convert.CheckpointMismatchError`` lists the differences); tensors are read from the
    checkpoint in bounded chunks and written one at a time. Returns {'files': {part: files},
    'model', 'kind', 'step', 'used_ema', 'stage_dir'}.
    """
    from seedream_jax.checkpoint.stage_dir import open_stage

    stage = open_stage(stage_dir, step)
    if stage.kind not in SPECS:
        raise ValueError(f"{stage_dir} is a {stage.kind!r} stage; reward export reads the kinds {list(SPECS)}")
    spec = SPECS[stage.kind]
    module, config = stage.component(spec.component)
    source = orbax_io.OrbaxSource(stage_dir, step=stage.step, weights=weights)
    params = source.scoped(spec.component)
    convert.check_shapes(params, abstract_params(spec, module, config), where=f"{source.describe}: {spec.component}")
    dt = convert.export_dtype(dtype)
    os.makedirs(out_dir, exist_ok=True)
    files, components, tokenizer = {}, {spec.component: spec.component}, None
    if spec.text_path:
        folder = os.path.join(out_dir, spec.text_folder)
        text = params.scoped(spec.text_path)
        files[spec.text_folder] = (qwen2.export_qwen2(text, config.llm, folder, dt, max_shard_bytes)
                                   if spec.component == "alignment" else
                                   t5.export_byt5(text, config.byt5, folder, dt, max_shard_bytes))
        components[spec.text_folder] = spec.text_folder
        params = params.select(lambda p: p[:len(spec.text_path)] != spec.text_path)
    files[spec.component] = convert.write_component(
        params, os.path.join(out_dir, spec.component), name_fn=convert.default_torch_name,
        config=torch_config(spec, config), basename=spec.component, dtype=dt, max_shard_bytes=max_shard_bytes)
    if spec.component == "alignment":
        record = stage.tokenizer()  # the one it was trained with, unchanged
        tokenizer = pipeline.copy_tokenizer(pipeline.TokenizerFiles(record["kind"], record["path"]), out_dir)
        files["tokenizer"] = sorted(os.path.join(out_dir, "tokenizer", f) for f in os.listdir(
            os.path.join(out_dir, "tokenizer")))
    info = {"format": FORMAT, "version": VERSION, "model": spec.component, "components": components,
            "tokenizer": tokenizer, "source": {"stage_dir": os.path.abspath(stage_dir), "kind": stage.kind,
                                               "step": source.step, "weights": "ema" if source.used_ema else "raw",
                                               "dtype": dt.name}}
    meta = [os.path.join(out_dir, n) for n in (REWARD_FILE, TORCH_FILE, pipeline.TORCH_FILE, "README.md")]
    with open(meta[0], "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, ensure_ascii=False)
    shutil.copyfile(torch_rewards.__file__, meta[1])
    shutil.copyfile(torch_pipeline.__file__, meta[2])
    with open(meta[3], "w", encoding="utf-8") as f:
        f.write(readme(info, os.path.join(out_dir, spec.component)))
    files["reward"] = meta
    return {"files": files, "model": spec.component, "kind": stage.kind, "step": source.step,
            "used_ema": source.used_ema, "stage_dir": os.path.abspath(stage_dir)}


_USAGE = {
    "alignment": """\
model = load_reward(folder)                              # AlignmentRewardTorch
ids, mask = model.tokenize(["a red circle", "一个红色的圆"])   # the run's tokenizer (tokenizer/): no BOS/EOS,
                                                         # right-padded to max_length
cos = model.score(images, ids, mask)                     # [B]: cosine of (image i, prompt i)
cos = model.score_prompts(images, prompts)               # the same in one call""",
    "aesthetic": """\
model = load_reward(folder)                              # AestheticRewardTorch
scores = model(images)                                   # [B]: higher = cleaner; only differences mean something""",
    "glyph": """\
model = load_reward(folder)                              # GlyphAlignerTorch
ids, mask, spans = model.template_inputs(["HELLO", "你好"])  # ByT5 bytes of 'Text "<text>".' and the text's span
text = model.encode_spans(ids, mask, spans)              # [N, E] unit
boxes = model.encode_boxes(images, [[y0, x0, y1, x1], ...])  # [B, E] unit ([B, K, 4] -> [B, K, E])
cos = (boxes * text).sum(-1)""",
}


def readme(info: dict, weights_folder: str) -> str:
    """The export's README.md: layout, the tensors of ``weights_folder``, PyTorch usage."""
    model = info["model"]
    tensors = safetensors_io.LazyTensors(weights_folder)
    rows = "\n".join(f"| `{k}` | {list(tensors.spec(k).shape)} |" for k in sorted(tensors))
    text = {"alignment": "- `text_encoder/`: transformers `Qwen2Model` (the text tower's LLM), "
                         "`Qwen2Model.from_pretrained`\n- `tokenizer/`: the run's LLM tokenizer "
                         f"({(info['tokenizer'] or {}).get('kind')}; `seedream_torch.LLMTokenizer` reads it)\n",
            "glyph": "- `byt5/`: transformers `T5EncoderModel` (ByT5 over UTF-8 bytes + 3, EOS 1, pad 0)\n",
            "aesthetic": ""}[model]
    return f"""# Seedream-JAX reward model: {model}

Exported from `{info['source']['stage_dir']}` ({info['source']['kind']} stage, step {info['source']['step']},
{info['source']['weights']} weights, {info['source']['dtype']}). Every weight file is safetensors.

- `{model}/`: `config.json` and `{model}.safetensors`, the residual CNN image tower and heads (no
  transformers / diffusers class fits these small CNNs, so the keys are ours, below)
{text}- `seedream_rewards_torch.py`: the model in plain PyTorch (numpy, torch, safetensors, transformers), with
  `seedream_torch.py` beside it for the strict loaders and tokenizers; every file is loaded strictly
  (a missing, unexpected or mis-shaped tensor raises `StrictLoadError` naming it)
- `seedream_reward.json`: which model this is, its folders and the tokenizer

```python
import sys; sys.path.insert(0, folder)
from seedream_rewards_torch import load_reward
{_USAGE[model]}
```

Images are NHWC [B, S, S, 3] at the model's `image_size` S, uint8 or float in [-1, 1]. The forwards
match the JAX model's in float32 (`tools/export_weights.py --verify` checks max abs diff <= 1e-5).

## `{model}/{model}.safetensors`

{README_KEYS}
| key | shape |
|---|---|
{rows}
"""
