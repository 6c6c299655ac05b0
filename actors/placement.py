"""Where each role's actors run: resources per actor, a placement group per role, node ids.

The driver asks for a role's actors in three steps, each bounded in time:

    spec = role_resources(cfg, "generator", device)        # cluster.generator over today's defaults
    placement = place("generator", n, spec, timeout_s)      # reserve n bundles, or fail with what is missing
    handles = [ray.remote(Cls).options(**placement.options(i)).remote(...) for i in range(n)]
    ...
    actor_nodes({"learner": learners, "generator": handles}, timeout_s)  # [{"role", "rank", "node_id"}]
    placement.release()

``role_resources`` reads ``cfg.cluster.<role>`` (``rlhf.config.RoleClusterConfig``): ``num_gpus``
(None: one per actor on CUDA, ``generator.tensor_parallel_size`` for an engine, none on CPU; a
fraction such as 0.5 lets two roles share one GPU), ``num_cpus`` (None: the defaults below),
``resources`` (Ray custom resources each actor needs, e.g. ``{"node_a": 1}`` to pin a role to the
nodes started with ``--resources '{"node_a": 8}'``) and ``strategy`` (how the role's bundles spread
over nodes). A request the cluster cannot meet fails after ``timeout_s`` with one line saying what
was asked and what every node has.

Default CPUs per actor (logical: stages alternate, so actors mostly wait):

| role         | num_cpus                                  | num_gpus (cuda)                   |
|--------------|-------------------------------------------|-----------------------------------|
| learner      | ``train.cpus_per_actor``                  | 1                                 |
| reference    | ``train.cpus_per_actor``                  | 1                                 |
| reward_model | ``train.cpus_per_actor``                  | 1                                 |
| generator    | driver's cores // ``generator.num_engines`` (>= 1) | ``generator.tensor_parallel_size`` |
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ROLES = ("learner", "generator", "reference", "reward_model")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_HIDDEN = ("memory", "object_store_memory")  # every node has them; they only clutter a message


@dataclass(frozen=True)
class RoleResources:
    """What one actor of a role asks Ray for, and how the role's actors spread over nodes."""

    num_cpus: float
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    strategy: str = "PACK"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"placement strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        for name, value in {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, **self.resources}.items():
            if not value >= 0:
                raise ValueError(f"resource {name} must be >= 0, got {value!r}")
        clash = sorted(set(self.resources) & {"CPU", "GPU"})
        if clash:
            raise ValueError(f"resources may not name {', '.join(clash)}: use num_cpus / num_gpus")

    def bundle(self) -> dict[str, float]:
        """One actor's placement-group bundle (resources of 0 left out)."""
        out = {"CPU": float(self.num_cpus), "GPU": float(self.num_gpus),
               **{k: float(v) for k, v in self.resources.items()}}
        return {k: v for k, v in out.items() if v > 0}

    def options(self) -> dict[str, Any]:
        """``ray.remote(...).options(**...)`` for one actor outside a placement group."""
        out: dict[str, Any] = {"num_cpus": float(self.num_cpus), "num_gpus": float(self.num_gpus)}
        if self.resources:
            out["resources"] = {k: float(v) for k, v in self.resources.items()}
        return out


def default_resources(cfg: Any, role: str, device: str) -> RoleResources:
    """Today's defaults of ``role`` (module table), before ``cfg.cluster`` is applied."""
    _check_role(role)
    cuda = device == "cuda"
    if role == "generator":
        engines = int(cfg.generator.num_engines)
        cpus = float(max(1, (os.cpu_count() or 1) // engines))
        return RoleResources(cpus, float(cfg.generator.tensor_parallel_size) if cuda else 0.0)
    return RoleResources(float(cfg.train.cpus_per_actor), 1.0 if cuda else 0.0)


def role_resources(cfg: Any, role: str, device: str) -> RoleResources:
    """``cfg.cluster.<role>`` over the role's defaults (``cfg`` is an ``rlhf.config.RunConfig``)."""
    base = default_resources(cfg, role, device)
    cluster = getattr(cfg, "cluster", None)
    if cluster is None:
        return base
    own = getattr(cluster, role)
    return RoleResources(
        num_cpus=base.num_cpus if own.num_cpus is None else float(own.num_cpus),
        num_gpus=base.num_gpus if own.num_gpus is None else float(own.num_gpus),
        resources={str(k): float(v) for k, v in dict(own.resources).items()},
        strategy=own.strategy,
    )


def actor_options(cfg: Any, role: str, device: str) -> dict[str, Any]:
    """``num_cpus``, ``num_gpus`` and ``resources`` of one ``role`` actor (no placement group)."""
    return role_resources(cfg, role, device).options()


class Placement:
    """``n`` reserved bundles of one role (or none, when an actor asks for no resource at all)."""

    def __init__(self, name: str, n: int, spec: RoleResources, pg: Any) -> None:
        self.name, self.n, self.spec, self.pg = name, n, spec, pg

    def options(self, rank: int) -> dict[str, Any]:
        """Options of actor ``rank`` (also for a replacement of a dead actor: its bundle is free again)."""
        if not 0 <= rank < self.n:
            raise IndexError(f"{self.name}: rank {rank} is outside the {self.n} reserved bundle(s)")
        out = self.spec.options()
        if self.pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            out["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=rank)
        return out

    def launch(self, cls: type, make_args: Callable[[int], tuple]) -> list[Any]:
        """Create one actor of ``cls`` per bundle (``cls(*make_args(rank))``) without waiting for it."""
        import ray

        remote = cls if isinstance(cls, ray.actor.ActorClass) else ray.remote(cls)
        return [remote.options(**self.options(rank)).remote(*make_args(rank)) for rank in range(self.n)]

    def release(self) -> None:
        """Give the bundles back (safe to call twice; kill the actors first)."""
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.pg)
            except Exception:  # noqa: BLE001 - already removed, or the cluster is gone
                pass
            self.pg = None


def place(name: str, n: int, spec: RoleResources, timeout_s: float) -> Placement:
    """Reserve ``n`` bundles of ``spec`` with ``spec.strategy``; wait at most ``timeout_s``.

    Raises ``TimeoutError`` naming the request and the cluster's nodes when it cannot be met.
    An actor that asks for nothing (0 CPUs, 0 GPUs, no custom resource) needs no reservation.
    """
    if n < 1:
        raise ValueError(f"{name}: a placement needs at least one actor, got n={n}")
    bundle = spec.bundle()
    if not bundle:
        return Placement(name, n, spec, None)
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([dict(bundle) for _ in range(n)], strategy=spec.strategy,
                         name=f"{name}-{uuid.uuid4().hex[:8]}")
    try:
        ray.get(pg.ready(), timeout=float(timeout_s))
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise TimeoutError(unmet_message(name, n, bundle, spec.strategy, timeout_s)) from None
    return Placement(name, n, spec, pg)


def _fmt(resources: Mapping[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items())
             if k not in _HIDDEN and not k.startswith("node:") and not k.startswith("accelerator_type:")}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shown.items()) + "}"


def unmet_message(name: str, n: int, bundle: Mapping[str, float], strategy: str, timeout_s: float) -> str:
    """One line: what ``name`` asked for, what the cluster has in all, free, and per node."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    asked = ", ".join(f"{n * float(v):g} {k}" for k, v in bundle.items())
    missing = [k for k in bundle if k not in ("CPU", "GPU") and not any(k in nd.get("Resources", {}) for nd in nodes)]
    per_node = "; ".join(f"{nd.get('NodeManagerAddress', '?')} ({nd.get('NodeID', '')[:8]}) "
                         f"{_fmt(nd.get('Resources', {}))}" for nd in nodes)
    hint = ""
    if missing:
        hint = f"; no node has {', '.join(missing)} (start one with ray start --resources)"
    elif strategy == "STRICT_SPREAD" and n > len(nodes):
        hint = f"; STRICT_SPREAD needs {n} nodes"
    return (f"{name}: waited {float(timeout_s):g} s for {n} x {dict(bundle)} ({asked}, strategy {strategy}); "
            f"cluster has {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs (free: {_fmt(free)}) "
            f"on {len(nodes)} node(s): {per_node}{hint}")


def _node_id(_actor: Any) -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def actor_nodes(roles: Mapping[str, Sequence[Any]], timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """``[{"role", "rank", "node_id"}, ...]`` of every actor handle in ``roles`` (``{role: [handle, ...]}``).

    Each actor reports the Ray node it runs on (``__ray_call__``, queued after its running call),
    all within one ``timeout_s``. An actor that is dead or does not answer in time gets
    ``node_id: None`` and an ``error`` line: a finished run's summary never fails on it.
    """
    import ray

    asked = [(role, rank, handle.__ray_call__.remote(_node_id))
             for role, handles in roles.items() for rank, handle in enumerate(handles) if handle is not None]
    deadline = time.monotonic() + float(timeout_s)
    out: list[dict[str, Any]] = []
    for role, rank, ref in asked:
        entry: dict[str, Any] = {"role": role, "rank": rank, "node_id": None}
        try:
            entry["node_id"] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            entry["error"] = f"no answer within {float(timeout_s):g} s"
        except ray.exceptions.RayError as err:
            text = str(err).strip()
            entry["error"] = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
        out.append(entry)
    return out


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
