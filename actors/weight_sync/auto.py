"""``auto``: the fastest backend that can reach every generator, chosen at ``setup``.

On CPU with every generator on learner rank 0's Ray node: ``shared_memory`` (one copy on the
learner, none in between; measured fastest on one node). On GPU, or when some generator runs on
another node: ``broadcast`` (NCCL with GPU-resident buckets; gloo across CPU nodes) - except when
a generator shares learner rank 0's GPU (one GPU for both, ``rlhf.driver.fit``): NCCL cannot
put two ranks of a group on one device, so ``shared_memory`` (through host memory) serves them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from actors.weight_sync.base import SENDER_NAME, Place, SyncStats, WeightSyncError, elsewhere, members, placements
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
        learners, names = members(learner_group, generators, self.timeout_s)
        places = placements([(SENDER_NAME, learners[0]), *zip(names, generators)], self.timeout_s)
        self.backend, why = choose(self.device, places[0], list(zip(names, places[1:])))
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



def choose(device: str, sender: Place, generators: Sequence[tuple[str, Place]]) -> tuple[str, str]:
    """``(backend, why)`` for learner rank 0 at ``sender`` and ``(name, place)`` of each generator."""
    if device == "cpu":
        away = elsewhere(sender, generators)
        if away:
            return "broadcast", f"{', '.join(away)} not on {SENDER_NAME}'s node"
        return "shared_memory", f"every generator on {SENDER_NAME}'s node"
    sharing = [name for name, (node, gpus) in generators if node == sender[0] and set(gpus) & set(sender[1])]
    if sharing:
        return "shared_memory", f"{', '.join(sharing)} on {SENDER_NAME}'s GPU (NCCL needs one GPU per rank)"
    return "broadcast", "GPU tensors stay on the GPU"

