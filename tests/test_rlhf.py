"""The rlhf stage: ReFL / DRaFT gradients against hand-unrolled samplers, GRPO's advantages and
clipped objective by hand, prompts, rewards in the graph, and tiny end-to-end runs (a colour reward
goes up, lr 0 keeps the reference, NaN rewards stop the run, preemption mid-rollout resumes exactly)."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from conftest import micro_config, write_random_pretrain_stage

from seedream_jax import config_lib, rewards
from seedream_jax.checkpoint.manager import restore_raw_state
from seedream_jax.data import prompt_data, synthetic as S
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.rewards import in_graph
from seedream_jax.sampling import sampler as sampler_lib
from seedream_jax.sampling import schedules, solvers
from seedream_jax.training import loop, rlhf_losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def redness(images):
    """Mean of R - (G + B) / 2 per image [B] of images in [-1, 1]."""
    return jnp.mean(images[..., 0] - 0.5 * (images[..., 1] + images[..., 2]), axis=(1, 2))


rewards.register("redness", in_graph.PixelReward(redness), differentiable=True, replace=True)
rewards.register("redness_host", lambda images, prompts: np.asarray(redness(jnp.asarray(images))),
                 differentiable=False, replace=True)
rewards.register("nan_reward", in_graph.PixelReward(lambda x: redness(x) * jnp.nan), differentiable=True, replace=True)


# ---------------------------------------------------------------- direct reward fine-tuning: gradients

def toy_velocity(params, x, t, cond):
    """A small MLP standing in for the DiT: v [B, 4, 4, 2] of x [B, 4, 4, 2], t [B], cond {'c': [B, 8]}."""
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + t[:, None] * params["wt"] + cond["c"] @ params["wc"])
    return (h @ params["w2"]).reshape(x.shape)


def toy_decode(x):
    """Latents [B, 4, 4, 2] -> 'images' [B, 4, 4, 3] in [-1, 1] (a fixed linear map and tanh)."""
    return jnp.tanh(jnp.einsum("bhwc,cd->bhwd", x, jnp.array([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]])))


def _toy_setup(batch=3, guidance=2.0, num_steps=4, eta=0.0):
    r = np.random.default_rng(0)
    params = {k: jnp.asarray(r.normal(0, 0.3, shape), jnp.float32)
              for k, shape in (("w1", (32, 16)), ("wt", (16,)), ("wc", (8, 16)), ("w2", (16, 32)))}
    cond, uncond = {"c": jnp.asarray(r.normal(size=(batch, 8)), jnp.float32)}, {"c": jnp.zeros((1, 8))}
    noise = jnp.asarray(r.normal(size=(batch, 4, 4, 2)), jnp.float32)
    cfg = sampler_lib.SamplerConfig(num_steps=num_steps, guidance_scale=guidance, eta=eta, shift=0.4)
    return params, cond, uncond, noise, cfg


def _hand_loss(params, cond, uncond, noise, cfg, *, live_from, x0_at=None):
    """-redness of decoded samples from a plain Python loop of guided Euler steps: steps before
    ``live_from`` see the parameters through stop_gradient; with ``x0_at`` the loop stops there and
    predicts x0 = x - t v with the live parameters (ReFL), else it runs to t = 0 (DRaFT)."""
    times = [float(t) for t in schedules.sampling_times(cfg.num_steps, cfg.shift)]
    g = cfg.guidance_scale

    def v(p, x, t):
        tb = jnp.full((x.shape[0],), t)
        vu = toy_velocity(p, x, tb, {"c": jnp.broadcast_to(uncond["c"], cond["c"].shape)})
        return vu + g * (toy_velocity(p, x, tb, cond) - vu)

    dead = jax.lax.stop_gradient(params)
    x = noise
    for i in range(cfg.num_steps if x0_at is None else x0_at):
        x = x + (times[i + 1] - times[i]) * v(params if i >= live_from else dead, x, times[i])
    if x0_at is not None:
        x = jax.lax.stop_gradient(x)
        x = x - times[x0_at] * v(params, x, times[x0_at])
    return -jnp.mean(redness(toy_decode(x)))


def _assert_same_grads(got, want):
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("stop", [0, 2, 3])
def test_refl_gradient_matches_a_hand_unrolled_sampler(stop):
    params, cond, uncond, noise, cfg = _toy_setup()

    def refl(p):
        return -jnp.mean(redness(toy_decode(rlhf_losses.refl_latents(toy_velocity, p, noise, cond, uncond, cfg,
                                                                     jnp.int32(stop)))))

    value, grads = jax.value_and_grad(refl)(params)
    want_value, want = jax.value_and_grad(lambda p: _hand_loss(p, cond, uncond, noise, cfg, live_from=99, x0_at=stop))(params)
    assert float(value) == pytest.approx(float(want_value), abs=1e-6)
    _assert_same_grads(grads, want)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_draft_gradient_matches_a_hand_unrolled_sampler(k):
    params, cond, uncond, noise, cfg = _toy_setup()

    def draft(p):
        return -jnp.mean(redness(toy_decode(rlhf_losses.draft_latents(toy_velocity, p, noise, cond, uncond, cfg, k))))

    value, grads = jax.value_and_grad(draft)(params)
    want_value, want = jax.value_and_grad(lambda p: _hand_loss(p, cond, uncond, noise, cfg, live_from=4 - k))(params)
    assert float(value) == pytest.approx(float(want_value), abs=1e-6)
    _assert_same_grads(grads, want)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grads))


def test_refl_prediction_is_x0_and_reward_loss_forms():
    x0, eps, t = np.random.default_rng(0).normal(size=(2, 3, 2, 2, 4)).astype(np.float32)[0], None, 0.3
    eps = np.random.default_rng(1).normal(size=x0.shape).astype(np.float32)
    x_t = (1 - t) * x0 + t * eps
    np.testing.assert_allclose(rlhf_losses.predict_x0(x_t, t, eps - x0), x0, atol=1e-6)
    r = jnp.array([0.5, 3.0])
    assert float(rlhf_losses.reward_loss(r, kind="relu", margin=2.0, weight=2.0)) == pytest.approx(1.5)
    assert float(rlhf_losses.reward_loss(r, kind="neg", weight=2.0)) == pytest.approx(-3.5)
    with pytest.raises(ValueError, match="'relu' or 'neg'"):
        rlhf_losses.reward_loss(r, kind="hinge")


# ---------------------------------------------------------------- GRPO pieces by hand

def test_group_advantages_are_zero_mean_unit_std_per_group():
    r = np.random.default_rng(0).normal(size=(5 * 4,)).astype(np.float32) * np.repeat(np.arange(1, 6), 4)
    adv = np.asarray(rlhf_losses.group_advantages(jnp.asarray(r), 4, eps=1e-4)).reshape(5, 4)
    np.testing.assert_allclose(adv.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(adv.std(axis=1), 1.0, atol=1e-3)
    groups = r.reshape(5, 4)
    np.testing.assert_allclose(adv, (groups - groups.mean(1, keepdims=True)) / (groups.std(1, keepdims=True) + 1e-4),
                               rtol=1e-5, atol=1e-6)
    clipped = rlhf_losses.group_advantages(jnp.array([0.0, 0.0, 0.0, 1.0]), 4, clip=1.0)
    assert float(jnp.max(clipped)) == 1.0 and float(jnp.sum(clipped[:3])) == pytest.approx(-3 / np.sqrt(3), rel=1e-3)
    same = rlhf_losses.group_advantages(jnp.ones(8), 4)  # a group of equal rewards teaches nothing
    assert float(jnp.max(jnp.abs(same))) == 0.0


def test_clipped_objective_and_kl_equal_a_hand_computation():
    logp = np.array([-1.0, -2.0, -0.5, -3.0, -1.2, -0.1], np.float64)
    old = np.array([-1.1, -1.8, -0.5, -2.0, -1.3, -0.6], np.float64)
    adv = np.array([1.0, -0.5, 2.0, 1.5, -1.0, -2.0], np.float64)
    c = 0.2
    ratio = np.exp(logp - old)
    want = np.mean(np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - c, 1 + c)))
    loss, metrics = rlhf_losses.clipped_policy_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                                                    jnp.asarray(adv, jnp.float32), c)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(np.mean(np.abs(ratio - 1) > c))
    assert float(metrics["ratio"]) == pytest.approx(ratio.mean(), rel=1e-6)
    m, m_ref = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 2))
    kl = rlhf_losses.mean_kl(jnp.asarray(m), jnp.asarray(m_ref), 0.3)
    np.testing.assert_allclose(kl, ((m - m_ref) ** 2).reshape(3, -1).sum(1) / (2 * 0.09), rtol=1e-5)
    kl_mean = rlhf_losses.mean_kl(jnp.asarray(m), jnp.asarray(m_ref), 0.3, per_element=True)
    np.testing.assert_allclose(kl_mean, ((m - m_ref) ** 2).reshape(3, -1).mean(1) / (2 * 0.09), rtol=1e-5)
    steps = np.asarray(rlhf_losses.select_steps(jax.random.PRNGKey(0), 10, 6))
    assert len(set(steps.tolist())) == 6 and list(steps) == sorted(steps) and steps.max() < 10


def test_grpo_loss_at_the_rollout_policy_is_the_policy_gradient():
    """At the rollout's own parameters every ratio is 1, so the loss is -mean(A) and its gradient
    is -mean_b A_b grad log p_b, averaged over the trained steps (log-probabilities by hand from
    ``sde_step`` given the stored transitions); the KL to an identical reference is 0, and away
    from it the hand formula on the two Gaussian means."""
    params, cond, uncond, noise, cfg = _toy_setup(batch=4, eta=0.7)
    _, traj, logps = sampler_lib.sample_trajectory(toy_velocity, params, noise, cond, uncond, cfg,
                                                   rng=jax.random.PRNGKey(1), return_trajectory=True)
    traj, old = jnp.moveaxis(traj, 0, 1), logps.T
    adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    steps = jnp.array([1, 3], jnp.int32)

    def loss(p):
        return rlhf_losses.grpo_loss(toy_velocity, p, params, traj, old, adv, cond, uncond, cfg, steps,
                                     clip_range=1e-4, kl_weight=0.5, per_element=True)

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
    assert float(value) == pytest.approx(0.0, abs=1e-6) and float(metrics["kl"]) == 0.0
    assert float(metrics["ratio"]) == pytest.approx(1.0, abs=1e-5)
    times = schedules.sampling_times(4, 0.4)

    def surrogate(p):
        v = sampler_lib.guided_velocity(toy_velocity, p, cond, uncond, 2.0)
        total = 0.0
        for i in (1, 3):
            _, lp = solvers.sde_step(v, traj[:, i], times[i], times[i + 1], 0.7, None, x_next=traj[:, i + 1])
            total = total - jnp.mean(adv * lp / traj[0, 0].size)
        return total / 2

    _assert_same_grads(grads, jax.grad(surrogate)(params))
    moved = jax.tree_util.tree_map(lambda a: a * 1.1, params)
    _, m = loss(moved)
    v_new = sampler_lib.guided_velocity(toy_velocity, moved, cond, uncond, 2.0)
    v_ref = sampler_lib.guided_velocity(toy_velocity, params, cond, uncond, 2.0)
    kls = []
    for i in (1, 3):
        mean_new, std = solvers.sde_mean_std(v_new(traj[:, i], times[i]), traj[:, i], times[i], times[i + 1], 0.7)
        mean_ref, _ = solvers.sde_mean_std(v_ref(traj[:, i], times[i]), traj[:, i], times[i], times[i + 1], 0.7)
        kls.append(np.mean(np.mean((np.asarray(mean_new) - np.asarray(mean_ref)) ** 2, axis=(1, 2, 3))
                           / (2 * float(std) ** 2)))
    assert float(m["kl"]) == pytest.approx(np.mean(kls), rel=1e-4) and float(m["kl"]) > 0


@pytest.mark.parametrize("method", ["refl", "grpo"])
def test_a_colour_reward_raises_that_colour_on_a_tiny_model(method):
    """The losses alone on the MLP 'DiT': ReFL (uniform stop step in 2..3 of 4) and GRPO (8 SDE
    samples per prompt, group advantages, 2 clipped updates per rollout) raise the redness of ODE
    samples of held noise; a flipped gradient or advantage sign would lower it."""
    import optax
    params, _, uncond, _, cfg = _toy_setup()
    b, g = 4, 8
    cond = {"c": jnp.asarray(np.random.default_rng(5).normal(size=(b, 8)), jnp.float32)}
    cond_g = {"c": jnp.repeat(cond["c"], g, axis=0)}
    sde = sampler_lib.SamplerConfig(num_steps=4, guidance_scale=2.0, eta=0.7, shift=0.4)
    held = jax.random.normal(jax.random.PRNGKey(99), (b, 4, 4, 2))
    tx = optax.adam(1e-2)

    def sample_redness(p):
        return float(jnp.mean(redness(toy_decode(sampler_lib.sample_trajectory(toy_velocity, p, held, cond, uncond, cfg)[0]))))

    @jax.jit
    def refl_step(p, opt, rng):
        def loss(q):
            noise = jax.random.normal(rng, (b, 4, 4, 2))
            stop = jax.random.randint(jax.random.fold_in(rng, 1), (), 2, 4)
            x0 = rlhf_losses.refl_latents(toy_velocity, q, noise, cond, uncond, cfg, stop)
            return rlhf_losses.reward_loss(redness(toy_decode(x0)), kind="neg")
        updates, opt = tx.update(jax.grad(loss)(p), opt, p)
        return optax.apply_updates(p, updates), opt

    @jax.jit
    def grpo_round(p, opt, rng):
        noise = jax.random.normal(rng, (b * g, 4, 4, 2))
        x0, traj, logps = sampler_lib.sample_trajectory(toy_velocity, p, noise, cond_g, uncond, sde,
                                                        rng=jax.random.fold_in(rng, 1), return_trajectory=True)
        adv = rlhf_losses.group_advantages(redness(toy_decode(x0)), g, clip=5.0)
        traj, old, ref = jnp.moveaxis(traj, 0, 1), logps.T, p
        for i in range(2):
            steps = rlhf_losses.select_steps(jax.random.fold_in(rng, 2 + i), 4, 4)
            grads = jax.grad(lambda q: rlhf_losses.grpo_loss(toy_velocity, q, ref, traj, old, adv, cond_g, uncond, sde,
                                                             steps, clip_range=1e-4, kl_weight=0.004)[0])(p)
            updates, opt = tx.update(grads, opt, p)
            p = optax.apply_updates(p, updates)
        return p, opt

    before, opt = sample_redness(params), tx.init(params)
    for i in range(20):
        params, opt = (refl_step if method == "refl" else grpo_round)(params, opt, jax.random.PRNGKey(i))
    assert sample_redness(params) > before + 0.15


def test_config_sections_presets_and_the_tiny_rlhf_config():
    s = config_lib.rlhf_section()
    assert s.kind == "rlhf" and s.method == "refl" and s.frozen == ("vae", "conditioner")
    assert dict(s.init_from) == {"conditioner": "pretrain", "mmdit": "pretrain", "vae": "pretrain"}
    with pytest.raises(KeyError, match=r"rlhf_section: unknown keys \['lamda'\]"):
        config_lib.rlhf_section(lamda=1.0)
    flow, dance = config_lib.grpo_settings("flow_grpo"), config_lib.dance_grpo_section().grpo
    assert (flow.eta, flow.kl_weight, flow.same_noise) == (0.7, 0.004, False)
    assert (dance.eta, dance.group_size, dance.train_fraction, dance.kl_weight, dance.same_noise) == (0.3, 12, 0.6, 0.0, True)
    d = config_lib.dance_grpo_section()
    assert d.method == "grpo" and dict(d.rewards) == {"objective": 1.0} and dict(d.reward_stages) == {}
    with pytest.raises(ValueError, match="unknown GRPO preset"):
        config_lib.grpo_settings("ppo")
    cfg = config_lib.load_run_config(os.path.join(REPO, "configs", "tiny_rlhf.py"))
    assert cfg.stages == ("rlhf", "sample", "eval") and cfg.rlhf.init_from.mmdit == "pretrain"
    assert cfg.sample.checkpoint == cfg.eval.checkpoint == "rlhf"
    assert cfg.rlhf.train.steps % cfg.rlhf.grpo.inner_steps == 0
    assert dict(cfg.rlhf.rewards) == {"objective_graded": 1.0} and cfg.rlhf.prompts.caption_types == ("short",)
    assert 0 <= cfg.rlhf.refl.window[0] <= cfg.rlhf.refl.window[1] < cfg.rlhf.num_steps  # the ReFL variant runs


# ---------------------------------------------------------------- prompts and rewards

def test_prompts_are_every_world_caption_and_bad_ones_are_skipped_and_counted(tmp_path):
    world = S.SyntheticWorldConfig(num_images=6, image_size=16, seed=1, text_probability=0.5)
    S.write_dataset(world, str(tmp_path / "data" / "synthetic"))
    d = config_lib.data_section(format="synthetic")
    tok = lambda texts, n: (np.zeros((len(texts), n), np.int32), np.array([[i < len(t) for i in range(n)] for t in texts]))
    rows = prompt_data.prompt_rows(d, str(tmp_path), 4, tok, 10_000)
    want = [S.captions(S.scene_at(world, i))[lang][kind] for i in range(6) for lang in ("en", "zh")
            for kind in ("short", "long")]
    assert [r["prompt"] for r in rows.rows] == want and rows.skipped == {}
    assert any("\u4e00" <= ch <= "\u9fff" for ch in want[2])  # both languages
    limit = sorted(len(p) for p in want)[len(want) // 2]
    rows = prompt_data.prompt_rows(d, str(tmp_path), 4, tok, limit)
    assert all(len(r["prompt"]) <= limit for r in rows.rows)
    assert rows.skipped == {prompt_data.OVER_LIMIT: sum(len(p) > limit for p in want)}
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": ""}\nnot json\n'
                                      '{"prompt": "' + "x" * 50 + '"}\n{"prompt": "一个红色圆形"}\n', encoding="utf-8")
    rows = prompt_data.prompt_rows(config_lib.data_section(format="prompts", path="p.jsonl"), str(tmp_path), 2, tok, 20)
    assert [r["prompt"] for r in rows.rows] == ["a red circle", "一个红色圆形"]
    assert rows.skipped == {"invalid JSON": 1, "missing or empty 'prompt'": 1, prompt_data.OVER_LIMIT: 1}


def test_kind_repeats_weight_the_world_prompts_by_their_scenes_object_kinds(tmp_path):
    world = S.SyntheticWorldConfig(num_images=40, image_size=16, seed=3)
    S.write_dataset(world, str(tmp_path / "data" / "synthetic"))
    d = config_lib.data_section(format="synthetic", caption_types=("short",), caption_languages=("en",))
    scenes = [S.scene_at(world, i) for i in range(40)]
    kinds = [len({(o.colour, o.shape) for o in sc.objects}) for sc in scenes]
    assert {1, 2} <= set(kinds)
    short = [S.captions(sc)["en"]["short"] for sc in scenes]
    rows = [r["prompt"] for r in prompt_data.world_caption_rows(d, str(tmp_path), (1, 3, 0))]
    assert rows == [c for c, k in zip(short, kinds) for _ in range({1: 1, 2: 3}.get(k, 0))]
    assert [r["prompt"] for r in prompt_data.world_caption_rows(d, str(tmp_path), (0, 1))] == \
        [c for c, k in zip(short, kinds) if k >= 2]
    with pytest.raises(ValueError, match="non-negative"):
        prompt_data.world_caption_rows(d, str(tmp_path), (1, -1))
    tok = lambda texts, n: (np.zeros((len(texts), n), np.int32), np.ones((len(texts), n), bool))
    with pytest.raises(ValueError, match="scene specs"):
        prompt_data.prompt_rows(config_lib.data_section(format="prompts", prompts=("a",)), str(tmp_path), 1, tok, 5,
                                (1, 2))


def test_rewards_run_in_the_graph_or_on_the_host_and_sum_with_weights():
    red, host = in_graph.graph_reward("redness"), in_graph.graph_reward("redness_host")
    assert red.differentiable and not host.differentiable
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(4, 8, 8, 3)), jnp.float32)
    prompts = ["a", "b", "a", "两个蓝色正方形"]
    batch = in_graph.prepare_all([red, host], prompts)
    assert list(batch) == ["reward_in/redness_host/prompt_bytes"]
    assert in_graph.decode_prompts(batch["reward_in/redness_host/prompt_bytes"]) == prompts
    total, per = jax.jit(lambda x, b: in_graph.score_all([red, host], {"redness": 2.0, "redness_host": -1.0}, x, b))(
        images, batch)
    # jitted vs eager means over 192 values in [-1, 1]: equal up to float32 summation order
    np.testing.assert_allclose(per["redness"], redness(images), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(per["redness_host"], redness(images), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(total, redness(images), rtol=1e-5)
    grad = jax.grad(lambda x: jnp.sum(in_graph.score_all([red], {"redness": 1.0}, x, {})[0]))(images)
    assert float(jnp.abs(grad[..., 0]).min()) > 0


def test_a_host_reward_under_a_mesh_scores_each_devices_rows_with_their_own_prompts():
    """Under an 8-device mesh the host callback runs once per device on that device's rows, reading
    the prompts from the batch (multi-host safe: no process-local lookup table)."""
    from host_reward_worker import batch_rows, counting_host_reward, prompt_bytes_score

    calls = counting_host_reward("t_prompt_bytes")
    reward = in_graph.graph_reward("t_prompt_bytes")
    prompts, images = batch_rows()
    batch = in_graph.prepare_all([reward], prompts)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    with jax.set_mesh(mesh):
        put = {k: jax.device_put(v, mesh_lib.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
        _, per = jax.jit(lambda x, b: in_graph.score_all([reward], {reward.name: 1.0}, x, b))(
            jax.device_put(images, mesh_lib.batch_sharding(mesh, 4)), put)
    np.testing.assert_allclose(per[reward.name], prompt_bytes_score(images, prompts), rtol=1e-6)
    assert calls == [2] * 8
    with pytest.raises(ValueError, match="does not fit a host reward's 2048-byte prompt field"):
        in_graph.encode_prompts(["x" * 2049])


def _scorer(kind):
    """A learned scorer of ``kind`` with a tiny random model (the reward tests' configs)."""
    if kind == "alignment":
        from test_generate import char_tokenizer
        from test_reward import TINY
        from seedream_jax.models.rewards import AlignmentReward
        from seedream_jax.rewards.alignment import AlignmentScorer
        model = AlignmentReward(TINY)
        params = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32),
                                     jnp.ones((1, 8), bool))["params"]
        return AlignmentScorer(model, params, char_tokenizer)
    if kind == "aesthetic":
        from test_aesthetic_reward import TINY
        from seedream_jax.models.rewards import AestheticReward
        from seedream_jax.rewards.aesthetic import AestheticScorer
        model = AestheticReward(TINY)
        return AestheticScorer(model, jax.jit(model.init)(jax.random.PRNGKey(2), jnp.zeros((1, 32, 32, 3)))["params"])
    from test_glyph_align import TINY, _init
    from seedream_jax.rewards.glyph import TextRenderingScorer
    return TextRenderingScorer(*_init(TINY))


@pytest.mark.parametrize("kind", ["alignment"] + [pytest.param(k, marks=pytest.mark.slow)  # ~20-50 s each
                                                 for k in ("aesthetic", "text_rendering")])
def test_a_learned_scorer_in_the_graph_equals_the_reward_api(kind):
    """The in-graph form of a learned scorer (host ``prepare``, traced ``score``) gives the reward
    API's values and is marked differentiable."""
    rewards.register(f"t_{kind}", _scorer(kind), differentiable=True, replace=True)
    reward = in_graph.graph_reward(f"t_{kind}")
    prompts = ['a red circle and the text "HELLO"', "两个蓝色正方形"]
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(2, 32, 32, 3)), jnp.float32)
    batch = {k: jnp.asarray(v) for k, v in in_graph.prepare_all([reward], prompts).items()}
    _, per = in_graph.score_all([reward], {reward.name: 1.0}, images, batch)
    np.testing.assert_allclose(per[reward.name], rewards.score(reward.name, images, prompts), rtol=1e-5, atol=1e-6)
    assert reward.differentiable
    if kind == "text_rendering":
        assert float(per[reward.name][1]) == 0.0  # no quoted text, no text-rendering score


# ---------------------------------------------------------------- the stage, end to end on a tiny model

SIZE = 16  # image size of the stage tests


def _config():
    """A tiny model (16 px, 2x VAE, 4x4 patches: 4 image tokens; one block of each kind) and an
    rlhf stage of 8 prompts per step, 4 sampler steps, the redness reward."""
    c = micro_config(SIZE, num_images=16)
    r = c.rlhf
    r.update(dict(height=SIZE, width=SIZE, num_steps=4, guidance_scale=2.0))
    r.refl.window = (2, 3)
    r.rewards, r.reward_stages = ConfigDict({"redness": 1.0}), ConfigDict()
    r.train.update(dict(steps=4, batch_size=8, checkpoint_every=2, log_every=1, ema_decay=0.0, async_checkpoint=False))
    r.optimizer.update(dict(lr=3e-3, warmup_steps=0, grad_clip_norm=10.0))
    r.grpo.update(dict(group_size=4, train_fraction=1.0, inner_steps=2))
    c.sample.update(dict(prompts=PROMPTS, height=SIZE, width=SIZE, num_steps=4, guidance_scale=2.0, batch_size=8))
    return c


PROMPTS = ("a large red circle", "two small blue squares", "一个大的绿色三角形", "a purple star", "一个黄色圆形",
           "a cyan square", "three small red circles", "一个蓝色星形")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir with the synthetic world, a tokenizer and a 'pretrain' stage of random weights."""
    from seedream_jax.stages import data as data_stage, tokenizer as tokenizer_stage
    wd = str(tmp_path_factory.mktemp("rlhf"))
    cfg = _config()
    data_stage.run(cfg, cfg.data, wd)
    tokenizer_stage.run(cfg, None, wd)
    write_random_pretrain_stage(cfg, wd, SIZE)
    return wd


def _run(workdir, name, settings):
    """Run stage ``name`` (kind rlhf): the test config's rlhf section with ``settings`` ({'a.b': value});
    returns (config, summary)."""
    from seedream_jax.main import run_stages
    cfg = _config()
    section = ConfigDict(cfg.rlhf.to_dict())
    for key, value in settings.items():
        *parents, last = key.split(".")
        node = section
        for part in parents:
            node = node[part]
        node[last] = value
    cfg[name] = section
    cfg.stages = (name,)
    return cfg, run_stages(cfg, workdir)[name]


def _redness_of_samples(cfg, workdir, stage):
    """Mean redness of the ODE samples of ``PROMPTS`` (seed 1) from a stage directory."""
    from seedream_jax.stages.sample import load_pipeline
    pipe, params = load_pipeline(cfg, workdir, stage, use_ema=False)
    pics = pipe(params, list(PROMPTS), height=SIZE, width=SIZE, num_steps=4, guidance_scale=2.0, seed=1)
    return float(jnp.mean(redness(jnp.asarray(pics, jnp.float32) / 127.5 - 1.0)))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_lr_zero_keeps_the_policy_bit_identical_to_the_reference_and_sample_reads_the_stage(workdir):
    from seedream_jax.checkpoint.stage_dir import frozen_sources, open_stage
    from seedream_jax.models.partition import merge_params
    from seedream_jax.stages.sample import load_pipeline
    # redness also as a host callback (weight 0): run per device of the loop's 8-device mesh
    cfg, summary = _run(workdir, "rlhf_lr0", {"method": "grpo", "optimizer.lr": 0.0, "train.ema_decay": 0.9,
                                              "grpo.group_size": 2,
                                              "rewards": ConfigDict({"redness": 1.0, "redness_host": 0.0})})
    assert summary["steps"] == 4 and not summary["preempted"]
    assert summary["final_metrics"]["reward/redness_host"] == pytest.approx(summary["final_metrics"]["reward/redness"],
                                                                            abs=1e-6)
    curves_png = os.path.join(workdir, "rlhf_lr0", "reward_curves.png")
    assert summary["reward_curves"] == curves_png and os.path.getsize(curves_png) > 0
    metrics = summary["final_metrics"]
    assert {"reward/redness", "reward/total", "kl", "clip_fraction", "advantage_abs"} <= set(metrics)
    assert metrics["kl"] < 1e-10 and abs(metrics["ratio"] - 1.0) < 1e-5
    rlhf = os.path.join(workdir, "rlhf_lr0")
    state, step = restore_raw_state(rlhf)
    pretrain = restore_raw_state(os.path.join(workdir, "pretrain"))[0]
    source = merge_params(pretrain["params"], pretrain["frozen"])
    # the frozen parts are stored at pretrain, not in this stage's checkpoints, and read from there
    assert step == 4 and sorted(frozen_sources(rlhf)) == ["conditioner", "ref/mmdit", "vae"]
    assert not _leaves(state.get("frozen"))
    stage = open_stage(rlhf)
    merged = stage.params("raw")  # the checkpoint's parameters and those read from pretrain
    for tree in (state["params"]["mmdit"], state["ema_params"]["mmdit"], merged["conditioner"]):
        assert len(_leaves(tree)) > 0
    for name in ("conditioner", "vae"):
        for a, b in zip(_leaves(merged[name]), _leaves(source[name]), strict=True):
            np.testing.assert_array_equal(a, b)
    for a, b, c, d in zip(*(_leaves(t) for t in (state["params"]["mmdit"], state["ema_params"]["mmdit"],
                                                  merged["ref"]["mmdit"], source["mmdit"])), strict=True):
        np.testing.assert_array_equal(a, c)  # the policy is the reference, bit for bit,
        np.testing.assert_array_equal(a, d)  # and the source's DiT
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-9)  # the EMA of a constant (decay*e + (1-decay)*p rounds)
    assert stage.kind == "rlhf" and sorted(stage.meta["components"]) == ["conditioner", "mmdit", "vae"]
    assert stage.meta["init_from"]["mmdit"]["source"] == os.path.join(workdir, "pretrain")
    pipe, params = load_pipeline(cfg, workdir, "rlhf_lr0")  # what the sample and eval stages read
    assert pipe.latent_shape(SIZE, SIZE) == (SIZE // 2, SIZE // 2, 4) and sorted(params) == ["conditioner", "mmdit", "ref", "vae"]


def test_a_nan_reward_stops_the_run_naming_the_reward_and_the_step(workdir):
    """DRaFT-1 with the flow-matching regulariser on the world's images (both paths compiled and
    run); the NaN reward stops the loop after its first update."""
    with pytest.raises(loop.NonFiniteError, match=r"at step 1: .*'reward/nan_reward': nan"):
        _run(workdir, "rlhf_nan", {"method": "draft", "flow_weight": 0.1, "rewards": ConfigDict({"nan_reward": 1.0})})


def test_refl_and_draft_refuse_a_reward_without_a_gradient(workdir):
    with pytest.raises(ValueError, match=r"method='refl' backpropagates through the rewards, but \['objective'\]"):
        _run(workdir, "rlhf_bad", {"rewards": ConfigDict({"objective": 1.0})})


@pytest.mark.slow  # about 3 minutes each on 2 shared cores
@pytest.mark.parametrize("method,settings,gain", [
    ("refl", {}, 0.05),
    # A policy gradient over 256 latent dimensions learns far less per sample than ReFL's direct
    # gradient: constant lr, a wider clip range so the second update of each rollout counts.
    ("grpo", {"optimizer.lr": 1e-2, "optimizer.final_lr_fraction": 1.0, "train.steps": 24, "grpo.group_size": 8,
              "grpo.clip_range": 1e-2}, 0.02)])
def test_a_colour_reward_raises_that_colour_in_samples_of_the_stage(workdir, method, settings, gain):
    """The stage on the tiny MMDiT (random weights): ODE samples of held prompts and seeds are
    redder after 20-24 updates on the redness reward."""
    cfg, summary = _run(workdir, f"rlhf_{method}", {"method": method, "train.steps": 20, **settings})
    before, after = _redness_of_samples(cfg, workdir, "pretrain"), _redness_of_samples(cfg, workdir, f"rlhf_{method}")
    assert after > before + gain, (before, after, summary["final_metrics"])


@pytest.mark.slow  # three short GRPO runs: about 4 minutes on 2 shared cores
def test_preemption_mid_rollout_resumes_bit_exactly(workdir, monkeypatch):
    """SIGTERM while the third prompt batch is drawn (rollouts of 4 images per prompt, 2 updates
    each), then the same command again: parameters, optimizer state, RNG and data position equal
    an uninterrupted run's."""
    settings = {"method": "grpo", "train.steps": 6, "grpo.group_size": 2, "train.checkpoint_every": 2}
    _run(workdir, "rlhf_whole", settings)
    draw = prompt_data.PromptBatches.__next__

    def preempting(self):
        if self.rows.position == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return draw(self)

    with monkeypatch.context() as m:
        m.setattr(prompt_data.PromptBatches, "__next__", preempting)
        _, first = _run(workdir, "rlhf_split", settings)
    assert first["preempted"] and first["steps"] in (2, 4)
    _, second = _run(workdir, "rlhf_split", settings)
    assert second["steps"] == 6 and not second["preempted"]
    (a, step_a), (b, step_b) = (restore_raw_state(os.path.join(workdir, n)) for n in ("rlhf_whole", "rlhf_split"))
    assert step_a == step_b == 6
    for key in ("params", "opt_state", "rng"):
        for x, y in zip(_leaves(a[key]), _leaves(b[key])):
            np.testing.assert_array_equal(x, y)
