"""The transport interface, its result and error, and the one wait-with-timeout helper.

``wait_named`` is the only place that waits for another process: Ray calls (``ObjectRef``) and
store keys alike (anything with ``done()`` and ``result()``). Every wait has a deadline, and its
error names each actor that failed, died or did not answer, with the call it was asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray

logger = logging.getLogger("actors.weight_sync")

SENDER_NAME = "learner rank 0"
_POLL_S = 0.01  # how often a non-Ray pending (a store key) is checked


class WeightSyncError(RuntimeError):
    """A weight sync or its set-up failed or timed out; the message names the actor(s)."""


@dataclass(frozen=True)
class SyncStats:
    """One sync as seen from the driver: wall ``seconds``, payload ``bytes`` and ``tensors`` sent,
    ``phases``: seconds of its parts (which ones depends on the backend, e.g. ``write``, ``load``,
    ``update``; ``load`` and ``update`` are the slowest generator's, ``update`` being the engine's
    weight update however it went; the driver logs each as ``sync/<phase>``), and ``paths``: how
    each generator took the weights (``"direct"``: ``actors.cpu_reload``; ``"vllm"``: vLLM's
    ``reload_weights``)."""

    seconds: float
    bytes: int
    tensors: int
    phases: Mapping[str, float] = field(default_factory=dict)
    paths: tuple[str, ...] = ()


class WeightTransport(Protocol):
    """Moves the learner's weights into every generator. Driven from the driver process."""

    def setup(self, learner_group: Any, generators: Sequence[Any]) -> None:
        """Prepare the transport for these learner ranks (rank 0 first) and generator actors."""

    def sync(self, version: int) -> SyncStats:
        """Send the learner's current weights; on return every generator serves ``version``."""

    def close(self) -> None:
        """Release what ``setup`` built (idempotent)."""


class Pending(Protocol):
    """Something other than a Ray call that ``wait_named`` can wait for (e.g. a store key)."""

    def done(self) -> bool: ...

    def result(self) -> Any: ...


def wait_named(calls: Sequence[tuple[str, Any]], timeout_s: float, what: str, *, silent: str | None = None,
               settle_s: float = 2.0, strict: bool = True) -> list[Any]:
    """Results of ``(who, pending)`` pairs under one deadline; errors name ``who``.

    ``who`` names the actor and the call (``"generator 1"`` in a message that says the call in
    ``what``); ``pending`` is a Ray ``ObjectRef`` or a ``Pending``. Raises ``WeightSyncError``
    ``"{what}: ..."`` listing every one that failed (died or raised) and those that had not
    answered by the deadline (``"no answer within {timeout_s}s from ..."``, or ``"{silent}: ..."``).
    After a first failure the others get ``settle_s`` more to report theirs (a dead peer usually
    makes its partners fail too). Results are in the order of ``calls``; with ``strict=False``
    nothing is raised, and a failed or silent call's result is None.
    """
    deadline = time.monotonic() + float(timeout_s)
    results: dict[int, Any] = {}
    failures: list[str] = []
    pending = dict(enumerate(calls))
    settle_until = float("inf")
    while pending:
        left = min(deadline, settle_until) - time.monotonic()
        ready = _ready(pending, max(0.0, left))
        if not ready and left <= 0:
            break
        for i in ready:
            who, item = pending.pop(i)
            try:
                results[i] = ray.get(item) if isinstance(item, ray.ObjectRef) else item.result()
            except Exception as exc:  # noqa: BLE001 - reported below with the actor's name
                failures.append(f"{who} failed: {error_line(exc)}")
                settle_until = min(settle_until, time.monotonic() + settle_s)
    if pending:
        names = ", ".join(who for who, _ in pending.values())
        if failures:
            failures.append(f"still running: {names}")
        else:
            failures.append(f"{silent}: {names}" if silent else f"no answer within {timeout_s:g}s from {names}")
    if failures and strict:
        raise WeightSyncError(f"{what}: " + "; ".join(failures))
    if failures:
        logger.debug("%s: %s", what, "; ".join(failures))
    return [results.get(i) for i in range(len(calls))]


def _ready(pending: dict[int, tuple[str, Any]], timeout: float) -> list[int]:
    """Indices of ``pending`` that are done, waiting up to ``timeout`` seconds for the first."""
    refs = {item: i for i, (_, item) in pending.items() if isinstance(item, ray.ObjectRef)}
    others = {i: item for i, (_, item) in pending.items() if i not in refs.values()}
    end = time.monotonic() + timeout
    while True:
        done = [i for i, item in others.items() if item.done()]
        wait = 0.0 if done else min(max(0.0, end - time.monotonic()), _POLL_S if others else timeout)
        if refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=wait)
            done += [refs[r] for r in ready]
        elif wait:
            time.sleep(wait)
        if done or time.monotonic() >= end:
            return done


def error_line(exc: BaseException) -> str:
    """One line for a failed call: a dead actor says so; an error that already names its actor is kept."""
    if isinstance(exc, ray.exceptions.RayActorError):
        return "the actor died or is unreachable"
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, WeightSyncError):
        return str(cause).strip().splitlines()[0]
    return first_line(cause)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def actor_handles(group: Any) -> list[Any]:
    """Actor handles in rank order from a list or an object exposing ``actors`` / ``handles``."""
    for attr in ("actors", "handles"):
        if hasattr(group, attr):
            return list(getattr(group, attr))
    return list(group)


def members(learner_group: Any, generators: Sequence[Any], timeout_s: float) -> tuple[list[Any], list[str]]:
    """What every transport's ``setup`` starts from: the learner handles (rank 0 first; none is an
    error) and each generator's name (asked with ``ping``, within ``timeout_s``)."""
    learners = actor_handles(learner_group)
    if not learners:
        raise ValueError("weight sync needs at least one learner actor")
    return learners, generator_names(generators, timeout_s)


def generator_names(generators: Sequence[Any], timeout_s: float) -> list[str]:
    """``ping()`` every generator and return their names (for error messages)."""
    fallback = [f"generator at position {i}" for i in range(len(generators))]
    infos = wait_named([(n, g.ping.remote()) for n, g in zip(fallback, generators)], timeout_s, "weight-sync setup")
    return [str(info["name"]) for info in infos]


Place = tuple[str, tuple[str, ...]]  # (Ray node id, the GPU ids Ray gave the actor)


def placements(named: Sequence[tuple[str, Any]], timeout_s: float) -> list[Place]:
    """``(node id, GPU ids)`` of each ``(name, actor)`` (asked through ``__ray_call__``: any actor answers)."""
    asked = [(name, actor.__ray_call__.remote(_place)) for name, actor in named]
    return [(node, tuple(gpus)) for node, gpus in wait_named(asked, timeout_s, "weight-sync setup (placement)")]


def elsewhere(sender: Place, generators: Sequence[tuple[str, Place]]) -> list[str]:
    """Names of the ``(name, place)`` generators on another Ray node than ``sender`` (learner rank 0)."""
    return [name for name, (node, _) in generators if node != sender[0]]


def close_members(learners: Sequence[Any], names: Sequence[str], generators: Sequence[Any], timeout_s: float) -> None:
    """``close_weight_group`` on learner rank 0 and every generator, briefly; dead ones are skipped."""
    members = [(SENDER_NAME, a) for a in learners[:1]] + list(zip(names, generators))
    calls = [(name, a.close_weight_group.remote()) for name, a in members]
    if calls:
        wait_named(calls, min(10.0, timeout_s), "weight-sync close", strict=False)


def load_paths(loaded: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """How each generator's ``load_weights`` went (its ``path``), in generator order."""
    return tuple(str(s.get("path", "vllm")) for s in loaded)


def load_phases(loaded: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The slowest generator's ``load`` (incl. receiving), ``update`` (the engine's weight update, direct
    or vLLM's reload) and ``reset_prefix_cache`` seconds."""
    keys = {"load": "seconds", "update": "reload_s", "reset_prefix_cache": "reset_s"}
    return {phase: max((float(s.get(key, 0.0)) for s in loaded), default=0.0) for phase, key in keys.items()}


def _place(_actor: Any) -> tuple[str, list[str]]:
    context = ray.get_runtime_context()
    return context.get_node_id(), [str(g) for g in context.get_accelerator_ids().get("GPU", [])]


def node_ip() -> str:
    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside a Ray worker the loopback address works
        return "127.0.0.1"
