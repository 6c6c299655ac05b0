"""The two ends every backend plugs into: ``WeightSenderMixin`` (learner) and ``WeightReceiverMixin``
(generator). Each is the union of the backends' methods plus one ``close_weight_group``.

The learner host class provides ``rank: int`` and ``iter_state(device="cpu", copy=True)``:
``(hf_name, tensor)`` pairs of the full merged model on ``device``; every rank iterates it in step
(under ZeRO-3 each tensor is gathered by a collective). With ``copy=False`` the tensors may be
views of the live parameters: the backends read each one before the model can change. The
generator host class provides ``name: str`` and ``load_weights(items, version) -> dict``.
"""

from __future__ import annotations

from actors.weight_sync.broadcast import BroadcastReceiver, BroadcastSender
from actors.weight_sync.object_store import ObjectStoreSender
from actors.weight_sync.shared_memory import SharedMemoryReceiver, SharedMemorySender


class WeightSenderMixin(BroadcastSender, ObjectStoreSender, SharedMemorySender):
    """Weight-sync methods of the learner actor (methods marked *all ranks* run on every rank together)."""

    def close_weight_group(self) -> None:
        """Rank 0: drop the broadcast group and the shared-memory file (idempotent)."""
        self._close_broadcast()
        self._close_shared_out()


class WeightReceiverMixin(BroadcastReceiver, SharedMemoryReceiver):
    """Weight-sync methods of the generator actor (``load_weights`` itself is the generator's)."""

    def close_weight_group(self) -> None:
        """Leave the broadcast group and unmap the shared-memory file (idempotent)."""
        self._close_broadcast()
        self._close_shared_in()
