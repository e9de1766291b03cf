"""RLHF on a tiny workdir: Flow-GRPO on the closed-world graded objective reward, then the sample
grid and the objective eval of the result.

python -m seedream_jax.main --config configs/tiny_long.py --workdir runs/tiny_long   # first: the base (36 min)
python -m seedream_jax.main --config configs/tiny_rlhf.py --workdir runs/tiny_long   # then this (35 min)

The rlhf stage starts every component from ``<workdir>/pretrain`` (``rlhf.init_from``), trains the
DiT (the conditioner and the VAE stay frozen) on the short world captions of
``<workdir>/data/synthetic`` (both languages), and keeps a frozen reference copy of the DiT for the
KL term. Each rollout: 8 captions x 8 images, 8 SDE steps with CFG, 4 of them trained, 2 updates;
200 updates at lr 1e-4, PPO clip 1e-3, KL weight 0.01. Reward: the objective scorer's graded score
(``objective_graded``: the share of each claimed object's colour, shape, size that the image
shows, extra objects diluting it), which needs no trained reward model. The sample and eval stages
then read the ``rlhf`` stage directory (``sample.checkpoint`` / ``eval.checkpoint``); compare with
the base's eval (``eval/pretrain_step7000``), same prompts and seeds.

Measured on configs/tiny_long.py's base (benchmarks/RESULTS.md (e6); 9.9 s per update alone on 2
cores, so about 33 minutes for the stage), over eval seeds 0-2: count 0.383 -> 0.508, shape 0.382
-> 0.452, colour 0.993 -> 0.972, relation 0.198 -> 0.146 (a long-caption category, not trained
on), binding 0.031 -> 0.041, groups 0 -> 0.021. Trained on short and long captions instead
(``--config.rlhf.prompts.caption_types='("short", "long")'``) relation holds (0.209) and the gains
vanish (count 0.417, shape 0.389).

Variants on the command line or in a copy of this file:
  The exact-pass reward: ``"--config.rlhf.rewards={'objective': 1.0}"`` (sparse: RESULTS (e), (e4)).
  DanceGRPO: ``c.rlhf = config_lib.dance_grpo_section(...)`` (binary objective reward, shared
    noise per group, 60% of the steps, no KL).
  ReFL with the learned alignment reward: train the reward model first (stage ``reward``), then
    ``--config.rlhf.method=refl`` with ``c.rlhf.rewards = {'alignment': 1.0}`` and
    ``c.rlhf.reward_stages = {'alignment': 'reward'}`` (``c.stages = ('reward', 'rlhf', 'sample', 'eval')``);
    ``--config.rlhf.method=draft`` for DRaFT-K. On a single-device CPU process run ReFL and DRaFT
    with ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot``: the framework's default
    YNNPACK elementwise fusion (``dot,eltwise``) crashed XLA:CPU (segmentation fault) at their
    second update. Measured in RESULTS (e) and (e5): ReFL raised the reward it optimised while the
    objective eval fell (reward hacking: background stripes, a dot grid, extra objects).
"""
import os
import sys

from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402  (configs/tiny.py, whatever the working directory)


def get_config():
    c = tiny.get_config()
    c.stages = ("rlhf", "sample", "eval")
    r = c.rlhf
    r.method = "grpo"
    r.rewards, r.reward_stages = ConfigDict(dict(objective_graded=1.0)), ConfigDict()
    r.init_from = ConfigDict(dict(conditioner="pretrain", mmdit="pretrain", vae="pretrain"))
    r.prompts.caption_types = ("short",)  # the categories where the tiny bases are weakest
    r.num_steps = 8                       # rollouts: Flow-GRPO's denoising reduction (the eval samples 28)
    r.grpo.update(dict(train_fraction=0.5, clip_range=1e-3, kl_weight=0.01))
    r.refl.window = (5, 7)                # ReFL: the gradient step among the last 3 of those 8
    r.guidance_scale = c.sample.guidance_scale
    r.time_mean = c.pretrain.time_mean    # for a flow regulariser (flow_weight > 0), the pretrain times
    r.train.update(dict(steps=200, batch_size=8, log_every=2, checkpoint_every=100, eval_every=200))
    r.optimizer.update(dict(lr=1e-4, warmup_steps=5))
    r.eval_prompts = tiny.GRID_PROMPTS[:8]
    r.eval_steps = c.sample.num_steps
    c.sample.checkpoint = "rlhf"
    c.sample.output = "samples_rlhf"
    c.eval.checkpoint = "rlhf"
    return c
