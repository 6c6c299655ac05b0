"""ActorGroup: N Ray actors of one class in one placement group (``actors.placement``), called together with timeouts.

Every wait here is bounded: the placement group (resources), the actors' construction, and each
fan-out call. A timeout or a failure is one line that names the actor class, the rank(s) and the
method; a failure is reported as soon as the first rank fails (the others may be stuck in a
collective that will never complete: shut the group down then).

    group = start_learners(2, config, timeout_s=300)
    metrics = group.call("train_step", per_rank=[(mbs, "simpo", {}, counts) for mbs in shards])
    group.shutdown()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from actors.placement import Placement, RoleResources, actor_nodes, place

#: Held while one call is submitted to every rank of a group (here and in the weight-sync
#: transports). Two driver threads (generation running ahead, which may re-sync weights, and the
#: training loop) then never interleave their submissions, so every rank runs the collectives of
#: both calls in the same order: an interleaved order would leave the ranks waiting on each other.
FAN_OUT = threading.RLock()


class ActorCallError(RuntimeError):
    """A call on one actor of a group failed; ``rank``, ``method`` and ``cause`` say where and why."""

    def __init__(self, message: str, rank: int, method: str, cause: BaseException):
        super().__init__(message)
        self.rank, self.method, self.cause = rank, method, cause


def _cause(err: BaseException) -> BaseException:
    return getattr(err, "cause", None) or err


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1] if text else ''}"


class ActorGroup:
    """``n`` actors of ``cls``, actor ``i`` built with ``cls(*make_args(i))`` on bundle ``i``.

    Args:
        cls: a plain class (it is wrapped with ``ray.remote`` here).
        n: number of actors (ranks).
        make_args: rank -> constructor arguments.
        num_cpus, num_gpus: resources of each actor (one bundle each); ``num_gpus`` may be a fraction.
        resources: Ray custom resources of each actor, e.g. ``{"node_a": 1}`` (``actors.placement``).
        name: shown in errors; the placement group is named after it (plus a unique suffix).
        strategy: placement strategy, ``PACK`` (default), ``SPREAD``, ``STRICT_PACK`` or ``STRICT_SPREAD``.
        timeout_s: default limit for the placement group, the actors' start and every call.
        placement_timeout_s: limit for the placement group alone (None: ``timeout_s``).
    """

    def __init__(self, cls: type, n: int, make_args: Callable[[int], tuple], num_cpus: float = 1,
                 num_gpus: float = 0, name: str = "", strategy: str = "PACK", timeout_s: float = 600,
                 resources: Mapping[str, float] | None = None, placement_timeout_s: float | None = None):
        if n < 1:
            raise ValueError(f"an actor group needs at least one actor, got n={n}")
        self.cls_name = cls.__name__
        self.name = name or self.cls_name
        self.n = n
        self.timeout_s = float(timeout_s)
        self.actors: list[Any] = []
        self.info: list[Any] = []
        self.placement: Placement | None = None
        spec = RoleResources(float(num_cpus), float(num_gpus), dict(resources or {}), strategy)
        wait_s = self.timeout_s if placement_timeout_s is None else float(placement_timeout_s)
        self.placement = place(self.name, n, spec, wait_s)
        try:
            remote = ray.remote(cls)
            for rank in range(n):  # appended one by one: a failure part-way still shuts down the started ones
                self.actors.append(remote.options(**self.placement.options(rank)).remote(*make_args(rank)))
            self._wait([a.__ray_ready__.remote() for a in self.actors], "__init__", self.timeout_s)
        except BaseException:
            self.shutdown()
            raise

    @property
    def pg(self) -> Any:
        """The group's placement group (None once shut down, or when its actors ask for no resource)."""
        return self.placement.pg if self.placement is not None else None

    def __len__(self) -> int:
        return self.n

    def call_async(self, method: str, *args: Any, per_rank: Sequence[tuple] | None = None) -> list:
        """Start ``method`` on every actor; returns one ObjectRef per rank.

        Every rank gets ``args``, or rank ``i`` gets ``per_rank[i]`` (then ``args`` must be empty).
        """
        if per_rank is not None:
            if args:
                raise ValueError(f"{self.name}.{method}: pass either shared args or per_rank, not both")
            if len(per_rank) != self.n:
                raise ValueError(f"{self.name}.{method}: per_rank has {len(per_rank)} entries for {self.n} actors")
        with FAN_OUT:
            if per_rank is not None:
                return [getattr(a, method).remote(*per_rank[i]) for i, a in enumerate(self.actors)]
            return [getattr(a, method).remote(*args) for a in self.actors]

    def call(self, method: str, *args: Any, per_rank: Sequence[tuple] | None = None,
             timeout_s: float | None = None) -> list:
        """``call_async`` and wait: the results in rank order, or one clear error (first failure / timeout)."""
        refs = self.call_async(method, *args, per_rank=per_rank)
        return self._wait(refs, method, self.timeout_s if timeout_s is None else float(timeout_s))

    def call_rank(self, rank: int, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call ``method`` on actor ``rank`` only and wait for its result."""
        ref = getattr(self.actors[rank], method).remote(*args)
        return self.wait({ref: rank}, method, self.timeout_s if timeout_s is None else float(timeout_s))[ref]

    def _wait(self, refs: list, method: str, timeout_s: float) -> list:
        results = self.wait({ref: rank for rank, ref in enumerate(refs)}, method, timeout_s)
        return [results[ref] for ref in refs]

    def wait(self, refs: dict, method: str, timeout_s: float) -> dict:
        """Wait for ``{ref: rank}``; returns ``{ref: result}``. Raises on the first failure or at the deadline."""
        pending = dict(refs)
        results = {}
        deadline = time.monotonic() + timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                ranks = sorted(pending.values())
                raise TimeoutError(
                    f"{self.cls_name}.{method} timed out after {timeout_s:g} s on rank(s) {ranks} of {self.name}"
                )
            for ref in ready:
                rank = pending.pop(ref)
                try:
                    results[ref] = ray.get(ref)
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as err:
                    cause = _cause(err)
                    raise ActorCallError(
                        f"{self.cls_name}[rank {rank}].{method} failed: {_one_line(cause)}", rank, method, cause
                    ) from err
        return results

    def shutdown(self) -> None:
        """Kill the actors and release the placement group (safe to call twice)."""
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - an actor that already died is fine
                pass
        self.actors = []
        if self.placement is not None:
            self.placement.release()

    def nodes(self, role: str | None = None, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """``[{"role", "rank", "node_id"}]`` of this group's actors (``role`` defaults to the group's name)."""
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        return actor_nodes({role or self.name: self.actors}, timeout)


def start_learners(n: int, config: dict[str, Any], timeout_s: float = 600, num_cpus: float = 1,
                   strategy: str = "PACK", num_gpus: float | None = None,
                   resources: Mapping[str, float] | None = None,
                   placement_timeout_s: float | None = None) -> ActorGroup:
    """Start ``n`` learner ranks and form their process group; returns the ready group.

    Rank 0 picks an address, every rank joins it in ``setup``; ``group.info`` holds each rank's
    setup result. ``num_gpus`` None: one GPU per actor when ``config["device"] == "cuda"``, else none.
    ``resources``: custom resources per rank (e.g. ``{"node_a": 1}``); see ``actors.placement``.
    ``placement_timeout_s``: how long to wait for the ranks' resources (None: ``timeout_s``).
    """
    from actors.learner import LearnerActor, resolve_config

    resolved = resolve_config(config)  # fail here, in the driver, on a bad config
    if num_gpus is None:
        num_gpus = 1 if resolved["device"] == "cuda" else 0
    group = ActorGroup(LearnerActor, n, lambda rank: (rank, n, dict(config)), num_cpus=num_cpus,
                       num_gpus=num_gpus, name="learner", strategy=strategy, timeout_s=timeout_s,
                       resources=resources, placement_timeout_s=placement_timeout_s)
    try:
        host, port = group.call_rank(0, "address")
        group.info = group.call("setup", host, port)
    except BaseException:
        group.shutdown()
        raise
    return group
