"""Stage kind ``pretrain``: rectified-flow pretraining of the MMDiT and the text-conditioning stack.

Data: the stage's own ``pretrain.data`` section when it has one, else ``cfg.data``
(``common.stage_data_cfg``; so ``sft = kind 'pretrain'`` trains on another dataset), opened through
``data/sources.py``: the in-memory synthetic world (``format = "synthetic"``, the tiny default) or
an ArrayRecord dataset through the Grain pipeline (``format = "arrayrecord"``, ``path``).
Per step: latents are a posterior sample of the VAE (normalised with the fitted shift/scale;
when the VAE is frozen its posteriors are computed once for the synthetic world at start, or
read from the latent cache of an ArrayRecord dataset when there is one), the conditioner encodes
the captions (LLM + Glyph-ByT5; a caption is dropped to the empty prompt with
``data.cfg_drop_prob`` for classifier-free guidance; a frozen conditioner's outputs may come from
the text cache of an ArrayRecord dataset instead), and the MMDiT
learns the velocity ``eps - x0`` at logit-normal times shifted by the batch's own resolution
(each aspect-ratio bucket of an ArrayRecord dataset has its own token count, hence its own shift).
Which components train is ``pretrain.frozen`` (path prefixes); components can start from other
stages' checkpoints (``pretrain.init_from``, renames included: ``checkpoint/init_from.py``), by
default the VAE from ``<workdir>/vae``, read straight into their shardings (``Task.init_sources``).

Style tags (the continued-training and SFT stages, ``stages/ct.py``, ``stages/sft.py``, reuse these
functions with an MMDiT that has the aesthetic adapter): a batch may carry ``style_tags`` int32
[B, A] (``image_data(..., style_tags=True)``: each record's style, ``data/style_tags.py``); the loss
passes them to the MMDiT after dropping each style attribute with ``stage_cfg.tag_drop_prob``.
"""
import jax
import jax.numpy as jnp

from seedream_jax import config_lib
from seedream_jax.checkpoint.init_from import load_component, parse_sources
from seedream_jax.checkpoint.stage_dir import StageDescription, tokenizer_record
from seedream_jax.data import sources as data_sources
from seedream_jax.data import style_tags as style_tags_lib
from seedream_jax.data.types import CACHED_TEXT_FIELDS, PIXEL_FIELDS, DiffusionBatch
from seedream_jax.eval.grid import image_grid
from seedream_jax.models.conditioner import Conditioner, tokenize_prompts
from seedream_jax.models.layers import compute_dtype
from seedream_jax.models.mmdit import MMDiT
from seedream_jax.models.partition import merge_params, split_params
from seedream_jax.models.vae import AutoencoderKL, scale_latents
from seedream_jax.sampling.generate import TextToImage
from seedream_jax.stages import common, record_data, vae as vae_stage
from seedream_jax.training import loop
from seedream_jax.training.losses import flow_matching_loss

def resolved_vae_config(cfg, workdir: str, stage_cfg):
    """The VAE config: the fitted one of the VAE stage named in init_from, else the config's."""
    source = parse_sources(stage_cfg.init_from, workdir).get("vae")
    if source:
        vae_dir = source[0]
        return vae_stage.fitted_config(vae_dir, config_lib.non_mmdit_attention_impl(cfg.model.attention_impl)), vae_dir
    return config_lib.build_model_configs(cfg.model)[2], None


def make_pipeline(cfg, stage_cfg, vae_cfg, tokenizer) -> TextToImage:
    """The TextToImage pipeline of ``cfg.model`` with this stage's resolution-shift settings."""
    conditioner_cfg, mmdit_cfg, _ = config_lib.build_model_configs(cfg.model)
    return TextToImage(conditioner_cfg, mmdit_cfg, vae_cfg, tokenizer,
                       shift_base_tokens=int(stage_cfg.shift_base_tokens), shift_max_tokens=int(stage_cfg.shift_max_tokens),
                       shift_base=float(stage_cfg.shift_base), shift_max=float(stage_cfg.shift_max))


def build_pipeline(cfg, workdir: str, stage_cfg):
    """(TextToImage, tokenizer, vae stage dir) for this config."""
    vae_cfg, vae_dir = resolved_vae_config(cfg, workdir, stage_cfg)
    tokenizer = common.load_tokenizer(cfg, workdir)
    return make_pipeline(cfg, stage_cfg, vae_cfg, tokenizer), tokenizer, vae_dir


def model_functions(pipe: TextToImage, stage_cfg, height: int, width: int):
    """(init_params, loss_fn) of the pretrain Task for images of ``height`` x ``width`` pixels.

    init_params: rng -> (trainable, frozen) boxed trees {'conditioner', 'mmdit', 'vae'} split by
      ``stage_cfg.frozen``. loss_fn: (params, frozen, batch, rng) -> (flow-matching loss, metrics);
      the batch is a ``data.types.DiffusionBatch`` or a dict of its fields: either ``image``
      [B, H, W, 3] in [-1, 1] or cached VAE posteriors ``latent_mean``/``latent_logvar``
      [B, H/f, W/f, C], plus the conditioner's token arrays or its cached outputs ``text_context``
      [B, L, D], ``text_mask`` [B, L], ``text_pooled`` [B, D] (then the conditioner does not run).
      ``height`` x ``width`` only shapes the initialisation: the loss takes the resolution shift
      ``mu`` of each batch's own image size (static under jit, so one compiled step per bucket shape).
      A batch's ``style_tags`` [B, A] (an MMDiT with a style adapter) reach the MMDiT in the
      conditioning, each style attribute dropped with ``stage_cfg.tag_drop_prob`` (default 0), and
      so do its ``cond_latents`` (an MMDiT with ``cond_channels``: the refiner).
    """
    s = stage_cfg
    conditioner, mmdit, vae = pipe.conditioner, pipe.mmdit, pipe.vae

    def init_params(rng):
        r1, r2, r3 = jax.random.split(rng, 3)
        dummy = tokenize_prompts(["a"], pipe.tokenizer, pipe.conditioner_cfg)
        cond_params = conditioner.init(r1, **dummy)["params"]
        ctx, mask, pooled = jax.eval_shape(lambda: conditioner.apply({"params": cond_params}, **dummy))
        lat = jnp.zeros((1,) + pipe.latent_shape(height, width))
        cond_channels = pipe.mmdit_cfg.cond_channels
        extra = {"cond_latents": jnp.zeros(lat.shape[:3] + (cond_channels,))} if cond_channels else {}
        mmdit_params = mmdit.init(r2, lat, jnp.zeros((1,)), jnp.zeros(ctx.shape), jnp.ones(mask.shape, bool),
                                  jnp.zeros(pooled.shape), **extra)["params"]
        vae_params = vae.init(r3, jnp.zeros((1, height, width, 3)))["params"]
        full = {"conditioner": cond_params, "mmdit": mmdit_params, "vae": vae_params}
        return split_params(full, list(s.frozen))

    def loss_fn(params, frozen, batch, rng):
        b = DiffusionBatch.from_dict(batch)
        p = merge_params(params, frozen)
        enc_rng, fm_rng = jax.random.split(rng)
        if b.image is None:
            mean, logvar = b.latent_mean, b.latent_logvar
        else:
            mean, logvar = vae.apply({"params": p["vae"]}, b.image, method=vae.encode)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(enc_rng, mean.shape)
        x0 = jax.lax.stop_gradient(scale_latents(z, pipe.vae_cfg)).astype(jnp.float32)
        f = pipe.vae_cfg.downsample_factor
        mu = pipe.mu(x0.shape[1] * f, x0.shape[2] * f)  # this batch's pixels (its bucket), not the base size
        if b.text_context is None:
            cond = pipe.encode(p, b.tokens())
        else:  # the frozen conditioner's outputs, from the text cache
            dt = compute_dtype(pipe.conditioner_cfg.dtype)
            cond = {"context": b.text_context.astype(dt), "mask": b.text_mask.astype(bool),
                    "pooled": b.text_pooled.astype(dt)}
        if b.style_tags is not None:  # fold_in: the other draws stay those of a run without tags
            tag_rng = jax.random.fold_in(rng, 1)
            cond = {**cond, "style_tags": style_tags_lib.drop(tag_rng, b.style_tags.astype(jnp.int32),
                                                              float(s.get("tag_drop_prob", 0.0)))}
        if b.cond_latents is not None:  # a refiner's conditioning latent (stages/refiner.py)
            cond = {**cond, "cond_latents": b.cond_latents.astype(jnp.float32)}
        return flow_matching_loss(lambda x, t: pipe.velocity(p, x, t, cond), x0, fm_rng, mu=mu,
                                  time_mean=float(s.time_mean), time_std=float(s.time_std))

    return init_params, loss_fn


def conditioning_batch_fn(pipe: TextToImage, fixed_tags=None):
    """Images-source batch -> ``DiffusionBatch`` fields (a dict, as the loop places dicts): keeps the
    pixels or posteriors and the text cache's outputs, and where no text cache served the batch
    tokenises its captions ([str] * b) for the conditioner. Style tags, where the batch has them:
    ``fixed_tags`` (a row [A], the config's tags) set over each record's, and the style attributes
    of rows whose caption was dropped for CFG cleared (the unconditional input has no tags)."""
    keep = PIXEL_FIELDS + CACHED_TEXT_FIELDS

    def batch_fn(batch):
        out = {k: v for k, v in batch.items() if k in keep}
        if "style_tags" in batch:
            tags = batch["style_tags"] if fixed_tags is None else style_tags_lib.merge(batch["style_tags"], fixed_tags)
            out["style_tags"] = style_tags_lib.zero_dropped_captions(tags, batch["caption"])
        if "text_context" in batch:
            return out
        return {**out, **tokenize_prompts([str(c) for c in batch["caption"]], pipe.tokenizer, pipe.conditioner_cfg)}

    return batch_fn


def image_data(cfg, workdir: str, stage_cfg, pipe: TextToImage, vae_source, *, style_tags: bool = False,
               fixed_tags=None):
    """The stage's batches from its data section (``common.stage_data_cfg``), a source of
    ``data/sources.py`` yielding images. With the VAE frozen and loaded from ``vae_source`` they
    carry its posteriors instead of images: a synthetic world is encoded once at start, an
    ArrayRecord dataset reads its latent cache when it has one; an ArrayRecord dataset also reads
    the text cache when the conditioner is frozen and one is present (``stages/record_data.py``).
    ``style_tags``: batches carry each record's style tags, ``fixed_tags`` (a row [A]) set over them
    (``conditioning_batch_fn``)."""
    data_cfg = common.stage_data_cfg(cfg, stage_cfg)
    fmt = data_sources.lookup(str(data_cfg.format), yields="images")
    frozen_vae = "vae" in [p.strip("/") for p in stage_cfg.frozen] and bool(vae_source)
    options = {"style_tags": True} if style_tags else {}
    if fmt.name == "synthetic" and frozen_vae:
        vae_params = load_component(vae_source, "vae")[0]
        options["encode"] = lambda images: vae_stage.encode_images(pipe.vae, vae_params, images)
    if fmt.name == "arrayrecord":
        options["cache"] = record_data.open_latent_cache(data_cfg, workdir, vae_source) if frozen_vae else None
        options["text_cache"] = record_data.open_text_cache(cfg, workdir, stage_cfg)
    return fmt.open(data_cfg, workdir, int(stage_cfg.train.batch_size),
                    batch_fn=conditioning_batch_fn(pipe, fixed_tags), **options)


def build_task(cfg, stage_cfg, workdir: str) -> loop.Task:
    """The flow-matching Task of this stage (its data, model functions, init_from and evaluation)."""
    s = stage_cfg
    pipe, _, _ = build_pipeline(cfg, workdir, s)
    sources = parse_sources(s.init_from, workdir)
    data = image_data(cfg, workdir, s, pipe, sources["vae"][0] if "vae" in sources else None)
    height, width = data.image_size
    init_params, loss_fn = model_functions(pipe, s, height, width)
    prompts = list(s.eval_prompts)

    def evaluate(state, step):
        p = merge_params(state.ema_params or state.params, state.frozen)
        pics = pipe(p, prompts, height=height, width=width, num_steps=int(s.eval_steps), solver=cfg.sample.solver,
                    guidance_scale=float(cfg.sample.guidance_scale))
        return {"samples": image_grid(list(pics), prompts, columns=min(4, len(prompts)), scale=2)}

    return loop.Task(name="pretrain", init_params=init_params, loss_fn=loss_fn, data=data, init_sources=sources,
                     evaluate=evaluate if prompts else None)


def describe(cfg, stage_cfg, workdir: str, stage_dir: str, finished=None):
    """Conditioner, MMDiT and VAE configs, the time-shift rule and the tokenizer."""
    pipe, _, _ = build_pipeline(cfg, workdir, stage_cfg)
    return StageDescription(
        components={"conditioner": (Conditioner, pipe.conditioner_cfg), "mmdit": (MMDiT, pipe.mmdit_cfg),
                    "vae": (AutoencoderKL, pipe.vae_cfg)},
        schedule=dict(pipe.shift), tokenizer=tokenizer_record(cfg.tokenizer.format,
                                                              common.resolve(workdir, cfg.tokenizer.path)))
