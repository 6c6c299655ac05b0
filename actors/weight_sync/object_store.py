"""Object-store backend: learner rank 0 returns the state as numpy arrays; every generator reads them.

The arrays are views of the learner's parameters where it can give them (``iter_state(copy=False)``),
so Ray's serialisation into its shared-memory store is the only copy; generators on the same node
read the stored arrays zero-copy (on other nodes Ray moves them). Works anywhere Ray does; the
simple fallback (one fresh object per sync, so its pages are faulted in every time).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from actors.group import FAN_OUT
from actors.weight_sync.base import (
    SyncStats,
    load_paths,
    load_phases,
    members,
    wait_named,
)
from actors.weight_sync.wire import NumpyState


class ObjectStoreSender:
    """Learner-side method (mixed into ``WeightSenderMixin``)."""

    def export_weights(self, version: int) -> NumpyState | None:
        """All ranks: the full state as ``NumpyState`` on rank 0 (None elsewhere), for the object store."""
        items = self.iter_state(device="cpu", copy=False)
        if getattr(self, "rank", 0) == 0:
            return NumpyState.from_items(items)
        for _ in items:  # take part in the ZeRO-3 gathers
            pass
        return None


class ObjectStoreTransport:
    """Driver side. ``timeout_s`` bounds the whole sync (export on every learner rank + load on every
    generator). The generators' ``load_weights`` take learner rank 0's result as their argument, so
    Ray starts them as soon as it is stored. ``bucket_mb`` and ``device`` do not apply."""

    def __init__(self, timeout_s: float = 300.0, bucket_mb: float = 64.0, device: str = "cpu"):
        self.timeout_s = float(timeout_s)
        self.learners: list[Any] = []
        self.generators: list[Any] = []
        self.names: list[str] = []

    def setup(self, learner_group: Any, generators: Sequence[Any]) -> None:
        self.learners, self.names = members(learner_group, generators, self.timeout_s)
        self.generators = list(generators)

    def sync(self, version: int) -> SyncStats:
        start = time.perf_counter()
        with FAN_OUT:  # every rank gets this call in the same order as the training loop's (actors.group)
            exports = [lr.export_weights.remote(version) for lr in self.learners]
        loads = [g.load_weights.remote(exports[0], version) for g in self.generators]
        calls = [(f"learner rank {r}", ref) for r, ref in enumerate(exports)] + list(zip(self.names, loads))
        results = wait_named(calls, self.timeout_s, f"weight sync v{version} (object_store)")
        loaded = results[len(exports):]
        return SyncStats(time.perf_counter() - start, int(loaded[0]["bytes"]) if loaded else 0,
                         int(loaded[0]["tensors"]) if loaded else 0, load_phases(loaded), load_paths(loaded))

    def close(self) -> None:
        self.learners, self.generators, self.names = [], [], []
