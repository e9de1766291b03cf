"""The one training loop every stage uses.

A stage hands the loop a ``Task`` (how to initialise its parameters, its loss, its data, its
evaluation and optionally a rollout); the loop owns everything else, top to bottom:

  1. logging: TensorBoard event files + console, progress bar with steps/s and ETA;
  2. mesh and shardings: parameter shapes from ``jax.eval_shape``, shardings from logical
     axis rules, state created by a jit with ``out_shardings``; the optimizer with its
     parameter groups and frozen paths (``training/optimizer.py``);
  3. checkpoint: resume from the newest checkpoint that reads (state + data position; a damaged
     newer one is set aside, renamed ``<step>.damaged-<n>``: ``checkpoint/manager.py``), else
     initialise (components of other stages' checkpoints restored straight into their shardings:
     ``Task.init_sources``; or a host hook, ``Task.initialise``). Frozen components taken whole
     from a source are left out of the checkpoints unless ``train.self_contained``: recorded in
     ``<stage_dir>/frozen_sources.json`` at the fresh start and read from the source again at the
     recorded step on resume (``checkpoint/stage_dir.py``);
  4. the update step: one jitted, donated function (state, batch) -> (state, metrics) that runs
     ``Task.rollout`` (if any) with the current parameters, without gradient, then
     ``Task.inner_steps`` optimizer updates on its batch (a ``lax.scan`` when more than one);
  5. the loop: prefetch batches, step, NaN/Inf guard, metrics (with the learning rates ``lr``
     and ``lr/<group>``), periodic evaluation (``Measurements``) and checkpoints; SIGTERM/SIGINT
     save and return cleanly (preemptible VMs).

Steps count optimizer updates everywhere: ``TrainState.step``, ``train.steps``, the schedule,
checkpoint numbers and the ``*_every`` intervals. One loop iteration (one batch drawn, one
rollout) advances ``inner_steps`` updates, so ``train.steps`` must be a multiple of it; logging,
evaluation and checkpoints happen after an iteration that reaches or passes a multiple of their
interval, so checkpoints always fall between iterations and resume is exact.
"""
import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent import futures
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Tuple, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict
from tqdm import tqdm

from seedream_jax.checkpoint import init_from
from seedream_jax.checkpoint import source_records
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
class Measurements:
    """What ``Task.evaluate`` returns.

    scalars: {name: float}, to TensorBoard and the console.
    images: {name: uint8 image [H, W, 3]}, to ``<stage_dir>/samples/<name>_step<N>.png`` and TensorBoard.
    texts: {name: str}, to the console and TensorBoard.
    """
    scalars: Dict[str, float] = dataclasses.field(default_factory=dict)
    images: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    texts: Dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Task:
    """What a stage gives the loop.

    init_params: rng -> (trainable, frozen) parameter trees (boxed, with logical axes).
    loss_fn: (params, frozen, batch, rng) -> (scalar loss, dict of scalar metrics).
    data: the training batches (one per loop iteration).
    init_sources: optional {target component path: (stage_dir, source_path)}
      (``checkpoint.init_from.parse_sources`` of a stage's ``init_from``): on a fresh start those
      components are read from the sources' checkpoints straight into their shardings, and only
      the other leaves are initialised by ``init_params``. Those wholly frozen and read unchanged
      (``init_from.frozen_targets``) stay at their source (``train.self_contained`` False).
    initialise: optional host hook (trainable, frozen) -> (trainable, frozen) applied to the fresh
      parameters as NumPy (after ``init_sources``); it copies the whole state through the host.
      With a hook every component is saved in the checkpoints (it may change any of them).
    evaluate: optional (state, step) -> ``Measurements`` (or, the older form, {name: uint8 image
      [H, W, 3]}); called every ``eval_every`` steps and at the end.
    rollout: optional (params, frozen, batch, rng) -> batch, traced into the update step and run
      with the current trainable parameters before the updates, without gradient (e.g. sampling a
      group of images per prompt); the batch it returns (any keys and shapes) feeds ``loss_fn``.
    inner_steps: optimizer updates per batch (and rollout), each with its own rng.
    """
    name: str
    init_params: Callable[[jax.Array], Tuple[Any, Any]]
    loss_fn: Callable[[Any, Any, Batch, jax.Array], Tuple[jax.Array, Dict[str, jax.Array]]]
    data: DataSource
    init_sources: Optional[Mapping[str, Tuple[str, str]]] = None
    initialise: Optional[Callable[[Any, Any], Tuple[Any, Any]]] = None
    evaluate: Optional[Callable[[TrainState, int], Union[Measurements, Dict[str, np.ndarray]]]] = None
    rollout: Optional[Callable[[Any, Any, Batch, jax.Array], Batch]] = None
    inner_steps: int = 1


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


def make_train_step(task: Task, tx: optax.GradientTransformation, ema_decay: float,
                    learning_rates: Optional[Mapping[str, optax.Schedule]] = None):
    """The step (state, batch) -> (state, metrics): ``task.rollout`` (if any), then
    ``task.inner_steps`` updates (grads of ``task.loss_fn``, optimizer update, EMA).

    Update k (``state.step == k``) uses rng ``fold_in(state.rng, k)``; a rollout before update k
    uses ``rollout_rng(state.rng, k)``. Metrics (scalars) are those of the last update, plus
    ``{name: schedule(k)}`` for each of ``learning_rates`` (the rate that update applied).
    """

    def update(state: TrainState, batch: Batch) -> Tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(task.loss_fn, has_aux=True)
        (loss, metrics), grads = grad_fn(state.params, state.frozen, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = (ema_update(state.ema_params, params, ema_decay_at(state.step, ema_decay)) if state.ema_params
               else state.ema_params)
        metrics = {**metrics, "loss": loss, "grad_norm": global_norm(grads), "param_norm": global_norm(params),
                   **{name: schedule(state.step) for name, schedule in (learning_rates or {}).items()}}
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        return new_state, metrics

    def train_step(state: TrainState, batch: Batch) -> Tuple[TrainState, Metrics]:
        if task.rollout is not None:
            batch = task.rollout(state.params, state.frozen, batch, rollout_rng(state.rng, state.step))
        if task.inner_steps == 1:
            return update(state, batch)
        state, metrics = jax.lax.scan(lambda s, _: update(s, batch), state, length=task.inner_steps)
        return state, jax.tree_util.tree_map(lambda m: m[-1], metrics)

    return train_step


_ROLLOUT_STREAM = 2 ** 31 - 1  # a step number no run reaches (the step is int32)


def rollout_rng(rng: jax.Array, step) -> jax.Array:
    """The key of the rollout before update ``step``: a stream apart from the updates' ``fold_in(rng, step)``."""
    return jax.random.fold_in(jax.random.fold_in(rng, _ROLLOUT_STREAM), step)


@dataclasses.dataclass
class StateLayout:
    """The train state's structure on a mesh, before anything is allocated.

    fresh_state: (rng, restored) -> the unboxed initial TrainState; jit it with
      ``out_shardings=shardings`` to create the state in place. ``restored`` is {} or
      ``init_from.restore_sharded``'s {'params' | 'frozen': {key tuple: array}}: those leaves
      replace the initialised ones (their initialisation is dead code XLA drops), and the
      optimizer state and the EMA start from the result.
    shardings: TrainState of NamedSharding (logical rules applied; unannotated leaves replicated).
    abstract: TrainState of ``jax.ShapeDtypeStruct`` with those shardings (restore target,
      AOT lowering input).
    """
    fresh_state: Callable[[jax.Array, Mapping[str, Mapping[Tuple[str, ...], jax.Array]]], TrainState]
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

    def fresh_state(rng, restored):
        state = nn.meta.unbox(init_state(rng))
        if not any(restored.values()):
            return state
        params, frozen = (_replace_leaves(tree, restored[name]) for name, tree in
                          (("params", state.params), ("frozen", state.frozen)))
        return state.replace(params=params, frozen=frozen, opt_state=tx.init(params),
                             ema_params=params if use_ema else {})

    boxed = jax.eval_shape(init_state, root_rng)
    shardings = sharding_lib.tree_shardings(boxed, mesh, rules)
    abstract = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                      nn.meta.unbox(boxed), shardings)
    return StateLayout(fresh_state=fresh_state, shardings=shardings, abstract=abstract)


def _replace_leaves(tree, leaves: Mapping[Tuple[str, ...], Any]):
    """``tree`` (nested dicts) with the leaves at the key tuples of ``leaves`` replaced (or added)."""
    if not leaves:
        return tree
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    return flax.traverse_util.unflatten_dict({**flat, **leaves})


def _record_frozen_sources(task: Task, abstract, self_contained: bool, stage_dir: str) -> Dict[str, dict]:
    """At a fresh start: {target: ``source_records.source_record(source, path=...)``} of the
    ``task.init_sources`` the checkpoints leave at their source (``init_from.frozen_targets``;
    none when ``self_contained`` or with an ``initialise`` hook), written to
    ``<stage_dir>/frozen_sources.json`` by process 0 (a stale one removed when there are none)."""
    targets = ({} if self_contained or task.initialise is not None or not task.init_sources else
               init_from.frozen_targets(abstract.params, abstract.frozen, task.init_sources))
    records = {target: source_records.source_record(src[0], path=src[1]) for target, src in targets.items()}
    if jax.process_index() == 0:
        source_records.write_frozen_sources(stage_dir, records)
    for target, r in records.items():
        logging.info("[%s] %s is stored at its source %s:%s (step %d), not in this stage's checkpoints",
                     task.name, target, r["source"], r["path"], r["step"])
    return records


def _read_frozen_sources(abstract, records: Mapping[str, dict]) -> Dict[Tuple[str, ...], jax.Array]:
    """{key tuple in the frozen tree: jax.Array}: the components of ``records`` (``frozen_sources``),
    each read from its source at the recorded step and weights into its sharding in ``abstract``."""
    leaves = {}
    for target, r in records.items():
        leaves.update(init_from.restore_sharded(abstract.params, abstract.frozen, {target: (r["source"], r["path"])},
                                                use_ema=r["weights"] == "ema", step=r["step"])["frozen"])
    return leaves


def _saved(state, records: Mapping[str, dict]):
    """The TrainState (of arrays, or abstract) as checkpointed: without the frozen subtrees stored
    at their source (the '/'-paths keyed in ``records``), otherwise the same tree."""
    if not records:
        return state
    drop = [tuple(path.strip("/").split("/")) for path in records]
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state.frozen), keep_empty_nodes=True)
    return state.replace(frozen=flax.traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if not any(k[:len(d)] == d for d in drop)}))


def jit_train_step(task: Task, tx: optax.GradientTransformation, ema_decay: float, state_shardings,
                   learning_rates: Optional[Mapping[str, optax.Schedule]] = None):
    """The jitted, state-donating step (state, batch) -> (state, metrics) of ``make_train_step``."""
    return jax.jit(make_train_step(task, tx, ema_decay, learning_rates), donate_argnums=(0,),
                   out_shardings=(state_shardings, None))


def _due(step: int, advanced: int, every: int) -> bool:
    """Whether advancing to ``step`` by ``advanced`` steps reached or passed a multiple of ``every``."""
    return every > 0 and step // every != (step - advanced) // every


def train(task: Task, cfg: ConfigDict, stage_cfg: ConfigDict, stage_dir: str) -> RunResult:
    """Run ``task`` for ``stage_cfg.train.steps`` steps in ``stage_dir``, resuming if a checkpoint exists.

    Config fields used: ``stage_cfg.train.{steps, seed, log_every, eval_every, checkpoint_every,
    keep_checkpoints, ema_decay, async_checkpoint, self_contained}``, ``stage_cfg.optimizer.*``,
    and the run-wide ``cfg.mesh.*`` and ``cfg.sharding.rules``. ``self_contained`` counts at the
    fresh start only: a resume follows the ``frozen_sources.json`` that start wrote.
    """
    t_start = time.time()
    tcfg = stage_cfg.train
    total_steps, inner = int(tcfg.steps), int(task.inner_steps)
    if inner < 1 or total_steps % inner:
        raise ValueError(f"[{task.name}] train.steps={total_steps} must be a multiple of the task's "
                         f"inner_steps={inner} (updates per batch)")
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
    shardings, abstract = layout.shardings, layout.abstract
    optimizer_lib.check_flatten_layout(stage_cfg.optimizer, shardings.params)
    # ---- checkpoint: resume, or initialise (optionally from another stage)
    ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), keep=int(tcfg.keep_checkpoints),
                        async_save=bool(tcfg.async_checkpoint))
    if ckpt.latest_step() is not None:
        stored = source_records.frozen_sources(stage_dir)
        try:
            for target, record in stored.items():
                source_records.check_source(stage_dir, target, record)
            # the newest step that reads (damaged ones set aside), then what is stored at its source
            state, data_state = ckpt.restore(_saved(abstract, stored))
            state = state.replace(frozen=_replace_leaves(state.frozen, _read_frozen_sources(abstract, stored)))
        except BaseException:
            ckpt.close()
            raise
        task.data.set_state(data_state)
        aside = ", ".join(f"step {failure.step} as {os.path.basename(path)}" for failure, path in ckpt.set_aside)
        logging.info("[%s] resumed from %s at step %d%s", task.name, ckpt.directory, int(state.step),
                     f" (newer checkpoints that do not read were set aside: {aside})" if aside else "")
        if int(state.step) % inner:
            raise ValueError(f"[{task.name}] checkpoint step {int(state.step)} in {ckpt.directory} is not a "
                             f"multiple of inner_steps={inner}: it was written with another inner_steps")
    else:
        stored = _record_frozen_sources(task, abstract, bool(tcfg.self_contained), stage_dir)
        others = {t: src for t, src in (task.init_sources or {}).items() if t not in stored}
        restored = (init_from.restore_sharded(abstract.params, abstract.frozen, others) if others
                    else {"params": {}, "frozen": {}})
        restored["frozen"].update(_read_frozen_sources(abstract, stored))
        state = jax.jit(layout.fresh_state, out_shardings=shardings)(root_rng, restored)
        if task.initialise is not None:
            params, frozen = task.initialise(jax.device_get(state.params), jax.device_get(state.frozen))
            params = jax.device_put(params, shardings.params)
            state = state.replace(params=params, frozen=jax.device_put(frozen, shardings.frozen),
                                  opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
                                  ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else {})
    start_step = int(state.step)
    # ---- the update step
    batch_shardings = None
    step_fn = jit_train_step(task, tx, float(tcfg.ema_decay), shardings,
                             optimizer_lib.learning_rates(stage_cfg.optimizer, total_steps))

    def put(batch: Batch):
        nonlocal batch_shardings
        if batch_shardings is None:
            for k, v in batch.items():
                mesh_lib.check_batch_splits(mesh, np.shape(v)[0] * jax.process_count(),
                                            f"[{task.name}] batch field {k!r} (train.batch_size={tcfg.batch_size})")
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
                if _due(step, inner, log_every):
                    writer.write_scalars(step, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
            state, metrics, step = new_state, new_metrics, step + inner
            data_state = data_state_after
            bar.update(inner)
            if t_loop is None:
                jax.block_until_ready(state.step)
                t_loop = time.time()  # exclude compilation from steps/s
            else:
                timed_steps += inner
            if task.evaluate is not None and _due(step, inner, eval_every) and step < total_steps:
                _write_measurements(writer, stage_dir, step, task.evaluate(state, step))
            if stop.signal is not None:
                logging.warning("[%s] %s received: saving step %d and exiting", task.name, stop.signal, step)
                preempted = True
                break
            if _due(step, inner, ckpt_every):
                ckpt.save(step, _saved(state, stored), data_state)
                last_saved = step
        if metrics is not None:
            last = _fetch_metrics(metrics)
            _check_finite(last, step)
            writer.write_scalars(step, last)
        if step > start_step and last_saved != step:
            ckpt.save(step, _saved(state, stored), data_state, force=True)
    bar.close()
    prefetch.shutdown(wait=False, cancel_futures=True)
    ckpt.wait()
    ckpt.close()
    if not preempted and task.evaluate is not None:
        _write_measurements(writer, stage_dir, step, task.evaluate(state, step))
    writer.close()
    sps = timed_steps / (time.time() - t_loop) if t_loop and timed_steps else float("nan")
    return RunResult(state=state, step=step, preempted=preempted, last_metrics=last,
                     steps_per_second=sps, wall_seconds=time.time() - t_start)


def _write_measurements(writer, stage_dir: str, step: int, result: Union[Measurements, Dict[str, np.ndarray]]):
    """An evaluation's scalars and texts to the writer, its images to PNG files under
    ``<stage_dir>/samples`` and TensorBoard; process 0 only. A plain dict is a dict of images."""
    if jax.process_index() > 0:
        return
    m = result if isinstance(result, Measurements) else Measurements(images=result)
    from PIL import Image
    out_dir = os.path.join(stage_dir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    for name, img in m.images.items():
        path = os.path.join(out_dir, f"{name}_step{step:06d}.png")
        Image.fromarray(np.asarray(img, np.uint8)).save(path)
        logging.info("wrote %s", path)
    if m.scalars:
        writer.write_scalars(step, {k: float(v) for k, v in m.scalars.items()})
    if m.texts:
        writer.write_texts(step, m.texts)
    if m.images:
        writer.write_images(step, m.images)
