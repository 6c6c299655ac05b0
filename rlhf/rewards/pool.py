"""Reward functions in worker processes, with a per-sample time limit.

``RewardPool(workers)`` keeps a few worker processes (``forkserver`` where the platform has it,
else ``spawn``; never ``fork``: the driver runs Ray's threads). ``pool.run(reward, completions,
rows, timeout_s)`` splits the samples into one contiguous chunk per worker, sends each chunk in
one message, and reads back one result per sample as the worker produces it:

- a sample still running ``timeout_s`` seconds after its worker's previous result (or after the
  function was loaded) becomes a ``Failure`` naming the limit; that worker is killed and
  replaced, and the rest of its chunk goes to the replacement;
- a worker that dies (``os._exit``, a crash in a C extension) fails its current sample the same way;
- the results come back in sample order once every chunk is done.

The reward travels by reference (pickle: ``module.qualname``), so its module must be importable
in a fresh interpreter: built-ins and ``module:function`` rewards are. ``run`` returns None for a
reward that cannot travel or cannot be loaded there (a lambda, a closure, a module made at run
time); the caller then runs it in its own process, without a time limit.

One pool serves a whole run (``shared_pool()``, closed at exit); the workers start on first use.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import pickle
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

START_TIMEOUT_S = 120.0  # a fresh worker must report ready within this
LOAD_TIMEOUT_S = 120.0  # importing a reward's module in a worker (not counted in the per-sample limit)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["rlhf.rewards.registry"])  # forked workers start with it imported
    return ctx


def _worker_main(conn: Any) -> None:
    """A worker: ``(call, reward_bytes, [(index, completion, row), ...])`` in, one result per sample out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    from rlhf.rewards.registry import score_one

    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        call, blob, items = message
        try:
            reward = pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - any import failure: the driver runs it in-process
            conn.send(("unloadable", call, f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("loaded", call))
        for index, completion, row in items:
            conn.send(("result", call, index, score_one(reward, completion, row, index)))


@dataclass
class _Worker:
    process: Any
    conn: Any


@dataclass
class _Task:
    """One worker's share of a call: the sample indices it has not answered yet."""

    indices: deque[int]
    deadline: float
    loaded: bool = False


class RewardPool:
    """Worker processes that score samples with a per-sample time limit (see the module doc)."""

    def __init__(self, workers: int | None = None) -> None:
        self.size = workers or default_workers()
        self.replaced = 0  # workers killed after a time-out or found dead
        self._ctx = _context()
        self._workers: list[_Worker] = []
        self._calls = itertools.count()
        self._unloadable: set[bytes] = set()
        self._pid = os.getpid()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name="rlhf-reward-worker")
        process.start()
        child.close()
        return _Worker(process, parent)

    def _await_ready(self, worker: _Worker) -> None:
        if not worker.conn.poll(START_TIMEOUT_S):
            self._stop(worker)
            raise RuntimeError(f"a reward worker process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            worker.conn.recv()
        except (EOFError, OSError):
            self._stop(worker)
            raise RuntimeError(
                f"a reward worker process exited while starting (exit code {worker.process.exitcode})"
            ) from None

    def _ensure_started(self) -> None:
        for worker in [w for w in self._workers if not w.process.is_alive()]:  # died while idle
            self._replace(worker)
        fresh = [self._start_worker() for _ in range(self.size - len(self._workers))]
        for worker in fresh:
            self._await_ready(worker)
        self._workers += fresh

    def _replace(self, worker: _Worker) -> _Worker:
        self._stop(worker)
        self.replaced += 1
        new = self._start_worker()
        self._await_ready(new)
        self._workers[self._workers.index(worker)] = new
        return new

    @staticmethod
    def _stop(worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(5)
        worker.conn.close()

    def run(
        self,
        reward: Any,
        completions: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        timeout_s: float | None,
    ) -> list[Any] | None:
        """Per-sample results of ``reward`` (a float, None or a ``Failure``), or None when it cannot
        run in a worker (see the module doc)."""
        from rlhf.rewards.registry import Failure

        try:
            blob = pickle.dumps(reward)
        except Exception:  # noqa: BLE001 - lambdas, closures, local objects: run in-process
            return None
        if blob in self._unloadable or not completions:
            return None if completions else []
        self._ensure_started()
        limit = float("inf") if timeout_s is None or timeout_s <= 0 else float(timeout_s)
        n = len(completions)
        k = min(len(self._workers), n)
        call = next(self._calls)
        results: list[Any] = [None] * n
        active: dict[Any, tuple[_Worker, _Task]] = {}

        def send(worker: _Worker, indices: list[int]) -> None:
            items = [(i, completions[i], dict(rows[i])) for i in indices]
            try:
                worker.conn.send((call, blob, items))
            except (OSError, ValueError):  # its pipe broke since the last call: a fresh worker takes the chunk
                worker = self._replace(worker)
                worker.conn.send((call, blob, items))
            task = _Task(deque(indices), time.monotonic() + LOAD_TIMEOUT_S)
            active[worker.conn] = (worker, task)

        for w in range(k):
            send(self._workers[w], list(range(w * n // k, (w + 1) * n // k)))
        unloadable = False
        while active:
            soonest = min(task.deadline for _, task in active.values())
            ready = wait(list(active), timeout=max(0.0, soonest - time.monotonic()))
            for conn in ready:
                worker, task = active[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    worker.process.join(1)
                    index = task.indices.popleft()
                    results[index] = Failure(
                        f"reward {reward.name!r}: its worker process died on sample {index} "
                        f"(exit code {worker.process.exitcode})"
                    )
                    self._resume(worker, task, send, active)
                    continue
                kind, message_call = message[0], message[1]
                if message_call != call:
                    continue  # left over from an interrupted call
                if kind == "unloadable":
                    unloadable = True
                    del active[conn]
                elif kind == "loaded":
                    task.loaded, task.deadline = True, time.monotonic() + limit
                else:
                    index, value = message[2], message[3]
                    results[index] = value
                    task.indices.remove(index)
                    task.deadline = time.monotonic() + limit
                    if not task.indices:
                        del active[conn]
            now = time.monotonic()
            for conn, (worker, task) in list(active.items()):
                if now < task.deadline or conn not in active:
                    continue
                index = task.indices.popleft()
                if task.loaded:
                    results[index] = Failure(
                        f"reward {reward.name!r} took longer than reward.timeout_s={timeout_s:g} s on sample {index}"
                    )
                else:
                    results[index] = Failure(f"reward {reward.name!r}: loading it in a worker process took longer "
                                             f"than {LOAD_TIMEOUT_S:.0f} s")
                self._resume(worker, task, send, active)
        if unloadable:
            self._unloadable.add(blob)
            return None
        return results

    def _resume(self, worker: _Worker, task: _Task, send: Any, active: dict) -> None:
        """Replace a hung or dead worker and hand it the rest of its chunk."""
        del active[worker.conn]
        new = self._replace(worker)
        if task.indices:
            send(new, list(task.indices))

    def close(self) -> None:
        """Stop every worker (idle ones exit on their own; hung ones are killed)."""
        if os.getpid() != self._pid:
            return
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(2)
            self._stop(worker)
        self._workers = []


_SHARED: RewardPool | None = None


def shared_pool() -> RewardPool:
    """The process-wide pool (created on first use, closed at exit)."""
    global _SHARED
    if _SHARED is None or _SHARED._pid != os.getpid():
        _SHARED = RewardPool()
        atexit.register(_SHARED.close)
    return _SHARED
