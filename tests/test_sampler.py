"""Flow schedules, solvers and the compiled sampler: ODE/SDE steps, log-probs, gradient windows."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedream_jax.sampling import sampler as S
from seedream_jax.sampling import schedules, solvers


def mlp_velocity(params, x, t, cond):
    """A tiny conditional velocity field: tanh MLP of [x, t, cond]."""
    h = jnp.concatenate([x, t[:, None], cond["c"]], axis=-1)
    return jnp.tanh(h @ params["w1"]) @ params["w2"]


def _params():
    r = np.random.default_rng(0)
    return {"w1": jnp.asarray(r.normal(size=(4 + 1 + 2, 16)) * 0.5, jnp.float32),
            "w2": jnp.asarray(r.normal(size=(16, 4)) * 0.5, jnp.float32)}


def test_compiled_equals_python_euler_loop_with_cfg():
    params = _params()
    noise = S.initial_noise(jax.random.PRNGKey(0), 3, (4,))
    cond = {"c": jnp.asarray(np.random.default_rng(1).normal(size=(3, 2)), jnp.float32)}
    uncond = {"c": jnp.zeros((1, 2))}
    for g in (1.0, 4.0):
        fast = jax.jit(S.make_sampler(mlp_velocity, num_steps=10, guidance_scale=g))(params, noise, cond, uncond, 0.3)
        slow = S.reference_euler_sample(mlp_velocity, params, noise, cond, uncond, 0.3, num_steps=10, guidance_scale=g)
        d = float(jnp.max(jnp.abs(fast - slow)))
        print(f"compiled vs python Euler, guidance {g}: max abs diff {d:.2e}")
        assert d <= 1e-6


def test_guidance_one_equals_conditional_only():
    params = _params()
    noise = S.initial_noise(jax.random.PRNGKey(0), 2, (4,))
    cond = {"c": jnp.ones((2, 2))}
    a = S.make_sampler(mlp_velocity, num_steps=5, guidance_scale=1.0)(params, noise, cond, {"c": jnp.zeros((1, 2))}, 0.0)
    b = S.make_sampler(mlp_velocity, num_steps=5, guidance_scale=1.0)(params, noise, cond, None, 0.0)
    np.testing.assert_array_equal(a, b)


def test_noise_is_per_sample_reproducible():
    a = S.initial_noise(jax.random.PRNGKey(3), 4, (2, 2, 3))
    b = S.initial_noise(jax.random.PRNGKey(3), 2, (2, 2, 3))
    np.testing.assert_array_equal(a[:2], b)
    assert not np.allclose(a[0], a[1])


def test_solver_orders_on_an_exact_flow():
    """Data is a single point x*; the exact velocity of the straight flow is v = (x - x*)/t and the
    exact solution at t = 0 is x*. Euler is exact on straight paths; on a curved field
    (v = -x, exact x0 = x1 * e) Heun's error falls ~4x per step doubling and Euler's ~2x."""
    x_star = jnp.array([[0.3, -1.2]])
    straight = lambda p, x, t, c: (x - x_star) / t[:, None]
    x1 = jnp.array([[1.0, 2.0]])
    euler = S.make_sampler(straight, num_steps=4)(None, x1, {}, None, 0.0)
    np.testing.assert_allclose(euler, x_star, atol=1e-5)
    curved = lambda p, x, t, c: -x
    exact = x1 * np.e
    errors = {}
    for solver in ("euler", "heun"):
        errors[solver] = [float(jnp.max(jnp.abs(S.make_sampler(curved, num_steps=n, solver=solver)(None, x1, {}, None, 0.0) - exact)))
                          for n in (4, 8, 16)]
    print("steps  euler_err  heun_err")
    for n, e, h in zip((4, 8, 16), errors["euler"], errors["heun"]):
        print(f"{n:5d}  {e:9.2e}  {h:8.2e}")
    e_ratio = errors["euler"][1] / errors["euler"][2]
    assert 1.7 < e_ratio < 2.3
    assert errors["heun"][2] < errors["euler"][2] / 10


def test_schedules():
    t = schedules.sampling_times(10, 0.7)
    assert float(t[0]) == 1.0 and float(t[-1]) == 0.0 and bool(jnp.all(jnp.diff(t) < 0))
    u = jnp.linspace(0.01, 0.99, 50)
    np.testing.assert_allclose(schedules.shift_time(u, np.log(3.0)), schedules.shift_time_fixed(u, 3.0), rtol=1e-5)
    lo = schedules.sample_training_times(jax.random.PRNGKey(0), 4096, mu=0.0)
    hi = schedules.sample_training_times(jax.random.PRNGKey(0), 4096, mu=1.0)
    assert float(lo.min()) > 0 and float(hi.max()) < 1 and float(hi.mean()) > float(lo.mean()) + 0.1
    assert abs(schedules.resolution_shift(256) - 0.5) < 1e-9 and abs(schedules.resolution_shift(4096) - 1.15) < 1e-9


def _cond_inputs(batch=3):
    noise = S.initial_noise(jax.random.PRNGKey(0), batch, (4,))
    cond = {"c": jnp.asarray(np.random.default_rng(1).normal(size=(batch, 2)), jnp.float32)}
    return noise, cond, {"c": jnp.zeros((1, 2))}


def fori_loop_sampler(velocity_fn, num_steps, solver, guidance_scale):
    """The compiled sampler as it was before ``sample_trajectory``: one ``lax.fori_loop`` of ODE steps."""
    step_fn = solvers.SOLVERS[solver]

    def sample(params, noise, cond, uncond, mu):
        times = schedules.sampling_times(num_steps, mu)
        v = S.guided_velocity(velocity_fn, params, cond, uncond, guidance_scale)
        body = lambda i, x: step_fn(v, x, times[i], times[i + 1]).astype(jnp.float32)
        return jax.lax.fori_loop(0, num_steps, body, noise.astype(jnp.float32))

    return sample


def test_trajectory_eta0_equals_fori_loop_sampler_for_every_window():
    params, (noise, cond, uncond) = _params(), _cond_inputs()
    n = 7
    for solver, g, windows in (("euler", 1.0, (0,)), ("euler", 4.0, (0, 3, n)), ("heun", 4.0, (0, n))):
        ref = jax.jit(fori_loop_sampler(mlp_velocity, n, solver, g))(params, noise, cond, uncond, 0.3)
        cfg = S.SamplerConfig(num_steps=n, solver=solver, guidance_scale=g, shift=0.3)
        for k in windows:
            x0, traj, logps = jax.jit(lambda p: S.sample_trajectory(
                mlp_velocity, p, noise, cond, uncond, cfg, grad_last_k=k, return_trajectory=True))(params)
            d = float(jnp.max(jnp.abs(x0 - ref)))
            print(f"{solver} g={g} K={k}: sample_trajectory vs fori_loop max abs diff {d:.2e}")
            assert d <= 1e-6
            assert traj.shape == (n + 1, 3, 4) and logps.shape == (n, 3)
            np.testing.assert_array_equal(traj[0], noise)
            np.testing.assert_array_equal(traj[-1], x0)
            np.testing.assert_array_equal(logps, 0.0)
    # the states are the Euler steps' own, one per grid time
    cfg = S.SamplerConfig(num_steps=n, guidance_scale=4.0, shift=0.3)
    _, traj, _ = S.sample_trajectory(mlp_velocity, params, noise, cond, uncond, cfg, return_trajectory=True)
    times = schedules.sampling_times(n, 0.3)
    v = S.guided_velocity(mlp_velocity, params, cond, uncond, 4.0)
    for i in range(n):
        np.testing.assert_allclose(traj[i + 1], solvers.euler_step(v, traj[i], times[i], times[i + 1]), atol=1e-6)
    assert S.sample_trajectory(mlp_velocity, params, noise, cond, uncond, cfg)[1] is None


def _window_loss(params, cond, noise, *, k, eta, n=6, g=3.0):
    """A reward on x0 plus the last steps' log-probs, through ``sample_trajectory``'s window."""
    cfg = S.SamplerConfig(num_steps=n, guidance_scale=g, eta=eta, shift=0.4)
    x0, _, logps = S.sample_trajectory(mlp_velocity, params, noise, cond, {"c": jnp.zeros((1, 2))}, cfg,
                                       grad_last_k=k, rng=jax.random.PRNGKey(5))
    return jnp.sum(jnp.sin(x0)) + 0.1 * jnp.sum(logps)


def _hand_prefix(params, cond, noise, *, k, eta, n=6, g=3.0):
    """The state entering step n - k, from a Python loop of ``sde_step`` (a constant)."""
    times = schedules.sampling_times(n, 0.4)
    v = S.guided_velocity(mlp_velocity, params, cond, {"c": jnp.zeros((1, 2))}, g)
    x = noise
    for i in range(n - k):
        x = solvers.sde_step(v, x, times[i], times[i + 1], eta, jax.random.fold_in(jax.random.PRNGKey(5), i))[0]
    return np.asarray(x)


def _hand_loss(params, cond, noise, x_start, *, k, eta, n=6, g=3.0):
    """The same loss as ``_window_loss`` from the last k steps unrolled by hand, starting from the
    constant ``x_start`` (from the noise itself when k = n)."""
    times = schedules.sampling_times(n, 0.4)
    v = S.guided_velocity(mlp_velocity, params, cond, {"c": jnp.zeros((1, 2))}, g)
    x, total = (noise if k == n else x_start), 0.0
    for i in range(n - k, n):
        x, logp = solvers.sde_step(v, x, times[i], times[i + 1], eta, jax.random.fold_in(jax.random.PRNGKey(5), i))
        total = total + 0.1 * jnp.sum(logp)
    return jnp.sum(jnp.sin(x)) + total


def test_gradient_window_equals_hand_unrolled_last_k_steps():
    params, (noise, cond, _) = _params(), _cond_inputs()
    n = 6
    grad = jax.jit(jax.grad(_window_loss, argnums=(0, 1, 2)), static_argnames=("k", "eta"))
    for eta in (0.0, 0.7):
        grads = {}
        for k in (2, n):
            grads[k] = grad(params, cond, noise, k=k, eta=eta)
            x_start = _hand_prefix(params, cond, noise, k=k, eta=eta)
            hand = jax.grad(_hand_loss, argnums=(0, 1, 2))(params, cond, noise, x_start, k=k, eta=eta)
            d = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                    zip(jax.tree_util.tree_leaves(grads[k]), jax.tree_util.tree_leaves(hand)))
            print(f"eta={eta} K={k}: window vs hand-unrolled gradient max abs diff {d:.2e}")
            assert d <= 1e-5
            noise_grad = float(jnp.max(jnp.abs(grads[k][2])))
            assert (noise_grad > 0) == (k == n)  # the noise only reaches x0 through the first step
        # the window matters: fewer steps, another gradient; K = 0, none at all
        assert float(jnp.max(jnp.abs(grads[2][0]["w1"] - grads[n][0]["w1"]))) > 1e-3
        zero = grad(params, cond, noise, k=0, eta=eta)
        assert all(float(jnp.max(jnp.abs(a))) == 0.0 for a in jax.tree_util.tree_leaves(zero))


def test_gradient_window_memory_does_not_grow_with_model_activations():
    """Remat per step: each extra step in the window stores about one state [B, D] for the
    backward pass, not the velocity net's [B, H] activations (H = 256 x D here)."""
    hidden = 2048

    def wide_velocity(p, x, t, c):
        h = jnp.tanh(x @ p["w1"] + t[:, None])
        return jnp.tanh(h * p["s"]) @ p["w2"]

    p = {"w1": jnp.full((8, hidden), 0.01), "w2": jnp.full((hidden, 8), 0.01), "s": jnp.ones((hidden,))}
    noise = jnp.ones((16, 8))
    temp = {}
    for k in (2, 16):
        cfg = S.SamplerConfig(num_steps=16)
        loss = lambda p: jnp.sum(S.sample_trajectory(wide_velocity, p, noise, {}, None, cfg, grad_last_k=k)[0])
        temp[k] = jax.jit(jax.grad(loss)).lower(p).compile().memory_analysis().temp_size_in_bytes
    per_step = (temp[16] - temp[2]) / 14
    print(f"backward temp memory: K=2 {temp[2]} B, K=16 {temp[16]} B, {per_step:.0f} B per step "
          f"(state {noise.nbytes} B, activations {16 * hidden * 4} B)")
    assert per_step <= 4 * noise.nbytes


def test_sde_step_logprob_is_the_gaussian_density_by_hand():
    """Flow-GRPO's update in its own form (``sd3_sde_with_logprob.py``, sigma = t, dt < 0):
    mean = x (1 + s^2 dt / (2t)) + v (1 + s^2 (1 - t) / (2t)) dt, std = s sqrt(-dt), with
    s = eta sqrt(t / (1 - t)) and, at t = 1, 1 - t replaced by 1 - t_next."""
    r = np.random.default_rng(3)
    x = r.normal(size=(3, 2, 2, 4)).astype(np.float32)
    c = np.float32(0.8)
    v_fn = lambda x, t: c * jnp.tanh(x) - x
    for t_cur, t_next, eta in ((0.7, 0.55, 0.7), (1.0, 0.9, 0.5), (0.2, 0.0, 1.0)):
        x_next, logp = solvers.sde_step(v_fn, jnp.asarray(x), t_cur, t_next, eta, jax.random.PRNGKey(2))
        xd, xn = x.astype(np.float64), np.asarray(x_next, np.float64)
        v = c * np.tanh(xd) - xd
        dt = t_next - t_cur
        s = eta * math.sqrt(t_cur / (1 - (t_next if t_cur == 1.0 else t_cur)))
        mean = xd * (1 + s ** 2 / (2 * t_cur) * dt) + v * (1 + s ** 2 * (1 - t_cur) / (2 * t_cur)) * dt
        std = s * math.sqrt(-dt)
        by_hand = np.sum(-(xn - mean) ** 2 / (2 * std ** 2) - np.log(std) - 0.5 * np.log(2 * np.pi), axis=(1, 2, 3))
        print(f"t {t_cur}->{t_next} eta {eta}: logp {np.asarray(logp)} by hand {by_hand}")
        np.testing.assert_allclose(logp, by_hand, rtol=1e-5, atol=1e-3)
        z = (xn - mean) / std  # the step's own noise: standard normal, per element
        assert abs(z.mean()) < 0.5 and 0.6 < z.std() < 1.4
        # a given transition (a stored rollout): its density, and the policy score through the mean
        given = jnp.asarray(mean + std * r.normal(size=x.shape), jnp.float32)
        same, logp_given = solvers.sde_step(v_fn, jnp.asarray(x), t_cur, t_next, eta, None, x_next=given)
        assert same is given
        np.testing.assert_allclose(logp_given, solvers.gaussian_logprob(given, jnp.asarray(mean, jnp.float32), std),
                                   rtol=1e-5, atol=1e-3)
        score = jax.grad(lambda c: jnp.sum(solvers.sde_step(lambda x, t: c * jnp.tanh(x) - x, jnp.asarray(x), t_cur,
                                                            t_next, eta, None, x_next=given)[1]))(c)
        dmean_dc = np.tanh(xd) * (1 + s ** 2 * (1 - t_cur) / (2 * t_cur)) * dt
        expected = np.sum((np.asarray(given, np.float64) - mean) / std ** 2 * dmean_dc)
        np.testing.assert_allclose(score, expected, rtol=1e-3)


def test_sde_step_with_eta0_is_the_euler_step():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5)), jnp.float32)
    v_fn = lambda x, t: jnp.sin(3 * x) * t - x
    for t_cur, t_next in ((1.0, 0.8), (0.5, 0.3), (0.1, 0.0)):
        for rng in (None, jax.random.PRNGKey(0)):
            x_next, logp = solvers.sde_step(v_fn, x, t_cur, t_next, 0.0, rng)
            np.testing.assert_array_equal(x_next, solvers.euler_step(v_fn, x, t_cur, t_next))
            np.testing.assert_array_equal(logp, np.zeros(2))
    with pytest.raises(ValueError, match="rng"):
        solvers.sde_step(v_fn, x, 0.5, 0.3, 0.7, None)


def test_sde_sampler_keeps_the_flow_marginals():
    """Data N(m, s^2) has the exact velocity v = (t - (1-t) s^2) / var_t (x - (1-t) m) - m. The
    SDE (eta 0.7, 50 steps) must land on N(m, s^2) like the ODE; dropping its drift correction
    gives std ~1.0, flipping its sign ~3.3."""
    m, s = 1.5, 0.5

    def exact_velocity(p, x, t, c):
        t = t[:, None]
        return (t - (1 - t) * s ** 2) / ((1 - t) ** 2 * s ** 2 + t ** 2) * (x - (1 - t) * m) - m

    noise = jax.random.normal(jax.random.PRNGKey(0), (20000, 1))
    cfg = S.SamplerConfig(num_steps=50, eta=0.7, shift=0.5)
    run = jax.jit(lambda key: S.sample_trajectory(exact_velocity, None, noise, {}, None, cfg, rng=key))
    x0, _, logps = run(jax.random.PRNGKey(1))
    print(f"SDE samples: mean {float(x0.mean()):.4f} (data {m}), std {float(x0.std()):.4f} (data {s})")
    assert abs(float(x0.mean()) - m) < 0.02 and abs(float(x0.std()) - s) < 0.02
    assert logps.shape == (50, 20000) and bool(jnp.all(jnp.isfinite(logps)))
    assert float(jnp.max(jnp.abs(run(jax.random.PRNGKey(2))[0] - x0))) > 0.1
    with pytest.raises(ValueError, match="rng"):
        S.sample_trajectory(exact_velocity, None, noise, {}, None, cfg)


def test_start_step_runs_the_tail_of_the_grid_from_the_noised_image():
    """img2img: start_step s integrates times[s:] only, from (1 - t_s) x + t_s eps; on the exact
    flow of a single data point x* any start ends at x*; diffusers' strength rule picks s."""
    assert [S.start_step_for_strength(20, f) for f in (1.0, 0.5, 0.26, 0.05)] == [0, 10, 15, 19]
    for bad in (0.0, 1.5, 0.04):
        with pytest.raises(ValueError, match="strength"):
            S.start_step_for_strength(20, bad)
    params, (noise, cond, uncond) = _params(), _cond_inputs()
    x = jnp.asarray(np.random.default_rng(4).normal(size=noise.shape), jnp.float32)
    n, s, mu, g = 10, 6, 0.4, 3.0
    cfg = S.SamplerConfig(num_steps=n, guidance_scale=g, shift=mu, start_step=s)
    times = schedules.sampling_times(n, mu)
    start = S.start_state(x, noise, cfg)
    np.testing.assert_allclose(start, (1 - times[s]) * x + times[s] * noise, rtol=1e-6)
    np.testing.assert_array_equal(S.start_state(x, noise, S.SamplerConfig(num_steps=n)), noise)
    out, traj, logps = S.sample_trajectory(mlp_velocity, params, start, cond, uncond, cfg, return_trajectory=True)
    assert traj.shape == (n - s + 1,) + noise.shape and logps.shape == (n - s, noise.shape[0])
    hand = start
    for t_cur, t_next in zip(times[s:-1], times[s + 1:]):
        tb = jnp.full((hand.shape[0],), t_cur)
        v_u = mlp_velocity(params, hand, tb, S._broadcast_batch(uncond, hand.shape[0]))
        v = v_u + g * (mlp_velocity(params, hand, tb, cond) - v_u)
        hand = hand + (t_next - t_cur) * v
    np.testing.assert_allclose(out, hand, atol=1e-6)
    x_star = jnp.array([[0.3, -1.2]])
    straight = lambda p, x, t, c: (x - x_star) / t[:, None]
    for first in (0, 3, 7):
        c = S.SamplerConfig(num_steps=8, shift=0.5, start_step=first)
        z = S.sample_trajectory(straight, None, S.start_state(x_star, jnp.array([[1.0, 2.0]]), c), {}, None, c)[0]
        np.testing.assert_allclose(z, x_star, atol=1e-5)
    with pytest.raises(ValueError, match="grad_last_k"):
        S.sample_trajectory(mlp_velocity, params, start, cond, uncond, cfg, grad_last_k=n - s + 1)


def test_sampler_config_rejects_bad_settings():
    for kwargs, match in ((dict(num_steps=0), "num_steps"), (dict(num_steps=4, solver="rk4"), "solver"),
                          (dict(num_steps=4, eta=-0.1), "eta"), (dict(num_steps=4, solver="heun", eta=0.5), "euler"),
                          (dict(num_steps=4, start_step=4), "start_step"),
                          (dict(num_steps=4, start_step=-1), "start_step")):
        with pytest.raises(ValueError, match=match):
            S.SamplerConfig(**kwargs)
    with pytest.raises(ValueError, match="grad_last_k"):
        S.sample_trajectory(mlp_velocity, _params(), *_cond_inputs(), S.SamplerConfig(num_steps=4), grad_last_k=5)
