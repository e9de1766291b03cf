"""Building blocks of the configs in ``configs/``: model size presets and stage defaults.

``configs/<name>.py`` files call ``base_config(size)`` and override what they need; every
value can also be overridden on the command line (``--config.train.steps=100``).

Model sizes (parameter counts: ``python tools/param_count.py``):
  tiny  - trains on a 2-core CPU in minutes: 64 px images, a 4x VAE, a ~2M-parameter DiT.
  small - one GPU: ~300M-parameter DiT (6 double + 6 single blocks, width 1024), a
          Qwen2.5-0.5B-shaped LLM, byt5-small, a 16-channel 8x VAE; 512 px.
  full  - near Seedream 2.0's scale: a ~2.8B-parameter DiT (10 double + 20 single blocks,
          width 2048, 16 heads of 128), a Qwen2.5-7B-shaped LLM (the report's LLM is
          ByteDance's own bilingual decoder-only model; Qwen2.5-7B is the closest open
          bilingual LLM and loads directly), byt5-small, a Flux-style 16-channel 8x VAE.
          The report does not publish its DiT size; 2-3B is what its description implies.
"""
import ast
import os
import runpy
from typing import Optional, Sequence

from ml_collections import ConfigDict


def _llm(vocab, hidden, inter, layers, heads, kv, theta=1e6):
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, rope_theta=theta, rms_norm_eps=1e-6)


def _byt5(d_model, d_kv, d_ff, layers, heads, buckets=32, max_distance=128):
    return dict(vocab_size=384, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_heads=heads,
                relative_attention_num_buckets=buckets, relative_attention_max_distance=max_distance)


def _vae(blocks, layers_per_block, latent_channels, groups):
    return dict(block_out_channels=tuple(blocks), layers_per_block=layers_per_block,
                latent_channels=latent_channels, norm_num_groups=groups,
                scaling_factor=1.0, shift_factor=0.0)


def _mmdit(heads, head_dim, double, single, axes_dims, latent_channels, context_dim, base_grid):
    return dict(in_channels=latent_channels, patch_size=2, num_heads=heads, head_dim=head_dim,
                num_double_blocks=double, num_single_blocks=single, mlp_ratio=4.0,
                context_dim=context_dim, pooled_dim=context_dim, axes_dims=tuple(axes_dims),
                rope_theta=10000.0, rope_rule="scaled", rope_base_grid=base_grid, text_ids="diagonal", image_pos_embed="none",
                # style (aesthetic) adapter, models/style_adapter.py: () = none; e.g. (3, 4, 3, 3, 1) for the ct stage
                style_tag_sizes=(), style_dim=min(256, heads * head_dim // 2))


MODEL_SIZES = {
    "tiny": dict(
        resolution=64,
        llm=_llm(vocab=1024, hidden=128, inter=256, layers=2, heads=4, kv=2, theta=10000.0),
        adapter="none", adapter_layers=1,
        byt5=_byt5(d_model=64, d_kv=16, d_ff=128, layers=2, heads=4, buckets=16, max_distance=32),
        context_dim=128, llm_max_length=48, byt5_max_length=16,
        vae=_vae((16, 32, 32), 1, 4, 8),
        mmdit=_mmdit(4, 32, 2, 2, (8, 12, 12), 4, 128, base_grid=8)),
    "small": dict(
        resolution=512,
        llm=_llm(vocab=151936, hidden=896, inter=4864, layers=24, heads=14, kv=2),
        adapter="transformer", adapter_layers=2,
        byt5=_byt5(d_model=1472, d_kv=64, d_ff=3584, layers=12, heads=6),
        context_dim=1024, llm_max_length=256, byt5_max_length=128,
        vae=_vae((128, 256, 512, 512), 2, 16, 32),
        mmdit=_mmdit(8, 128, 6, 6, (16, 56, 56), 16, 1024, base_grid=32)),
    "full": dict(
        resolution=1024,
        llm=_llm(vocab=152064, hidden=3584, inter=18944, layers=28, heads=28, kv=4),
        adapter="transformer", adapter_layers=2,
        byt5=_byt5(d_model=1472, d_kv=64, d_ff=3584, layers=12, heads=6),
        context_dim=2048, llm_max_length=256, byt5_max_length=128,
        vae=_vae((128, 256, 512, 512), 2, 16, 32),
        mmdit=_mmdit(16, 128, 10, 20, (16, 56, 56), 16, 2048, base_grid=32)),
}


def model_config(size: str) -> ConfigDict:
    """The ``model`` section for a size preset ('tiny', 'small', 'full')."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(MODEL_SIZES)}")
    return ConfigDict(dict(MODEL_SIZES[size], dtype="float32", attention_impl=None, remat_policy="none"))


def non_mmdit_attention_impl(impl):
    """The kernel of every attention but the MMDiT's for ``model.attention_impl = impl``.

    Splash (TPU Pallas) runs the MMDiT's joint attention, where the attention FLOPs are. The text
    encoders (causal mask with its diagonal, T5's position bias: Splash cannot serve them) and the
    VAE (one head as wide as its channels, not proven on the kernel) keep XLA there, cuDNN on GPU.
    """
    return None if impl in ("splash", "splash_interpret") else impl


def build_model_configs(model: ConfigDict):
    """Turn the ``model`` config section into the model dataclasses.

    Returns (ConditionerConfig, MMDiTConfig, VAEConfig).
    """
    from seedream_jax.models.byt5 import ByT5Config
    from seedream_jax.models.conditioner import ConditionerConfig
    from seedream_jax.models.mmdit import MMDiTConfig
    from seedream_jax.models.text_encoder import Qwen2Config, TextEncoderConfig
    from seedream_jax.models.vae import VAEConfig

    common = dict(dtype=model.dtype)
    attn = dict(attention_impl=non_mmdit_attention_impl(model.attention_impl))
    llm = Qwen2Config(**model.llm.to_dict(), **common, **attn)
    text_encoder = TextEncoderConfig(llm=llm, adapter=model.adapter, adapter_layers=model.adapter_layers)
    byt5 = ByT5Config(**model.byt5.to_dict(), **common, **attn) if model.byt5 is not None else None
    conditioner = ConditionerConfig(text_encoder=text_encoder, byt5=byt5, context_dim=model.context_dim,
                                    llm_max_length=model.llm_max_length,
                                    byt5_max_length=model.byt5_max_length, **common)
    mmdit = MMDiTConfig(**model.mmdit.to_dict(), remat_policy=model.remat_policy, **common,
                        attention_impl=model.attention_impl)
    vae = VAEConfig(**model.vae.to_dict(), **common, **attn)
    return conditioner, mmdit, vae


def train_section(**overrides) -> ConfigDict:
    """Loop settings of one stage (``<stage>.train``)."""
    return ConfigDict(dict(dict(
        steps=1000, batch_size=32, seed=0, log_every=50, eval_every=0, checkpoint_every=500,
        keep_checkpoints=2, ema_decay=0.999, async_checkpoint=True, self_contained=False), **overrides))
    # ema_decay: the ceiling of the warmed-up EMA rule min(ema_decay, (1 + step) / (10 + step))
    # (training/state.ema_decay_at); 0 = no EMA. self_contained: False = frozen components taken whole
    # from init_from sources (a VAE, an LLM, a reference DiT) are not re-saved in every checkpoint but
    # read from their source at the recorded step (<stage dir>/frozen_sources.json; the source must keep
    # that step); True = everything in the checkpoints, a copy that needs no other stage. Decided at a
    # stage's fresh start; a resume keeps it.


def optimizer_section(**overrides) -> ConfigDict:
    """AdamW settings of one stage (``<stage>.optimizer``); ``groups`` ({name: {pattern, lr}}),
    ``freeze`` (path regexes) and ``flatten`` (one flat AdamW update per group, unsharded
    parameters only) are described in ``training/optimizer.py``."""
    return ConfigDict(dict(dict(
        lr=3e-4, warmup_steps=100, final_lr_fraction=0.1, b1=0.9, b2=0.99, eps=1e-8,
        weight_decay=0.01, grad_clip_norm=1.0, groups=ConfigDict(), freeze=(), flatten=False), **overrides))


def data_section(**overrides) -> ConfigDict:
    """A ``data`` section: the run-wide ``cfg.data`` or a stage's own ``<stage>.data``, which then
    replaces ``cfg.data`` for that stage (``stages/common.stage_data_cfg``).

    ``format`` names a source of ``seedream_jax/data/sources.py``: "synthetic" (the in-memory world
    in ``dir``, the tiny default), "arrayrecord" (a record dataset at ``path`` read by the Grain
    pipeline, seedream_jax/data/pipeline.py, with aspect-ratio buckets of base resolution
    ``image_size``, the latent cache in ``cache_dir`` or ``<path>-latents`` and the text cache in
    ``text_cache_dir`` or ``<path>-text`` when present), "prompts" (``prompts`` or the text/JSONL
    file ``path``), "pairs" (text preference pairs, JSONL ``path``), "image_pairs" (image preference
    pairs ingested by ``tools/ingest.py`` into a record dataset at ``path``, ``data/preference.py``)
    or "text" (prompt -> rewrite pairs: ``path`` 'world' for the synthetic world's first ``num_images``
    train pairs, ``data/rewrite_pairs.py``, of which a share ``rewrite_style_probability`` has a
    styled scene rewritten to its style caption, the others to their long layout caption; or a
    JSONL file of {"prompt", "rewrite"} rows).
    An override of a key the section does not have raises KeyError naming it.
    """
    section = ConfigDict(dict(
        dir="data/synthetic",            # relative paths are inside --workdir
        num_images=2000, image_size=MODEL_SIZES["tiny"]["resolution"], seed=0,
        caption_languages=("en", "zh"), language_probs=(0.5, 0.5),
        # the scene mix of the synthetic world (data/synthetic.py SyntheticWorldConfig)
        world=ConfigDict(dict(max_objects=4, object_count_weights=(), text_probability=0.4,
                              zh_text_probability=0.5, vertical_text_probability=0.2, same_probability=0.3,
                              group_probability=0.0, shuffle_objects=False)),
        caption_types=("short", "long"), caption_type_probs=(0.5, 0.5),
        cfg_drop_prob=0.1,
        format="synthetic", path="", cache_dir="", text_cache_dir="",
        bucket_multiple=32, bucket_max_ratio=3.0, random_crop=True, flip_prob=0.0,
        num_workers=0,                   # Grain reader threads decoding records (0 = inline)
        prompts=(),                      # format "prompts": the prompt list (else read from ``path``)
        rewrite_style_probability=0.5))  # format "text", path "world": share of pairs rewritten to a style
    return _updated("data_section", section, overrides)


def world_variant(data: ConfigDict, dir: str, world: dict, **fields) -> ConfigDict:
    """A data section like ``data`` (``data_section``'s keys) that writes to ``dir``, with the
    synthetic world's settings in ``world`` and the section's ``fields`` replaced: a curriculum's
    own world (single objects, every scene with a word, ...)."""
    merged = dict(data.world.to_dict(), **world)
    return data_section(**dict(data.to_dict(), dir=dir, world=ConfigDict(merged), **fields))


def _updated(name: str, section: ConfigDict, overrides: dict) -> ConfigDict:
    """``section`` with ``overrides`` set; a key it does not have raises KeyError naming ``name``."""
    unknown = sorted(set(overrides) - set(section.keys()))
    if unknown:
        raise KeyError(f"{name}: unknown keys {unknown} (have {sorted(section.keys())})")
    section.update(overrides)
    return section


def reward_section(**overrides) -> ConfigDict:
    """The ``reward`` stage (``stages/reward.py``): the image-text alignment reward model.

    model: the two towers (``models/rewards.AlignmentRewardConfig``); ``llm`` is the text tower's
    Qwen2 shape, by default a small one trained from scratch (``base_config`` gives it the run's
    vocabulary). To start it from the pretrain stage's LLM, give it that shape and name the source:
    ``c.reward.model.llm = ConfigDict(c.model.llm.to_dict())`` and ``c.reward.init_from =
    ConfigDict({'alignment/text/llm': 'pretrain:conditioner/text_encoder/llm'})``. pairs: world
    preference pairs (``data/world_pairs.py``): ``train_scenes`` train pairs cycled through, of the
    perturbation kinds (colour, shape, count, position, relation, text) in the integer proportions
    ``kind_weights`` (count and position are learnt first, so they get less),
    ``heldout_per_kind`` held-out pairs per perturbation kind measured at the end, ``eval_per_kind``
    per periodic evaluation (``train.eval_every``). frozen: path prefixes not trained (e.g.
    'alignment/text/llm'). speed_batch: images per call when timing the scorer. ranked: pairs of two
    images for one caption, one preferred (``stages/reward.py``), round(``fraction`` * batch_size)
    of them per batch (a number that must split over the mesh's batch axes like the batch), loss
    weight ``weight``; from a user's pair dataset (``path``, ``tools/ingest.py`` of a preference
    file) or from a generator (``generated``, ``stages/ranked_samples.py``; off while ``source`` is
    ""): ``source`` a pretrain-kind stage (a name in the workdir or a path) whose EMA model draws
    ``per_caption`` images for each of ``captions`` train captions of the run's world
    (``num_steps`` sampler steps, ``guidance_scale``, ``batch_size`` images per call, noise from
    ``seed``), every two images of a caption whose graded objective scores differ by more than
    ``min_gap`` make a pair, and ``heldout_captions`` held-out captions' samples are measured at the
    end; ``calibration_rows`` > 0 adds that many of those images per batch, each with its own caption,
    ranked across captions by their scores with loss weight ``calibration_weight`` (``stages/reward.py``;
    a number that must split over the mesh's batch axes, at most the batch size). Unknown keys raise
    KeyError.
    """
    section = ConfigDict(dict(
        kind="reward",
        train=train_section(steps=1100, batch_size=32, log_every=50, checkpoint_every=250, ema_decay=0.99),
        optimizer=optimizer_section(lr=3e-3, warmup_steps=30, weight_decay=0.01),
        model=ConfigDict(dict(llm=ConfigDict(_llm(vocab=1024, hidden=64, inter=128, layers=2, heads=4, kv=2,
                                                  theta=10000.0)),
                              image_size=MODEL_SIZES["tiny"]["resolution"], patch_size=4, image_channels=(32, 64),
                              groups=8, embed_dim=256, max_length=64, init_temperature=0.07, dtype="float32")),
        pairs=ConfigDict(dict(seed=0, train_scenes=100_000, heldout_per_kind=200, eval_per_kind=20,
                              languages=("en", "zh"), kind_weights=(2, 3, 1, 1, 2, 3))),
        contrastive_weight=1.0, ranking_weight=1.0,
        ranked=ConfigDict(dict(fraction=0.5, weight=1.0, path="", generated=ConfigDict(dict(
            source="", captions=512, per_caption=4, min_gap=0.0, heldout_captions=64, num_steps=20,
            guidance_scale=4.0, batch_size=32, seed=0, calibration_rows=0, calibration_weight=1.0)))),
        frozen=(), init_from=ConfigDict(), speed_batch=64))
    return _updated("reward_section", section, overrides)


def aesthetic_section(**overrides) -> ConfigDict:
    """The ``aesthetic`` stage (``stages/aesthetic.py``): the aesthetic/structure reward model.

    model: its image tower (``models/rewards.ImageTowerConfig``; a scalar head reads it). pairs:
    clean world renderings over degraded copies (``data/degradations.py``): ``train_scenes`` train
    scenes cycled through, the degradations (blur, noise, jpeg, colour_cast, low_contrast,
    broken_shape, clutter) in the integer proportions ``kind_weights``, ``heldout_per_kind``
    held-out pairs per kind measured at the end, ``eval_per_kind`` per periodic evaluation
    (``train.eval_every``). The scene mix is the run's ``data.world`` (or the stage's own
    ``aesthetic.data = data_section(...)``). generated_from: a pretrain stage directory (a name in
    the workdir or an absolute path; "" = off) whose EMA model draws ``generated_count`` images
    (at ``generated_size`` px, 0 = model.image_size, with ``generated_num_steps`` sampler steps,
    guidance ``generated_guidance_scale``, ``generated_batch_size`` per call) for world captions:
    the kind ``generated`` (its rendering preferred), ``generated_weight`` times per cycle, and
    ``heldout_per_kind`` more for the held-out table. frozen, init_from: as in every training
    stage. speed_batch: images per call when timing the scorer. Unknown keys raise KeyError.
    """
    section = ConfigDict(dict(
        kind="aesthetic",
        train=train_section(steps=400, batch_size=32, log_every=50, checkpoint_every=200, ema_decay=0.99),
        optimizer=optimizer_section(lr=3e-3, warmup_steps=30, weight_decay=0.01),
        model=ConfigDict(dict(image_size=MODEL_SIZES["tiny"]["resolution"], patch_size=4, image_channels=(32, 64),
                              groups=8, embed_dim=128, dtype="float32")),
        pairs=ConfigDict(dict(seed=0, train_scenes=100_000, heldout_per_kind=200, eval_per_kind=20,
                              kind_weights=(1, 1, 1, 1, 1, 1, 1))),
        generated_from="", generated_count=256, generated_weight=1, generated_size=0, generated_num_steps=28,
        generated_guidance_scale=4.0, generated_batch_size=16,
        frozen=(), init_from=ConfigDict(), speed_batch=64))
    return _updated("aesthetic_section", section, overrides)


def glyph_align_section(byt5: ConfigDict, **overrides) -> ConfigDict:
    """The ``glyph_align`` stage (``stages/glyph_align.py``): Glyph-ByT5 alignment of the ByT5 branch.

    model: the aligner (``models/glyph.GlyphAlignConfig``); ``byt5`` is the text side's shape, the
    conditioner's ``model.byt5`` (``base_config`` passes it), so ``pretrain.init_from`` can take
    ``{'conditioner/byt5': 'glyph_align:glyph/byt5'}``. examples (``data/glyph_pairs.py``):
    ``train_examples`` train examples cycled through, shares of two-word texts (``two_words``),
    random strings (``random_text``) and neutral templates (``neutral_probability``);
    ``heldout`` held-out examples measured at the end, ``eval_count`` per periodic evaluation
    (``train.eval_every``). frozen, init_from: as in every training stage. speed_batch: images per
    call when timing the text-rendering scorer. Unknown keys raise KeyError.
    """
    section = ConfigDict(dict(
        kind="glyph_align",
        train=train_section(steps=3000, batch_size=32, log_every=50, checkpoint_every=500, ema_decay=0.99),
        optimizer=optimizer_section(lr=2e-3, warmup_steps=50, weight_decay=0.01),
        model=ConfigDict(dict(byt5=ConfigDict(byt5.to_dict()), image_size=MODEL_SIZES["tiny"]["resolution"],
                              image_channels=(32, 64), groups=8, roi_size=(3, 12), embed_dim=128, max_length=64,
                              init_temperature=0.07, dtype="float32")),
        examples=ConfigDict(dict(seed=0, train_examples=200_000, two_words=0.3, random_text=0.3,
                                 neutral_probability=0.25, heldout=400, eval_count=64)),
        frozen=(), init_from=ConfigDict(), speed_batch=64))
    return _updated("glyph_align_section", section, overrides)


def rlhf_section(**overrides) -> ConfigDict:
    """The ``rlhf`` stage (``stages/rlhf.py``): reward fine-tuning of the DiT from a trained stage.

    method: 'refl' (ReFL: sample without gradient to a random step of ``refl.window``, one
    gradient step predicting x0, decode, score), 'draft' (DRaFT-K: gradient through the sampler's
    last ``draft.k`` steps) or 'grpo' (Flow-GRPO: SDE rollouts, ``grpo.group_size`` images per
    prompt, group-normalised advantages, PPO clipping, KL to a frozen reference copy of the DiT).
    init_from: {component: stage} (``checkpoint/init_from.py``); the pipeline's model configs,
    time shift and tokenizer are the ``mmdit`` source stage's (its stage.json). frozen: path
    prefixes not trained (the DiT trains by default; drop 'conditioner' or name its parts, e.g.
    ('vae', 'conditioner/text_encoder/llm', 'conditioner/byt5'), to also train the adapter and
    projection). prompts: a data section yielding prompts: format 'synthetic' takes every caption
    (``prompts.caption_languages`` x ``prompts.caption_types``) of the world in ``prompts.dir``,
    format 'prompts' a list or a text/JSONL file; prompts over the LLM's token limit are skipped
    and counted. prompt_kind_repeats: the world's prompt mix, times each scene's captions are
    listed by its number of distinct (colour, shape) object kinds (entry k-1 for k kinds, the last
    entry for more; 0 drops them; () lists each once), e.g. (1, 3) triples the two-object binding
    and group scenes. train.batch_size: prompts per step (GRPO samples group_size images of each).
    rewards: {name: weight} of the reward API (``seedream_jax/rewards``); reward_stages: {name:
    stage dir} of the learned ones to load (the loader follows the stage's kind: reward ->
    alignment, aesthetic, glyph_align -> text rendering); names without a stage must already be
    registered (``objective`` and ``objective_graded`` are). Each reward is logged every step as
    ``reward/<name>``.
    Sampler: num_steps, solver, guidance_scale (the rollouts' and the reward samples'; fewer than
    the sample stage's steps is Flow-GRPO's denoising reduction), height, width. reward_loss:
    'relu' (relu(reward_margin - r) * reward_weight) or 'neg' (-r * reward_weight), for refl and
    draft. flow_weight: weight of the flow-matching loss on the stage's image data (``rlhf.data``
    if given, else ``cfg.data``) at logit-normal(time_mean, time_std) times, a regulariser (0 = off).
    eval_prompts, eval_steps: the sample grid written every ``train.eval_every`` steps, with each
    reward of those images. Unknown keys raise KeyError.
    """
    section = ConfigDict(dict(
        kind="rlhf", method="refl",
        train=train_section(steps=200, batch_size=8, log_every=10, checkpoint_every=50, ema_decay=0.99),
        optimizer=optimizer_section(lr=2e-5, warmup_steps=10, weight_decay=0.0),
        init_from=ConfigDict(dict(conditioner="pretrain", mmdit="pretrain", vae="pretrain")),
        frozen=("vae", "conditioner"),
        prompts=data_section(format="synthetic", cfg_drop_prob=0.0), prompt_kind_repeats=(),
        rewards=ConfigDict(dict(alignment=1.0)),
        reward_stages=ConfigDict(dict(alignment="reward")),
        num_steps=20, solver="euler", guidance_scale=4.0,
        height=MODEL_SIZES["tiny"]["resolution"], width=MODEL_SIZES["tiny"]["resolution"],
        reward_loss="relu", reward_margin=2.0, reward_weight=1.0,
        flow_weight=0.0, time_mean=0.0, time_std=1.0,
        # ReFL: the gradient step's index on the num_steps grid, drawn uniformly in [first, last]
        # (ImageReward: steps 30..39 of 40, where the image is already legible)
        refl=ConfigDict(dict(window=(14, 19))),
        draft=ConfigDict(dict(k=1)),       # DRaFT-K: gradient through the last k sampler steps
        grpo=grpo_settings(),
        eval_prompts=(), eval_steps=20))
    return _updated("rlhf_section", section, overrides)


def grpo_settings(preset: str = "flow_grpo") -> ConfigDict:
    """The ``rlhf.grpo`` settings of a preset.

    'flow_grpo' (Liu et al. 2025, SD3.5-M GenEval): noise level eta 0.7 in sigma_t = eta
      sqrt(t / (1 - t)), 8 images per prompt (the paper: 24), training on int(0.99 * num_steps)
      random denoising steps, PPO clip range 1e-4 on per-element log-probabilities, advantages
      clipped to +-5, KL weight 0.004 to the reference, independent noise per image.
    'dance_grpo' (Xue et al. 2025, Flux/video, sparse or binary rewards): noise level 0.3, 12 images
      per prompt sharing their initial noise (so a group differs only by its SDE noise),
      int(0.6 * num_steps) random steps, clip 1e-4, advantages clipped to +-5, no KL term; use it
      with a binary reward such as ``objective`` (``dance_grpo_section``). DanceGRPO's own SDE has a
      constant diffusion coefficient; here the rollouts keep Flow-GRPO's sigma_t schedule.
    Fields: eta, group_size, train_fraction, clip_range, adv_clip (0 = none), adv_eps (the
    advantage's std floor), kl_weight, per_element (log-probabilities and KL averaged over the
    latent, not summed), same_noise (one initial noise per group), inner_steps (updates per
    rollout; ``train.steps`` must be a multiple of it).
    """
    presets = {
        "flow_grpo": dict(eta=0.7, group_size=8, train_fraction=0.99, clip_range=1e-4, adv_clip=5.0, adv_eps=1e-4,
                          kl_weight=0.004, per_element=True, same_noise=False, inner_steps=2),
        "dance_grpo": dict(eta=0.3, group_size=12, train_fraction=0.6, clip_range=1e-4, adv_clip=5.0, adv_eps=1e-4,
                           kl_weight=0.0, per_element=True, same_noise=True, inner_steps=2),
    }
    if preset not in presets:
        raise ValueError(f"unknown GRPO preset {preset!r}; expected one of {sorted(presets)}")
    return ConfigDict(presets[preset])


def dance_grpo_section(**overrides) -> ConfigDict:
    """An ``rlhf`` section with DanceGRPO's settings (``grpo_settings('dance_grpo')``) and the
    closed-world objective scorer's pass/fail as the (binary) reward; ``overrides`` as in
    ``rlhf_section``."""
    section = rlhf_section(method="grpo", num_steps=16)
    section.grpo = grpo_settings("dance_grpo")  # assignments replace (``update`` merges nested sections)
    section.rewards, section.reward_stages = ConfigDict(dict(objective=1.0)), ConfigDict()
    return _updated("dance_grpo_section", section, overrides)


# sample / eval through the cascade: ``refiner`` names a refiner stage ("" = the base alone); its
# sampler steps, guidance and strength, 0 = the ones the refiner stage recorded (stages/sample.py)
REFINER_OPTIONS = dict(refiner="", refiner_steps=0, refiner_guidance_scale=0.0, refiner_strength=0.0)
# sample / eval through the prompt rewriter: ``rewrite`` routes every prompt through the rewriter of
# stage ``rewriter`` (a pe_sft or pe_pref stage; greedy) before drawing (stages/sample.py, stages/eval.py)
REWRITER_OPTIONS = dict(rewrite=False, rewriter="pe_pref")


def base_config(size: str = "tiny") -> ConfigDict:
    """Defaults shared by every stage; a config file picks stages and overrides values."""
    c = ConfigDict()
    c.stages = ("data", "tokenizer", "vae", "pretrain", "sample")
    c.model = model_config(size)
    c.data = data_section(image_size=c.model.resolution)  # run-wide; a stage may have its own <stage>.data
    c.tokenizer = ConfigDict(dict(
        format="sentencepiece",          # or "hf": a local directory holding an HF tokenizer
        path="tokenizer/spm.model",      # sentencepiece model (trained by the tokenizer stage) or HF dir
        vocab_size=c.model.llm.vocab_size))
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.distributed = ConfigDict(dict(  # multi-process start-up (seedream_jax/parallel/distributed.py)
        mode="auto",                     # "auto" | "single" | "cluster" (JAX auto-detects SLURM / Open MPI / TPU)
        coordinator_address="",          # "host:port" of process 0; "" = from the environment / auto-detect
        num_processes=0, process_id=-1,  # needed with coordinator_address
        local_device_ids=(),             # () = all devices this process sees
        initialization_timeout=300))     # seconds to wait for every process to join
    c.sharding = ConfigDict(dict(rules="fsdp"))
    c.vae = ConfigDict(dict(
        train=train_section(steps=400, batch_size=16, ema_decay=0.0),
        optimizer=optimizer_section(lr=2e-3, warmup_steps=40),
        crop_size=32,                   # train on random crops (the VAE is fully convolutional); 0 = full images
        kl_weight=1e-4, l1_weight=1.0, mse_weight=1.0, num_eval_images=8))
    c.pretrain = ConfigDict(dict(
        train=train_section(steps=1500, batch_size=32),
        optimizer=optimizer_section(lr=5e-4, warmup_steps=100),
        frozen=("vae",),                # path prefixes not trained, e.g. "conditioner/text_encoder/llm"
        init_from=ConfigDict(dict(vae="vae")),  # component -> stage dir ("vae" = <workdir>/vae)
        time_mean=0.0, time_std=1.0,    # logit-normal t
        shift_base_tokens=256, shift_max_tokens=4096, shift_base=0.5, shift_max=1.15,
        eval_prompts=(), eval_steps=20))
    c.reward = reward_section()  # a stage when config.stages names it
    c.reward.model.llm.vocab_size = c.model.llm.vocab_size
    c.aesthetic = aesthetic_section()  # a stage when config.stages names it
    c.glyph_align = glyph_align_section(c.model.byt5)  # a stage when config.stages names it
    c.rlhf = rlhf_section(height=c.model.resolution, width=c.model.resolution)  # a stage when named
    c.ct = ct_section()  # a stage when config.stages names it
    c.sft = sft_section()  # a stage when config.stages names it
    c.refiner = refiner_section(hr_size=2 * c.model.resolution)  # a stage when config.stages names it
    c.pe_sft = pe_sft_section()  # a stage when config.stages names it
    c.pe_sft.model.llm.vocab_size = c.model.llm.vocab_size
    c.pe_pref = pe_pref_section(size=c.model.resolution)  # a stage when config.stages names it
    c.pe_pref.model.llm.vocab_size = c.model.llm.vocab_size
    c.sample = ConfigDict(dict(
        checkpoint="pretrain",          # stage dir to sample from
        use_ema=True, prompts=(), prompts_file="", num_steps=28, solver="euler", guidance_scale=4.0,
        height=c.model.resolution, width=c.model.resolution, seed=0, batch_size=8, output="samples",
        prompt_labels=(),               # optional label per prompt of sample.prompts, shown in the grid
                                        # as "[label] prompt" (e.g. "off-template"); "" = none
        style_tags=ConfigDict(), negative_scale=0.0,  # adapter stages (ct, sft): {attribute: value}
                                        # for every prompt, negative-tag guidance weight (stages/sample.py)
        **REFINER_OPTIONS, **REWRITER_OPTIONS))
    c.eval = ConfigDict(dict(
        checkpoint="pretrain",          # stage dir (absolute: another run's; a VAE stage: ground truth round trip)
                                        # or "ground_truth" (the renderer itself)
        use_ema=True, num_steps=28, solver="euler", guidance_scale=4.0,
        height=c.model.resolution, width=c.model.resolution, seed=0, batch_size=8,
        suite_seed=0, max_items_per_group=0,  # first n items per (category, split); 0 = the whole suite
        style_tags=ConfigDict(), negative_scale=0.0,  # adapter stages (ct, sft), as in sample
        **REFINER_OPTIONS, **REWRITER_OPTIONS,  # with rewrite: raw and rewritten passes side by side
        prompt_caption="",              # "" = each suite item's own caption type; "short": every item's
                                        # short caption (the user-style prompt the rewriter expands)
        output="eval"))
    return c


def split_batches_over(c: ConfigDict, devices: int) -> ConfigDict:
    """``c`` with every stage section's ``train.batch_size`` rounded up to a multiple of ``devices``
    (the mesh's 'data' x 'fsdp', what a global batch is split over): the tiny-scale defaults of the
    post-training sections (rlhf and refiner 8, ct, sft, pe_pref and vae 16) do not split over 32
    chips, and the loop refuses a batch that does not split."""
    for section in c.values():
        train = section.get("train") if isinstance(section, ConfigDict) else None
        if isinstance(train, ConfigDict) and "batch_size" in train:
            train.batch_size = -(-int(train.batch_size) // devices) * devices
    return c


def apply_overrides(cfg: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """Set ``key.path=value`` items on ``cfg`` in place (values parsed as Python literals, else
    strings); an unknown key raises KeyError naming it. Returns ``cfg``."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        key, raw = key.strip(), raw.strip()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, last = key.split(".")
        node = cfg
        for k in parents:
            if k not in node:
                raise KeyError(f"override {key!r}: the config has no {k!r}")
            node = node[k]
        if last not in node:
            raise KeyError(f"override {key!r}: the config has no {last!r} (have {sorted(node.keys())})")
        node[last] = value
    return cfg


def load_run_config(config_file: Optional[str] = None, size: Optional[str] = None, overrides: Sequence[str] = ()):
    """A run config from ``configs/<name>.py`` (its ``get_config()``) or a size preset
    (``base_config(size)``), with ``key.path=value`` overrides (``apply_overrides``)."""
    if (config_file is None) == (size is None):
        raise ValueError("give exactly one of a config file or a size preset")
    if config_file is not None:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file} does not exist")
        namespace = runpy.run_path(config_file)
        if "get_config" not in namespace:
            raise ValueError(f"{config_file} defines no get_config()")
        cfg = namespace["get_config"]()
    else:
        cfg = base_config(size)
    return apply_overrides(cfg, overrides)


# ---- continued training and SFT (stages/ct.py, stages/sft.py)

def curation_section(**overrides) -> ConfigDict:
    """The quality filter of the ``ct`` / ``sft`` stages (``stages/ct.curation_filters``), each part
    off by default: ``min_side`` (pixels, 0 = off), ``max_aspect`` (0 = off), ``phash`` (perceptual
    dedup Hamming threshold in bits, -1 = off), ``reward`` (a name of the reward API, "" = off; its
    model loaded from the stage dir ``reward_stage`` when given) with ``min_reward`` (records
    scoring below are dropped), ``reward_batch`` images per call at ``reward_size`` px (0 = the
    data's image_size). ``output``: where CT writes the curated ArrayRecord dataset (inside the
    workdir; SFT keeps its small set in memory and ignores it). Unknown keys raise KeyError."""
    section = ConfigDict(dict(min_side=0, max_aspect=0.0, phash=-1, reward="", reward_stage="", min_reward=0.0,
                              reward_batch=32, reward_size=0, output="ct/curated"))
    return _updated("curation_section", section, overrides)


ADAPTER_PATTERN = r"mmdit/.*style_.*"  # every parameter of the MMDiT's style adapter


def _adapter_stage(kind: str, *, source: str, steps: int, log_every: int, checkpoint_every: int, lr: float,
                   warmup_steps: int, adapter_lr: float, **fields) -> ConfigDict:
    """What the ct and sft sections share: every component from stage ``source``, the adapter's
    own parameter group, the styled record world, VAE and conditioner frozen; plus ``fields``."""
    return ConfigDict(dict(
        kind=kind,
        train=train_section(steps=steps, batch_size=16, log_every=log_every, checkpoint_every=checkpoint_every,
                            ema_decay=0.99),
        optimizer=optimizer_section(lr=lr, warmup_steps=warmup_steps, final_lr_fraction=1.0,
                                    groups=ConfigDict(dict(adapter=ConfigDict(dict(pattern=ADAPTER_PATTERN,
                                                                                   lr=adapter_lr))))),
        init_from=ConfigDict(dict(conditioner=source, mmdit=source, vae=source)),
        keep_init=(ADAPTER_PATTERN,), frozen=("vae", "conditioner"), style_dim=0,
        data=data_section(format="arrayrecord", path="data/styled", bucket_max_ratio=1.0, random_crop=False),
        style_tags=ConfigDict(), tag_drop_prob=0.2, time_mean=0.0, time_std=1.0,
        eval_prompts=(), eval_style_tags=ConfigDict(), eval_steps=20, **fields))


def ct_section(**overrides) -> ConfigDict:
    """The ``ct`` stage (``stages/ct.py``): continued flow-matching training with the aesthetic adapter.

    init_from: {component: stage} (by default every component of ``<workdir>/pretrain``); the
    pipeline (model configs, time shift, tokenizer) is the ``mmdit`` source's, its MMDiT given the
    style adapter of width ``style_dim`` (0 = ``model.mmdit.style_dim``). keep_init: path regexes
    of parameters the source may lack that keep their initialisation (the zero-initialised adapter).
    frozen: path prefixes not trained. data: the styled world written by a 'data' stage with an
    arrayrecord section (``configs/tiny_ct.py``) or any image data section; curation: its quality
    filter (``curation_section``). style_tags: {attribute: value} set on every record (a dataset of
    one style; {} = each record's own). tag_drop_prob: chance each style attribute of a row is
    dropped (guidance). optimizer.groups.adapter: the adapter's own learning rate. eval_prompts,
    eval_style_tags, eval_steps: the grid written every ``train.eval_every`` steps, each prompt
    without and with those tags. Unknown keys raise KeyError.
    """
    section = _adapter_stage("ct", source="pretrain", steps=300, log_every=25, checkpoint_every=100, lr=2e-4,
                             warmup_steps=20, adapter_lr=1e-3, curation=curation_section())
    return _updated("ct_section", section, overrides)


def sft_section(**overrides) -> ConfigDict:
    """The ``sft`` stage (``stages/sft.py``): fine-tuning on a small curated set with generated negatives.

    init_from, keep_init, frozen, style_dim, style_tags, tag_drop_prob: as in ``ct_section`` (by
    default from ``<workdir>/ct``). data + curation: the curated set (its first ``max_records``
    records kept by the filter; 0 = all). negative_share: fraction of every batch drawn from the
    starting model's own images for the same prompts, trained with the tag source=generated
    (0 = plain SFT). generate: how those are made at stage start (sampler steps, solver,
    guidance, seed of image i = seed + i, batch size) and ``output`` (.npz in the workdir, reused
    when the model and settings match). eval_prompts, eval_style_tags, eval_negative_scale,
    eval_steps: the periodic grid. Unknown keys raise KeyError.
    """
    section = _adapter_stage(
        "sft", source="ct", steps=100, log_every=10, checkpoint_every=50, lr=5e-5, warmup_steps=10, adapter_lr=2e-4,
        curation=curation_section(output=""), max_records=256, negative_share=0.25,
        generate=ConfigDict(dict(num_steps=20, solver="euler", guidance_scale=4.0, seed=0, batch_size=16,
                                 output="sft/generated.npz")),
        eval_negative_scale=1.0)
    return _updated("sft_section", section, overrides)


# ---- the refiner (stages/refiner.py)

GROWN_EMBEDDING = r"mmdit/x_embedder/kernel"  # the refiner's patch embedding, widened for its cond channels


def refiner_section(**overrides) -> ConfigDict:
    """The ``refiner`` stage (``stages/refiner.py``): a second MMDiT for ``scale``-times super-resolution.

    base: the stage whose pipeline (conditioner, VAE, tokenizer, time shift, MMDiT config) the
    refiner takes; init_from: {component: stage} (by default all three from ``base``); pad_init:
    path regexes of parameters grown from the source with zeros (the patch embedding's
    conditioning rows); keep_init: as in ``ct_section``; frozen: path prefixes not trained (must
    hold 'vae'). hr_size: the output (HR) size in px, the world rendered at it; scale: HR / LR side.
    degradation: the LR image's blur sigma (LR px), noise sigma (grey levels) and JPEG quality
    ranges (``data/sr_pairs.py``). max_records: the world's first scenes used (0 = all).
    time_mean, time_std: logit-normal training times. sample_steps, sample_solver,
    sample_guidance_scale, sample_strength: the refiner's sampler (its eval grid, and the cascade's
    default, recorded in stage.json; strength < 1 starts part-way from the upsampled image's latent,
    ``sampling/generate.refine``); num_eval_images: pairs in the grid written every ``train.eval_every`` steps.
    Data: the stage's own ``data`` section when set, else ``cfg.data`` (format 'synthetic').
    Unknown keys raise KeyError.
    """
    section = ConfigDict(dict(
        kind="refiner", base="pretrain", scale=2, hr_size=128,
        train=train_section(steps=1000, batch_size=8, log_every=25, checkpoint_every=250, ema_decay=0.99),
        optimizer=optimizer_section(lr=3e-4, warmup_steps=20, final_lr_fraction=1.0),
        init_from=ConfigDict(dict(conditioner="pretrain", mmdit="pretrain", vae="pretrain")),
        keep_init=(), pad_init=(GROWN_EMBEDDING,), frozen=("vae", "conditioner"),
        degradation=ConfigDict(dict(blur_sigma=(0.3, 1.0), noise_sigma=(0.0, 4.0), jpeg_quality=(60, 95))),
        max_records=0, time_mean=0.0, time_std=1.0,
        sample_steps=20, sample_solver="euler", sample_guidance_scale=1.0, sample_strength=1.0,
        num_eval_images=4))
    return _updated("refiner_section", section, overrides)


# ---- prompt engineering: the prompt rewriter (stages/pe_sft.py, stages/pe_pref.py)

def rewriter_model_section(vocab_size: int = 1024) -> ConfigDict:
    """The rewriter's causal LM (``models/causal_lm.CausalLMConfig``): ``llm`` a Qwen2 shape (the
    run's tokenizer must fit ``llm.vocab_size``), ``tie_word_embeddings``, compute ``dtype``. The
    default is a small 4-layer model for the tiny world; a real run loads a pretrained LLM through
    ``init_from`` ({'rewriter': '/path/to/stage'}) with that model's shape here."""
    return ConfigDict(dict(llm=ConfigDict(_llm(vocab=vocab_size, hidden=128, inter=384, layers=4, heads=4, kv=2,
                                               theta=10000.0)),
                           tie_word_embeddings=True, dtype="float32"))


def pe_sft_section(**overrides) -> ConfigDict:
    """The ``pe_sft`` stage (``stages/pe_sft.py``): supervised fine-tuning of the prompt rewriter.

    model: ``rewriter_model_section``. data: a ``text`` data section (``data_section(format='text')``):
    ``path`` 'world' (the synthetic world's exact pairs in both directions, ``num_images`` distinct
    train pairs of ``seed`` in ``caption_languages``, the scene mix ``world``) or a JSONL file of
    {"prompt", "rewrite"} rows (bad rows are skipped and counted). max_length: tokens of
    prompt + EOS + rewrite + EOS (longer pairs are cut and counted); max_prompt_length and
    max_new_tokens: the generation limits recorded with the stage (``sampling/rewriter.py``).
    init_from: {component: stage}, e.g. {'rewriter': 'other_stage'}. frozen: path prefixes not
    trained. eval: world prompts (``num_prompts`` per language of ``data.caption_languages`` and
    split, seed ``data.seed + 1``) rewritten greedily at the end and checked for content
    preservation (``eval/prompt_content.py``).
    Unknown keys raise KeyError.
    """
    section = ConfigDict(dict(
        kind="pe_sft", model=rewriter_model_section(),
        train=train_section(steps=3000, batch_size=32, log_every=50, checkpoint_every=500, ema_decay=0.99),
        optimizer=optimizer_section(lr=2e-3, warmup_steps=50, final_lr_fraction=0.1),
        data=data_section(format="text", path="world", num_images=50000),
        max_length=112, max_prompt_length=32, max_new_tokens=96,
        init_from=ConfigDict(), frozen=(),
        eval=ConfigDict(dict(num_prompts=64, batch_size=64))))
    return _updated("pe_sft_section", section, overrides)


def pe_pref_section(**overrides) -> ConfigDict:
    """The ``pe_pref`` stage (``stages/pe_pref.py``): SimPO on rewrites ranked by image rewards.

    init_from: the rewriter to start from ({'rewriter': 'pe_sft'}). image_model: the stage whose
    text-to-image pipeline draws each rewrite. prompts: ``num_prompts`` world short prompts per
    language (``seed``); ``num_rewrites`` (K) rewrites of each sampled at ``temperature``/``top_p``;
    each drawn with ``num_steps``/``guidance_scale`` at ``size`` px, the K images of a prompt from
    the same noise (seed ``seed + prompt index``). rewards: {name: weight} of the reward API, each
    scored against the user's prompt (the rewrite must keep what the user asked for), learned ones
    loaded from ``reward_stages`` {name: stage}; a rewrite that drops or changes the prompt's content
    (``eval/prompt_content.py``) ranks below every one that keeps it. The best and worst of the K
    form a pair (prompts whose K rewrites tie are skipped and counted). The set is built once at
    stage start and stored at ``output`` (reused while the models and settings match). simpo:
    ``beta``, ``gamma`` (``training/simpo.py``). train.steps: two epochs of the default set (256
    pairs / 16): SimPO has no reference model to hold the rewriter, and on the tiny run 200 steps
    (12 epochs) raised the reward further but kept the prompt's content in 0.46 of the rewrites
    instead of 0.88 (``benchmarks/RESULTS.md`` (i)). max_length etc. as in ``pe_sft_section``.
    Unknown keys raise KeyError.
    """
    section = ConfigDict(dict(
        kind="pe_pref", model=rewriter_model_section(),
        train=train_section(steps=32, batch_size=16, log_every=4, checkpoint_every=16, ema_decay=0.0),
        optimizer=optimizer_section(lr=1e-4, warmup_steps=4, final_lr_fraction=1.0, weight_decay=0.0),
        init_from=ConfigDict(dict(rewriter="pe_sft")), frozen=(),
        image_model="pretrain",
        prompts=ConfigDict(dict(seed=1, num_prompts=128, languages=("en", "zh"))),
        num_rewrites=4, temperature=1.0, top_p=0.95,
        num_steps=20, guidance_scale=4.0, size=MODEL_SIZES["tiny"]["resolution"], batch_size=16,
        rewards=ConfigDict(dict(objective=1.0)), reward_stages=ConfigDict(),
        simpo=ConfigDict(dict(beta=2.0, gamma=1.0)),
        max_length=112, max_prompt_length=32, max_new_tokens=96,
        output="pe_pref/preference_set.json",
        eval=ConfigDict(dict(num_prompts=64, batch_size=64))))
    return _updated("pe_pref_section", section, overrides)
