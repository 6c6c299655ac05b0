"""RolloutBuffer: the one exchange format between producers (datasets, generators) and the learner.

Items are the plain example dicts of ``rlhf.batch`` (pairs, unpaired rows or online samples).
Each item is stamped with the policy ``version`` that produced it (offline data: version 0, the
initial policy never produced it but nothing is fresher either), so staleness is visible and
bounded: ``take`` refuses items older than ``max_staleness`` versions.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any


class RolloutBuffer:
    """A FIFO of examples with policy versions, and a seeded epoch-wise batch sampler.

    Args:
        kind: data kind of the items (``pairs``, ``unpaired`` or ``prompts``).
        max_staleness: oldest policy version lag allowed when taking items (None: no bound).
    """

    def __init__(self, kind: str, max_staleness: int | None = None) -> None:
        self.kind = kind
        self.max_staleness = max_staleness
        self._items: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Sequence[Mapping[str, Any]], version: int = 0) -> None:
        """Append ``items``, stamping each with ``version`` unless it already carries one."""
        for item in items:
            row = dict(item)
            row.setdefault("version", version)
            self._items.append(row)

    def take(self, n: int | None = None, current_version: int | None = None) -> list[dict[str, Any]]:
        """Remove and return the ``n`` oldest items (all when ``n`` is None).

        Raises when an item is staler than ``max_staleness`` relative to ``current_version``.
        """
        n = len(self._items) if n is None else n
        if n > len(self._items):
            raise ValueError(f"asked for {n} items, buffer holds {len(self._items)}")
        out, self._items = self._items[:n], self._items[n:]
        if current_version is not None and self.max_staleness is not None:
            lag = max((current_version - int(it["version"]) for it in out), default=0)
            if lag > self.max_staleness:
                raise RuntimeError(f"rollout items are {lag} policy versions old (max_staleness={self.max_staleness})")
        return out

    def staleness(self, current_version: int) -> dict[str, float]:
        """Mean and max version lag of the items held."""
        lags = [current_version - int(it["version"]) for it in self._items]
        if not lags:
            return {"staleness/mean": 0.0, "staleness/max": 0.0}
        return {"staleness/mean": sum(lags) / len(lags), "staleness/max": float(max(lags))}

    def epochs(self, batch_size: int, seed: int = 0, drop_last: bool = True) -> Iterator[list[dict[str, Any]]]:
        """Endless seeded stream of batches of ``batch_size`` items, reshuffled every epoch.

        Items stay in the buffer (offline data is reused across epochs). With ``drop_last`` a
        short tail is dropped so every batch splits evenly over ranks and micro-batches.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if len(self._items) < batch_size:
            raise ValueError(f"buffer holds {len(self._items)} items, fewer than one batch of {batch_size}")
        rng = random.Random(seed)
        while True:
            order = list(range(len(self._items)))
            rng.shuffle(order)
            stop = len(order) - (len(order) % batch_size if drop_last else 0)
            for start in range(0, stop, batch_size):
                yield [self._items[i] for i in order[start : start + batch_size]]
