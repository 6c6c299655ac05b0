"""``auto``: the fastest backend that can reach every generator, chosen at ``setup``.

On CPU with every generator on learner rank 0's Ray node: ``shared_memory`` (one copy on the
learner, none in between; measured fastest on one node). On GPU, or when some generator runs on
another node: ``broadcast`` (NCCL with GPU-resident buckets; gloo across CPU nodes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from actors.weight_sync.base import SENDER_NAME, SyncStats, WeightSyncError, actor_handles, generator_names, node_ids
from actors.weight_sync.broadcast import BroadcastTransport
from actors.weight_sync.shared_memory import SharedMemoryTransport

logger = logging.getLogger(__name__)


class AutoTransport:
    def __init__(self, timeout_s: float = 300.0, bucket_mb: float = 64.0, device: str = "cpu"):
        self.timeout_s, self.bucket_mb, self.device = float(timeout_s), float(bucket_mb), device
        self.chosen: Any = None
        self.backend: str | None = None  # the name of the chosen backend

    def setup(self, learner_group: Any, generators: Sequence[Any]) -> None:
        self.close()
        learners = actor_handles(learner_group)
        if not learners:
            raise ValueError("weight sync needs at least one learner actor")
        self.backend, why = "broadcast", "GPU tensors stay on the GPU"
        if self.device == "cpu":
            names = generator_names(generators, self.timeout_s)
            nodes = node_ids([(SENDER_NAME, learners[0]), *zip(names, generators)], self.timeout_s)
            elsewhere = [name for name, node in zip(names, nodes[1:]) if node != nodes[0]]
            if elsewhere:
                why = f"{', '.join(elsewhere)} not on {SENDER_NAME}'s node"
            else:
                self.backend, why = "shared_memory", f"every generator on {SENDER_NAME}'s node"
        cls = SharedMemoryTransport if self.backend == "shared_memory" else BroadcastTransport
        logger.info("weight sync: %s (%s)", self.backend, why)
        self.chosen = cls(timeout_s=self.timeout_s, bucket_mb=self.bucket_mb, device=self.device)
        self.chosen.setup(learners, generators)

    def sync(self, version: int) -> SyncStats:
        if self.chosen is None:
            raise WeightSyncError("auto transport: sync() before setup()")
        return self.chosen.sync(version)

    def close(self) -> None:
        if self.chosen is not None:
            self.chosen.close()
        self.chosen = None
