"""Orbax checkpointing of a TrainState plus the data-iterator position, and what happens when a
checkpoint does not read.

Layout: ``<stage_dir>/checkpoints/<step>/{state,data}``. Saves are asynchronous (training
continues while the previous save is written); the last ``keep`` are kept, and so is the step the
run resumed from (``Checkpointer.restore``), whatever ``keep`` says.

A damaged step (a truncated or missing file from a partial copy or a bad disk, a file that does
not decode) raises ``CheckpointReadError``: one message naming the step, the file and the reason,
instead of TensorStore's traceback. ``Checkpointer.restore`` (the loop's resume) sets such a step
aside, renamed ``<step>.damaged-<n>`` (never deleted), logs one line and restores the newest step
that reads; if none does it fails naming every step tried and leaves them all in place. Readers
of finished stages (``restore_raw_state``, ``restore_subset``; ``verify_step`` checks a step's
files without reading its arrays) fail with the same message and set nothing aside. An error
that is not damage (a tree or shape that does not match the reader's model, no memory) is
raised as it is.
"""
import dataclasses
import json
import logging
import os
import re
from typing import Any, List, Optional, Sequence, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data")
# TensorStore status codes of a read that found the bytes missing, short or undecodable. Others
# (RESOURCE_EXHAUSTED, UNAVAILABLE, PERMISSION_DENIED, ...) say nothing about the checkpoint.
_DAMAGE_CODES = ("OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION")
_TS_FILE = re.compile(r'local file "([^"]+)"')
# OCDBT index locations (``tensorstore.ocdbt.dump``): kind:base_path:relative_path:offset:length.
_OCDBT_LOCATION = re.compile(r"^(value|btreenode):([^:]*):(.+):(\d+):(\d+)$")


@dataclasses.dataclass(frozen=True)
class StepFailure:
    """Why checkpoint ``step`` did not read: the ``file`` at fault (None when unknown) and ``reason``."""
    step: int
    file: Optional[str]
    reason: str

    def describe(self) -> str:
        return f"step {self.step}: {self.file + ': ' if self.file else ''}{self.reason}"


class CheckpointReadError(ValueError):
    """Checkpoint step(s) whose files are damaged or incomplete; ``failures`` lists each
    ``StepFailure`` (newest first)."""

    def __init__(self, message: str, failures: Sequence[StepFailure]):
        super().__init__(message)
        self.failures = list(failures)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _json_files(item_dir: str) -> List[str]:
    """The JSON files Orbax reads in an item directory: the tree metadata, the shardings, the
    per-process array metadata and a JSON item's content."""
    paths = [os.path.join(item_dir, name) for name in ("_METADATA", "_sharding", "metadata")]
    extra = os.path.join(item_dir, "array_metadatas")
    if os.path.isdir(extra):
        paths += [os.path.join(extra, name) for name in sorted(os.listdir(extra))]
    return [p for p in paths if os.path.isfile(p)]


def _unparsable_json(step_dir: str) -> Optional[str]:
    """The first JSON file of a step directory's items that does not parse, or None."""
    for item in ITEMS:
        for path in _json_files(os.path.join(step_dir, item)):
            try:
                with open(path, "rb") as f:
                    json.loads(f.read().decode("utf-8"))
            except (ValueError, OSError):
                return path
    return None


def read_failure(exc: BaseException, step: int, step_dir: str) -> Optional[StepFailure]:
    """The ``StepFailure`` an exception raised while reading ``step_dir`` describes, or None when
    it is not damage to the checkpoint's files (a mismatched tree or shape, memory, a bug). Orbax
    re-raises TensorStore's errors ``from`` them, so the explicit causes are looked at too."""
    while exc is not None:
        failure = _failure_of(exc, step, step_dir)
        if failure is not None:
            return failure
        exc = exc.__cause__
    return None


def _failure_of(exc: BaseException, step: int, step_dir: str) -> Optional[StepFailure]:
    if isinstance(exc, CheckpointReadError):
        return exc.failures[0]
    text = str(exc)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return StepFailure(step, _unparsable_json(step_dir), f"{type(exc).__name__}: {_first_line(text)}")
    if isinstance(exc, FileNotFoundError):
        found = re.search(r"File (\S+) not found", text)
        return StepFailure(step, exc.filename or (found.group(1) if found else None), "the file is missing")
    if isinstance(exc, KeyError) and "was not found in the checkpoint" in text:
        item = re.search(r'Item "([^"]+)"', text)
        return StepFailure(step, os.path.join(step_dir, item.group(1)) if item else None,
                           "missing item: " + _first_line(text).strip("'\""))
    damage = _tensorstore_damage(exc)
    if not damage or not _TS_FILE.search(text):
        return None
    message = text.split(" [tensorstore_spec", 1)[0]
    files = [f for f in _TS_FILE.findall(message) if not f.endswith("/")]
    if files:
        return StepFailure(step, files[-1], damage if os.path.exists(files[-1]) else "the file is missing")
    key = re.search(r'Error reading "([^"]+)" in OCDBT database at local file "([^"]+)"', message)
    file = _ocdbt_value_file(key.group(2), key.group(1)) if key else None
    return StepFailure(step, file or (key.group(2) if key else None), damage)


def _ocdbt_value_file(item_dir: str, key: str) -> Optional[str]:
    """The data file that holds OCDBT ``key`` of an item directory, from its index; None when
    the index does not say (diagnosis only: any error here leaves the file unnamed)."""
    try:
        import tensorstore as ts
        kvstore = ts.KvStore.open({"driver": "file", "path": item_dir.rstrip("/") + "/"}).result()
        versions = ts.ocdbt.dump(kvstore).result().get("versions") or []
        pending = _ocdbt_locations(versions[-1].get("root")) if versions else []
        while pending:
            location = pending.pop()
            if not location.startswith("btreenode:"):
                continue
            node = ts.ocdbt.dump(kvstore, location).result()
            for entry in node.get("entries") or []:
                value = entry.get("indirect_value")
                if entry.get("key") in (key, key.encode()) and isinstance(value, str):
                    _, base, relative, _, _ = _OCDBT_LOCATION.match(value).groups()
                    return os.path.join(item_dir, base, relative)
            pending += _ocdbt_locations(node)
    except Exception:  # noqa: BLE001
        return None
    return None


def _tensorstore_damage(exc: BaseException) -> Optional[str]:
    """'CODE: cause' of a TensorStore error that says bytes are missing, short or undecodable, else None."""
    text = str(exc)
    code = re.match(r"([A-Z_]+): ", text)
    if not isinstance(exc, ValueError) or not code or code.group(1) not in _DAMAGE_CODES:
        return None
    message = text.split(" [tensorstore_spec", 1)[0].strip()
    # TensorStore chains its context ("Error opening ...: Error reading ... of local file "...": cause");
    # the cause is what follows the last quoted file name.
    cause = message.rsplit('": ', 1)[1] if '": ' in message else message[code.end():]
    cause = re.sub(r'\s*(?:of |in )?local file "[^"]*"', "", cause).strip()
    return f"{code.group(1)}: {_first_line(cause) or 'unreadable'}"[:300]


def _step_error(directory: str, failure: StepFailure, others: Sequence[int] = ()) -> CheckpointReadError:
    """The error of one step that does not read (``others``: the directory's other steps)."""
    hint = f"; other steps there: {sorted(others)}" if others else ""
    return CheckpointReadError(f"checkpoint {failure.describe()} (in {directory}){hint}", [failure])


def _all_steps(directory: str) -> List[int]:
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def _ocdbt_locations(tree) -> List[str]:
    """Every OCDBT location string in a ``tensorstore.ocdbt.dump`` result."""
    if isinstance(tree, str):
        return [tree] if _OCDBT_LOCATION.match(tree) else []
    if isinstance(tree, dict):
        return [loc for v in tree.values() for loc in _ocdbt_locations(v)]
    if isinstance(tree, (list, tuple)):
        return [loc for v in tree for loc in _ocdbt_locations(v)]
    return []


def _check_item(item_dir: str) -> Optional[Tuple[str, str]]:
    """(file, reason) of the first problem of an item directory, or None. JSON files must parse;
    an OCDBT item's manifest and b-tree nodes are read (not its arrays) and every data file they
    refer to must exist and hold the referenced byte range."""
    if not os.path.isdir(item_dir):
        return item_dir, "missing item"
    for path in _json_files(item_dir):
        with open(path, "rb") as f:
            try:
                json.loads(f.read().decode("utf-8"))
            except ValueError as e:
                return path, f"does not parse ({type(e).__name__}: {_first_line(str(e))})"
    if not os.path.isfile(os.path.join(item_dir, "manifest.ocdbt")):
        if not os.path.isfile(os.path.join(item_dir, "_METADATA")) and not os.path.isfile(
                os.path.join(item_dir, "metadata")):  # neither a tree nor a JSON item's content
            return os.path.join(item_dir, "metadata"), "the file is missing"
        return None
    import tensorstore as ts

    def dump(path: str, node: Optional[str] = None):
        """``tensorstore.ocdbt.dump`` of the manifest or a b-tree node; (None, problem) when
        TensorStore finds the bytes short or undecodable."""
        try:
            return ts.ocdbt.dump(kvstore, node).result(), None
        except ValueError as e:
            damage = _tensorstore_damage(e)
            if damage is None:
                raise
            return None, (path, damage)

    kvstore = ts.KvStore.open({"driver": "file", "path": item_dir.rstrip("/") + "/"}).result()
    manifest, problem = dump(os.path.join(item_dir, "manifest.ocdbt"))
    if problem:
        return problem
    versions = manifest.get("versions") or []
    pending = _ocdbt_locations(versions[-1].get("root")) if versions else []
    seen = set()
    while pending:
        location = pending.pop()
        kind, base, relative, offset, length = _OCDBT_LOCATION.match(location).groups()
        path = os.path.join(item_dir, base, relative)
        end = int(offset) + int(length)
        if not os.path.isfile(path):
            return path, "the file is missing (the checkpoint's index refers to it)"
        size = os.path.getsize(path)
        if size < end:
            return path, f"truncated: {size} bytes, the checkpoint's index refers to bytes up to {end}"
        if kind == "btreenode" and location not in seen:
            seen.add(location)
            node, problem = dump(path, location)
            if problem:
                return problem
            pending += _ocdbt_locations(node)
    return None


def verify_step(directory: str, step: int, items: Sequence[str] = ("state",)) -> None:
    """Check that checkpoint ``step`` of ``directory`` (a ``checkpoints/`` folder) is whole, without
    reading its arrays: each of ``items`` is there, its JSON files parse, and every file its OCDBT
    index refers to exists with the bytes referred to (what a partial copy or a full disk breaks;
    a flipped byte inside an array is found when it is read). Raises ``CheckpointReadError``."""
    directory = os.path.abspath(directory)
    step_dir = os.path.join(directory, str(step))
    others = [s for s in _all_steps(directory) if s != step]
    try:
        for item in items:
            problem = _check_item(os.path.join(step_dir, item))
            if problem:
                raise _step_error(directory, StepFailure(step, *problem), others)
    except CheckpointReadError:
        raise
    except Exception as e:
        failure = read_failure(e, step, step_dir)
        if failure is None:
            raise
        raise _step_error(directory, failure, others) from None


class reading:
    """Context manager around reads of checkpoint ``step`` of ``directory`` (a ``checkpoints/``
    folder): ``verify_step`` of ``items`` first, unless ``verify`` is False (a missing or short
    file is found before Orbax starts its concurrent reads, whose failure leaves TensorStore
    callbacks printing "Event loop is closed" tracebacks); then damage found while reading becomes
    a ``CheckpointReadError`` (without TensorStore's traceback); other errors pass unchanged."""

    def __init__(self, directory: str, step: int, items: Sequence[str] = ("state",), *, verify: bool = True):
        self.directory, self.step, self.items, self.verify = os.path.abspath(directory), step, items, verify

    def __enter__(self):
        if self.verify:
            verify_step(self.directory, self.step, self.items)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, CheckpointReadError):
            return False
        failure = read_failure(exc, self.step, os.path.join(self.directory, str(self.step)))
        if failure is None:
            return False
        raise _step_error(self.directory, failure,
                          [s for s in _all_steps(self.directory) if s != self.step]) from None


class _KeepRestored(ocp.checkpoint_managers.PreservationPolicy):
    """Preservation policy that keeps the step a run restored (``step``), beside the keep-N rule."""

    def __init__(self):
        self.step: Optional[int] = None

    def should_preserve(self, checkpoints, *, context) -> List[bool]:
        return [info.step == self.step for info in checkpoints]


def _all_processes(ok: bool) -> bool:
    """True when ``ok`` holds on every process (they restore, or set a step aside, together)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray([ok], np.int32))))


def _item_handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` for (TrainState, data-state dict) pairs.

    ``keep``: the newest steps kept (None: all); the step ``restore`` returned is kept as well, so
    that the last step known to read is never deleted by newer saves that might not.
    ``restored_step`` and ``set_aside`` (a list of (``StepFailure``, new path)) say what the last
    ``restore`` did.
    """

    def __init__(self, directory: str, *, keep: Optional[int] = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._restored = _KeepRestored()
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [ocp.checkpoint_managers.LatestN(n=keep), self._restored])
        options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=async_save,
                                               preservation_policy=policy)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_item_handlers())
        self.restored_step: Optional[int] = None
        self.set_aside: List[Tuple[StepFailure, str]] = []

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> List[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Start an (async) save of ``state`` and the JSON-able ``data_state`` at ``step``."""
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, dict]:
        """Restore (state, data_state) into the shardings of ``abstract_state`` (a tree of
        ``jax.ShapeDtypeStruct`` with ``.sharding``).

        ``step`` None: the newest step that reads. Each newer step that does not (damaged files)
        is set aside, renamed ``<step>.damaged-<n>`` (never deleted), with one warning naming the
        step and the file; with no step that reads, ``CheckpointReadError`` names every step tried
        and why, and nothing is renamed. An explicit ``step`` that does not read raises
        ``CheckpointReadError``. Errors that are not damage (e.g. a shape that differs from
        ``abstract_state``) are raised as they are.
        """
        steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failures = []
        for s in steps:
            out = self._read(abstract_state, s)
            if isinstance(out, StepFailure):
                failures.append(out)
                continue
            if step is None:
                self._set_aside(failures)
            self._restored.step = self.restored_step = s
            return out
        if step is not None:
            raise _step_error(self.directory, failures[0], [s for s in self.all_steps() if s != step])
        raise CheckpointReadError(
            f"no checkpoint in {self.directory} reads; tried, newest first:\n"
            + "\n".join("  " + f.describe() for f in failures)
            + "\nNothing was renamed: restore the damaged files, or move the checkpoints directory away "
              "to start the stage over.", failures)

    def _read(self, abstract_state: Any, step: int):
        """(state, data_state) of ``step``, or the ``StepFailure`` of a step that does not read."""
        out, failure = None, None
        try:
            with reading(self.directory, step, ITEMS):
                out = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except CheckpointReadError as e:
            failure = e.failures[0]
        if not _all_processes(failure is None):
            return failure or StepFailure(step, None, "another process could not read its part of it")
        return out.state, dict(out.data)

    def _set_aside(self, failures: Sequence[StepFailure]):
        """Rename the steps of ``failures`` to ``<step>.damaged-<n>`` (process 0) and log each."""
        if not failures:
            return
        for failure in failures:
            n = 1
            while os.path.exists(os.path.join(self.directory, f"{failure.step}.damaged-{n}")):
                n += 1
            new = os.path.join(self.directory, f"{failure.step}.damaged-{n}")
            if jax.process_index() == 0:
                os.rename(os.path.join(self.directory, str(failure.step)), new)
                logging.warning("checkpoint %s; set aside as %s", failure.describe(), new)
            self.set_aside.append((failure, new))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("seedream_checkpoint_set_aside")
        self._manager.reload()

    def wait(self):
        """Block until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()


def restore_subset(stage_dir: str, target: Any, step: Optional[int] = None) -> Any:
    """Restore only some leaves of a stage's saved TrainState, straight into their shardings.

    ``target`` is a nested dict mirroring the saved state's keys (e.g. ``{'ema_params': {'vae':
    {...}}}``) whose leaves are ``jax.ShapeDtypeStruct`` with ``.sharding``; leaves it leaves out
    are not read. Returns the same tree of ``jax.Array`` (each process reads only its shards).
    A step that does not read raises ``CheckpointReadError``.
    """
    directory = os.path.join(os.path.abspath(stage_dir), "checkpoints")
    manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        with reading(directory, step):
            out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True)))
    finally:
        manager.close()
    return out.state


def restore_raw_state(stage_dir: str, step: Optional[int] = None, *, metadata_only: bool = False) -> Tuple[dict, int]:
    """Restore a stage's saved TrainState as a nested dict of host NumPy arrays.

    Used where the reader's tree differs from the writer's (cross-stage initialisation, sampling,
    eval, export). ``stage_dir`` is the stage's directory (holding ``checkpoints/``); ``step``
    defaults to the latest. With ``metadata_only`` the tree holds Orbax array metadata (shape,
    dtype) instead of arrays and nothing is read. A step that does not read raises
    ``CheckpointReadError`` naming it and the file (nothing is set aside: that is the resume's job).
    Returns (state dict with keys step/params/frozen/opt_state/ema_params/rng, step).
    """
    directory = os.path.join(os.path.abspath(stage_dir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints directory at {directory}")
    manager = ocp.CheckpointManager(directory, item_handlers=_item_handlers())
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        with reading(directory, step):
            meta = manager.item_metadata(step).state
            if metadata_only:
                return dict(meta), step
            cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
            abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), meta)
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    finally:
        manager.close()
    return jax.tree_util.tree_map(lambda x: jax.device_get(x), restored.state), step
