"""The embedded default: trains everything from scratch on the synthetic bilingual world on a CPU.

python -m seedream_jax.main --config configs/tiny.py --workdir runs/tiny

Stages: data, tokenizer, VAE, DiT (pretrain), a sample grid and the objective eval. The
sample-grid prompts are captions of scenes of the world (``GRID_SCENES``, written by the world's
own caption templates, in English and Chinese), plus one off-template prompt per language,
labelled as such in the grid.
"""
from seedream_jax import config_lib
from seedream_jax.data import synthetic as S


def _o(shape, colour, size, position):
    return S.ShapeObject(shape, colour, size, position)


def _word(text, language, font):
    return S.TextItem(text, language, "black", "large", "horizontal", "top", font)


# (scene, caption type, languages): one prompt per language, from the world's caption templates.
GRID_SCENES = (
    (S.Scene("beige", [_o("circle", "red", "large", "center")]), "short", ("en", "zh")),
    (S.Scene("light gray", [_o("square", "blue", "small", p) for p in ("top-left", "center", "bottom-right")]),
     "short", ("en", "zh")),
    (S.Scene("dark gray", [_o("triangle", "yellow", "large", "left"), _o("circle", "green", "small", "right")]),
     "short", ("en", "zh")),
    (S.Scene("light gray", [_o("circle", "red", "small", "top-left"), _o("circle", "red", "small", "top-right"),
                            _o("square", "green", "large", "bottom")]), "short", ("en", "zh")),
    (S.Scene("beige", [_o("star", "purple", "large", "top-left")]), "long", ("en", "zh")),
    (S.Scene("light gray", [_o("circle", "red", "large", "left"), _o("square", "blue", "large", "right")]),
     "long", ("en", "zh")),
    (S.Scene("light gray", [_o("square", "cyan", "small", "bottom-left")], _word("HELLO", "en", "dejavu-sans-bold")),
     "short", ("en",)),
    (S.Scene("light gray", [_o("square", "cyan", "small", "bottom-left")], _word("你好", "zh", "wqy-microhei")),
     "short", ("zh",)),
)
OFF_TEMPLATE = ("a red ball next to a blue box", "一个红色的球在蓝色盒子旁边")
GRID_PROMPTS = tuple(S.captions(scene)[lang][kind] for scene, kind, langs in GRID_SCENES for lang in langs) \
    + OFF_TEMPLATE
GRID_LABELS = ("",) * (len(GRID_PROMPTS) - len(OFF_TEMPLATE)) + ("off-template",) * len(OFF_TEMPLATE)


def get_config():
    c = config_lib.base_config("tiny")
    c.stages = ("data", "tokenizer", "vae", "pretrain", "sample", "eval")
    c.pretrain.eval_prompts = GRID_PROMPTS[:8]
    c.sample.prompts = GRID_PROMPTS
    c.sample.prompt_labels = GRID_LABELS
    c.sample.num_steps = 28
    # The latent: a 2x VAE (32x32x4 latents of a 64 px image) read by the DiT in 4x4 patches keeps
    # the DiT's 8x8 = 64 image tokens but lifts the VAE round trip's ceiling (learning benchmark,
    # benchmarks/RESULTS.md): shape 0.58 -> 0.88, binding 0.44 -> 0.62, two-group counts
    # 0.38 -> 0.69, text exact 0.06 -> 0.53, against the preset's 4x VAE with 2x2 patches.
    c.model.vae.block_out_channels = (16, 32)
    c.model.mmdit.patch_size = 4
    # Text tokens at position 0 (Flux's convention): image ids are centred on the image, so the
    # rotary phase between a word and an image token says where that token is.
    c.model.mmdit.text_ids = "zeros"
    # Absolute position for image tokens: a fixed 2D sin-cos embedding of the image ids added after
    # the patch embedding (SD3 / DiT). RoPE alone is relative between image tokens, so the pooled
    # prompt vector (adaLN) could not say where to draw; exported with its own torch piece.
    c.model.mmdit.image_pos_embed = "sincos"
    # Training times weighted toward noise: logit-normal t with mean 0.8 instead of 0. The prompt
    # decides the layout at high noise; at low noise the noisy image already shows it. At 300 DiT
    # steps this multiplies the text gain (flow-matching error with other scenes' captions minus
    # with the right ones, eval/text_use.py) by 25 at t = 0.95 and by 9.5 at t = 0.8
    # (benchmarks/RESULTS.md (d2)); the eval does not see it yet at 900 steps.
    c.pretrain.time_mean = 0.8
    # Scene mix nearer to what prompts ask for: mostly one or two objects (weights 5:3:1:1 for
    # 1-4), fewer rendered words (0.15 instead of 0.4), and two counted groups ("two red circles
    # and a blue square") in a fifth of the multi-object scenes.
    c.data.world.object_count_weights = (5.0, 3.0, 1.0, 1.0)
    c.data.world.text_probability = 0.15
    c.data.world.group_probability = 0.2
    # The VAE bounds every later image: at 400 steps its round trip shifts colours; 800 steps
    # reach 1.0 on colour.
    c.vae.train.steps = 800
    # DiT steps: what the base needs most (benchmarks/RESULTS.md (d6): colour 0.50 at 3000 steps,
    # 0.96 at 6000); 2200 steps at about 4.5 steps/s fill the 15-minute budget on 2 cores.
    c.pretrain.train.steps = 2200
    c.pretrain.train.batch_size = 16
    c.pretrain.optimizer.lr = 1e-3
    c.pretrain.optimizer.warmup_steps = 50
    # A constant learning rate after warmup (no cosine decay): the EMA averages the end of the run,
    # and a run can be extended by resuming with more steps (configs/tiny_long.py was measured so).
    c.pretrain.optimizer.final_lr_fraction = 1.0
    return c
