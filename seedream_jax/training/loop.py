"""The one training loop every stage uses.

A stage hands the loop a ``Task`` (how to initialise its parameters, its loss, its data and
its evaluation); the loop owns everything else, top to bottom:

  1. logging: TensorBoard event files + console, progress bar with steps/s and ETA;
  2. mesh and shardings: parameter shapes from ``jax.eval_shape``, shardings from logical
     axis rules, state created by a jit with ``out_shardings``;
  3. checkpoint: resume from the latest checkpoint (state + data position), else initialise
     (optionally from another stage's checkpoint: ``Task.initialise``);
  4. the update step: one jitted, donated function returning (state, metrics);
  5. the loop: prefetch batches, step, NaN/Inf guard, metrics, periodic evaluation and
     checkpoints; SIGTERM/SIGINT save and return cleanly (preemptible VMs).
"""
import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent import futures
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict
from tqdm import tqdm

from seedream_jax.checkpoint.manager import Checkpointer
from seedream_jax.parallel import mesh as mesh_lib
from seedream_jax.parallel import sharding as sharding_lib
from seedream_jax.training import optimizer as optimizer_lib
from seedream_jax.training.state import TrainState, ema_decay_at, ema_update, global_norm
from seedream_jax.training.writers import MetricWriter

Batch = Dict[str, np.ndarray]
Metrics = Dict[str, jax.Array]


class DataSource(Protocol):
    """A resumable stream of global batches (dicts of NumPy arrays with a leading batch axis)."""

    def __next__(self) -> Batch: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass
class Task:
    """What a stage gives the loop.

    init_params: rng -> (trainable, frozen) parameter trees (boxed, with logical axes).
    loss_fn: (params, frozen, batch, rng) -> (scalar loss, dict of scalar metrics).
    data: the training batches.
    initialise: optional host hook (trainable, frozen) -> (trainable, frozen) applied to freshly
      initialised NumPy parameters, e.g. loading another stage's checkpoint (``init_from``).
    evaluate: optional (state, step) -> {name: uint8 image [H, W, 3]}; called every
      ``eval_every`` steps and at the end; images go to PNG files and TensorBoard.
    """
    name: str
    init_params: Callable[[jax.Array], Tuple[Any, Any]]
    loss_fn: Callable[[Any, Any, Batch, jax.Array], Tuple[jax.Array, Dict[str, jax.Array]]]
    data: DataSource
    initialise: Optional[Callable[[Any, Any], Tuple[Any, Any]]] = None
    evaluate: Optional[Callable[[TrainState, int], Dict[str, np.ndarray]]] = None


@dataclasses.dataclass
class RunResult:
    state: TrainState
    step: int
    preempted: bool
    last_metrics: Dict[str, float]
    steps_per_second: float
    wall_seconds: float


class NonFiniteError(FloatingPointError):
    """Raised when a training metric becomes NaN or Inf; names the step and the metric."""


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop polls (installed only on the main thread)."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _fetch_metrics(metrics: Metrics) -> Dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _check_finite(metrics: Dict[str, float], step: int):
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise NonFiniteError(f"training stopped at step {step}: non-finite metric(s) {bad}; "
                             "the last good checkpoint is kept. Lower the learning rate or check the data.")


def make_train_step(task: Task, tx: optax.GradientTransformation, ema_decay: float):
    """The update step: grads of ``task.loss_fn``, optimizer update, EMA, metrics."""

    def train_step(state: TrainState, batch: Batch) -> Tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)
        (loss, metrics), grads = grad_fn(state.params, state.frozen, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = (ema_update(state.ema_params, params, ema_decay_at(state.step, ema_decay)) if state.ema_params
               else state.ema_params)
        metrics = {**metrics, "loss": loss, "grad_norm": global_norm(grads), "param_norm": global_norm(params)}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        return new_state, metrics

    return train_step


@dataclasses.dataclass
class StateLayout:
    """The train state's structure on a mesh, before anything is allocated.

    init_state: rng -> boxed TrainState (parameters carry logical axes); jit it with
      ``out_shardings=shardings`` after ``nn.meta.unbox`` to create the state in place.
    shardings: TrainState of NamedSharding (logical rules applied; unannotated leaves replicated).
    abstract: TrainState of ``jax.ShapeDtypeStruct`` with those shardings (restore target,
      AOT lowering input).
    """
    init_state: Callable[[jax.Array], TrainState]
    shardings: Any
    abstract: Any


def state_layout(task: Task, tx: optax.GradientTransformation, use_ema: bool, root_rng: jax.Array,
                 mesh, rules) -> StateLayout:
    """Shapes of the task's TrainState from ``jax.eval_shape`` and its shardings on ``mesh``."""

    def init_state(rng):
        params_rng, state_rng = jax.random.split(rng)
        params, frozen = task.init_params(params_rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                          opt_state=tx.init(params), ema_params=params if use_ema else {}, rng=state_rng)

    boxed = jax.eval_shape(init_state, root_rng)
    shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
    abstract = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                      nn.meta.unbox(boxed), shardings)
    return StateLayout(init_state=init_state, shardings=shardings, abstract=abstract)


def jit_train_step(task: Task, tx: optax.GradientTransformation, ema_decay: float, state_shardings):
    """The jitted, state-donating update step (state, batch) -> (state, metrics)."""
    return jax.jit(make_train_step(task, tx, ema_decay), donate_argnums=(0,), out_shardings=(state_shardings, None))


def train(task: Task, cfg: ConfigDict, stage_cfg: ConfigDict, stage_dir: str) -> RunResult:
    """Run ``task`` for ``stage_cfg.train.steps`` steps in ``stage_dir``, resuming if a checkpoint exists.

    Config fields used: ``stage_cfg.train.{steps, seed, log_every, eval_every, checkpoint_every,
    keep_checkpoints, ema_decay, async_checkpoint}``, ``stage_cfg.optimizer.*``, and the
    run-wide ``cfg.mesh.*`` and ``cfg.sharding.rules``.
    """
    t_start = time.time()
    tcfg = stage_cfg.train
    total_steps = int(tcfg.steps)
    os.makedirs(stage_dir, exist_ok=True)
    # ---- logging
    writer = MetricWriter(os.path.join(stage_dir, "tensorboard") if jax.process_index() == 0 else None,
                          prefix=f"[{task.name}] ")
    # ---- mesh and shardings
    mesh = mesh_lib.make_mesh(cfg.mesh)
    rules = sharding_lib.resolve_rules(cfg.sharding.rules)
    tx = optimizer_lib.make_optimizer(stage_cfg.optimizer, total_steps)
    use_ema = float(tcfg.ema_decay) > 0
    root_rng = jax.random.PRNGKey(int(tcfg.seed))
    layout = state_layout(task, tx, use_ema, root_rng, mesh, rules)
    init_state, shardings, abstract = layout.init_state, layout.shardings, layout.abstract
    # ---- checkpoint: resume, or initialise (optionally from another stage)
    ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), keep=int(tcfg.keep_checkpoints),
                        async_save=bool(tcfg.async_checkpoint))
    if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(abstract)
        task.data.set_state(data_state)
        logging.info("[%s] resumed from %s at step %d", task.name, ckpt.directory, int(state.step))
    else:
        state = jax.jit(lambda r: nn.meta.unbox(init_state(r)), out_shardings=shardings)(root_rng)
        if task.initialise is not None:
            params, frozen = task.initialise(jax.device_get(state.params), jax.device_get(state.frozen))
            params = jax.device_put(params, shardings.params)
            state = state.replace(params=params, frozen=jax.device_put(frozen, shardings.frozen),
                                  opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
                                  ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else {})
    start_step = int(state.step)
    # ---- the update step
    batch_shardings = None
    step_fn = jit_train_step(task, tx, float(tcfg.ema_decay), shardings)

    def put(batch: Batch):
        nonlocal batch_shardings
        if batch_shardings is None:
            batch_shardings = {k: mesh_lib.batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}
        return {k: jax.make_array_from_process_local_data(batch_shardings[k], np.asarray(v))
                for k, v in batch.items()}

    # ---- the loop
    log_every, eval_every = int(tcfg.log_every), int(tcfg.eval_every)
    ckpt_every = int(tcfg.checkpoint_every)
    prefetch = futures.ThreadPoolExecutor(max_workers=1)
    pending = prefetch.submit(lambda: (next(task.data), task.data.get_state()))
    last, metrics, preempted, last_saved = {}, None, False, start_step
    t_loop, timed_steps = None, 0
    bar = tqdm(total=total_steps, initial=start_step, desc=task.name, unit="step", dynamic_ncols=True,
               disable=jax.process_index() > 0, mininterval=1.0)
    step = start_step
    with _StopFlag() as stop, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        while step < total_steps:
            batch, data_state_after = pending.result()
            pending = prefetch.submit(lambda: (next(task.data), task.data.get_state()))
            new_state, new_metrics = step_fn(state, put(batch))
            if metrics is not None:  # fetch the previous step's metrics while this one runs
                last = _fetch_metrics(metrics)
                _check_finite(last, step)
                if step % log_every == 0:
                    writer.write_scalars(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
            state, metrics, step = new_state, new_metrics, step + 1
            data_state = data_state_after
            bar.update(1)
            if t_loop is None:
                jax.block_until_ready(state.step)
                t_loop = time.time()  # exclude compilation from steps/s
            else:
                timed_steps += 1
            if eval_every and task.evaluate is not None and step % eval_every == 0 and step < total_steps:
                _write_images(writer, stage_dir, step, task.evaluate(state, step))
            if stop.signal is not None:
                logging.warning("[%s] %s received: saving step %d and exiting", task.name, stop.signal, step)
                preempted = True
                break
            if ckpt_every and step % ckpt_every == 0:
                ckpt.save(step, state, data_state)
                last_saved = step
        if metrics is not None:
            last = _fetch_metrics(metrics)
            _check_finite(last, step)
            writer.write_scalars(step, last)
        if step > start_step and last_saved != step:
            ckpt.save(step, state, data_state, force=True)
    bar.close()
    prefetch.shutdown(wait=False, cancel_futures=True)
    ckpt.wait()
    ckpt.close()
    if not preempted and task.evaluate is not None:
        _write_images(writer, stage_dir, step, task.evaluate(state, step))
    writer.close()
    sps = timed_steps / (time.time() - t_loop) if t_loop and timed_steps else float("nan")
    return RunResult(state=state, step=step, preempted=preempted, last_metrics=last,
                     steps_per_second=sps, wall_seconds=time.time() - t_start)


def _write_images(writer, stage_dir: str, step: int, images: Dict[str, np.ndarray]):
    """PNG files under ``<stage_dir>/samples`` and TensorBoard images; process 0 only."""
    if jax.process_index() > 0:
        return
    from PIL import Image
    out_dir = os.path.join(stage_dir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    for name, img in images.items():
        path = os.path.join(out_dir, f"{name}_step{step:06d}.png")
        Image.fromarray(np.asarray(img, np.uint8)).save(path)
        logging.info("wrote %s", path)
    writer.write_images(step, images)
