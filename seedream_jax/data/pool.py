"""Order-preserving parallel map over a stream, with bounded look-ahead and crash isolation.

``ordered_map(fn, items, workers, kind)`` yields ``(item, fn(item))`` in input order while at most
``window`` chunks are in flight, so a stream of millions of items never sits in memory. ``kind``:
``"process"`` (a spawn-context process pool: true parallel decode, ``fn`` must be a picklable
module-level function), ``"thread"`` (PIL releases the GIL while decoding), or ``workers <= 1``
for inline. If a worker process dies (a decoder segfault on a hostile file), the pool is rebuilt,
the chunk is retried item by item, and the item that kills a worker again gets
``on_crash(item)`` as its result, so one bad file cannot end the job; a pool whose workers die
even on a no-op (they cannot start) raises ``RuntimeError`` instead. As with any spawn pool, the
calling program must be importable: a script file with an ``if __name__ == "__main__":`` guard.
"""
import collections
import concurrent.futures as cf
import multiprocessing
from typing import Any, Callable, Iterable, Iterator, List, Tuple


def _run_chunk(fn: Callable, chunk: List[Any]) -> List[Any]:
    return [fn(x) for x in chunk]


def _chunks(items: Iterable[Any], size: int) -> Iterator[List[Any]]:
    chunk = []
    for x in items:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Pool:
    def __init__(self, workers: int, kind: str):
        self.workers, self.kind = workers, kind
        self.executor = self._make()

    def _make(self):
        if self.kind == "process":
            return cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        if self.kind == "thread":
            return cf.ThreadPoolExecutor(self.workers)
        raise ValueError(f"pool kind must be 'process' or 'thread', got {self.kind!r}")

    def rebuild(self):
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._make()


def _submit(pool: _Pool, fn: Callable, chunk: List[Any]) -> cf.Future:
    """The chunk's future; a pool already broken (a worker died on another chunk in flight) gives a
    future holding ``BrokenProcessPool``, so the caller reruns the chunk as it does any chunk whose
    worker died."""
    try:
        return pool.executor.submit(_run_chunk, fn, chunk)
    except cf.process.BrokenProcessPool as e:
        future = cf.Future()
        future.set_exception(e)
        return future


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 1, kind: str = "process",
                chunk_size: int = 8, window: int = 0,
                on_crash: Callable[[Any], Any] = None) -> Iterator[Tuple[Any, Any]]:
    """Yields ``(item, fn(item))`` in order; see the module docstring. ``window`` 0 = 4 x workers."""
    if workers <= 1:
        for x in items:
            yield x, fn(x)
        return
    pool = _Pool(workers, kind)
    window = window or 4 * workers
    pending = collections.deque()
    chunks = _chunks(items, chunk_size)
    try:
        while True:
            while len(pending) < window:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                pending.append((chunk, _submit(pool, fn, chunk)))
            if not pending:
                return
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except cf.process.BrokenProcessPool:
                results = _isolate(pool, fn, chunk, on_crash)
                pending = collections.deque((c, _submit(pool, fn, c)) for c, _ in pending)
            yield from zip(chunk, results)
    finally:
        pool.executor.shutdown(wait=True, cancel_futures=True)


def _isolate(pool: _Pool, fn: Callable, chunk: List[Any], on_crash: Callable) -> List[Any]:
    """Reruns a chunk whose worker died, one item at a time in a rebuilt pool."""
    out = []
    pool.rebuild()
    for x in chunk:
        try:
            out.append(pool.executor.submit(fn, x).result())
        except cf.process.BrokenProcessPool:
            if on_crash is None:
                raise
            pool.rebuild()
            try:  # a pool that cannot run even a no-op is broken for all items: fail loudly instead
                pool.executor.submit(abs, 0).result()
            except cf.process.BrokenProcessPool:
                raise RuntimeError("worker processes die even on a no-op: the pool cannot start (a spawned worker "
                                   "re-imports __main__; run from a file with an `if __name__ == '__main__':` "
                                   "guard, or use kind='thread')") from None
            out.append(on_crash(x))
    return out
