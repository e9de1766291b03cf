"""A toy regression Task for testing the generic loop quickly (no real models)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seedream_jax import config_lib
from seedream_jax.data.batches import IndexedBatches
from seedream_jax.models import layers
from seedream_jax.training.loop import Task


class ToyModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.gelu(layers.dense(32, "embed", "mlp", name="fc1")(x))
        return layers.dense(1, "mlp", "embed", name="fc2")(x)


def toy_task(seed: int = 0, batch_size: int = 32) -> Task:
    rng = np.random.default_rng(123)
    xs = rng.normal(size=(512, 8)).astype(np.float32)
    ys = np.sin(xs.sum(-1, keepdims=True)).astype(np.float32)
    model = ToyModel()

    def make_batch(idx, batch_rng):
        noise = batch_rng.normal(size=(len(idx), 1)).astype(np.float32) * 0.01
        return {"x": xs[idx], "y": ys[idx] + noise}

    def init_params(r):
        return {"toy": model.init(r, jnp.zeros((1, 8)))["params"]}, {}

    def loss_fn(params, frozen, batch, r):
        pred = model.apply({"params": params["toy"]}, batch["x"])
        pred = pred + 1e-3 * jax.random.normal(r, pred.shape)  # uses the step rng
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, {"mse": loss}

    return Task(name="toy", init_params=init_params, loss_fn=loss_fn,
                data=IndexedBatches(512, batch_size, seed, make_batch))


def rollout_task(seed: int = 0) -> Task:
    """The toy task with a rollout and two updates per batch, PPO-like: the rollout records the
    current model's noisy predictions ``old_pred`` [B, 1] (and ``probe`` [B, 1], the output bias it
    ran with), and the loss adds a proximal term pulling the predictions towards ``old_pred``."""
    task = toy_task(seed)
    model, base_loss = ToyModel(), task.loss_fn

    def rollout(params, frozen, batch, r):
        old = model.apply({"params": params["toy"]}, batch["x"])
        probe = jnp.broadcast_to(params["toy"]["fc2"]["bias"], old.shape)
        return {**batch, "old_pred": old + 0.05 * jax.random.normal(r, old.shape), "probe": probe}

    def loss_fn(params, frozen, batch, r):
        loss, metrics = base_loss(params, frozen, batch, r)
        prox = jnp.mean((model.apply({"params": params["toy"]}, batch["x"]) - batch["old_pred"]) ** 2)
        return loss + 0.5 * prox, {**metrics, "prox": prox, "rollout_bias": batch["probe"][0, 0]}

    task.loss_fn, task.rollout, task.inner_steps = loss_fn, rollout, 2
    return task


def toy_stage_config(steps: int):
    cfg = config_lib.base_config("tiny")
    stage = cfg.vae
    stage.train.steps = steps
    stage.train.checkpoint_every = 5
    stage.train.log_every = 5
    stage.train.ema_decay = 0.9  # the init_from test checks that the EMA copy is taken
    stage.optimizer.lr = 3e-3
    stage.optimizer.warmup_steps = 5
    return cfg, stage


if __name__ == "__main__":  # used by the SIGTERM test: python tests/toy_task.py <dir> <steps> [sleep]
    import sys
    import time
    from seedream_jax.training import loop
    import logging
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger().addHandler(logging.StreamHandler(sys.stdout))
    cfg, stage = toy_stage_config(int(sys.argv[2]))
    task = toy_task()
    if len(sys.argv) > 3:  # slow the data down so the signal lands mid-run
        delay = float(sys.argv[3])
        base_next = task.data.__class__.__next__

        class Slow(type(task.data)):
            def __next__(self):
                time.sleep(delay)
                return base_next(self)
        task.data.__class__ = Slow
    result = loop.train(task, cfg, stage, sys.argv[1])
    print(f"FINISHED step={result.step} preempted={result.preempted}", flush=True)
