"""Learner -> generator weight sync: a tiny transport interface with several backends.

After every optimizer step of an online stage the generators must sample from the new policy.
A transport is driven from the driver process:

```python
transport = make_transport("auto", timeout_s=120, bucket_mb=64, device="cpu")
transport.setup(learner_handles, generator_handles)   # once (again after a restart)
stats = transport.sync(version)                         # after each policy update -> SyncStats
transport.close()
```

| name          | module           | how the bytes move                                           | where      |
|---------------|------------------|--------------------------------------------------------------|------------|
| auto          | auto.py          | shared_memory on one CPU node, else broadcast                | anywhere   |
| shared_memory | shared_memory.py | learner rank 0 writes a /dev/shm file once; generators map it | one node   |
| broadcast     | broadcast.py     | gloo (CPU) / NCCL (GPU-resident) broadcast group, in buckets | any nodes  |
| object_store  | object_store.py  | numpy arrays through Ray's object store (zero-copy reads)    | any nodes  |

Other modules: ``base.py`` (the ``WeightTransport`` protocol, ``SyncStats``, ``WeightSyncError``
and ``wait_named``, the one wait-with-timeout helper: every wait names the actor that failed or
did not answer), ``wire.py`` (the layout of tensors in a flat buffer, dtype names, ``NumpyState``),
``endpoints.py`` (``WeightSenderMixin`` for the learner actor, ``WeightReceiverMixin`` for the
generator actor: each the union of the backends' methods).

Adding a backend: a module with a transport class whose constructor is
``(timeout_s, bucket_mb, device)`` and which has ``setup`` / ``sync`` / ``close``; its learner-side
and generator-side methods as mixins added to ``endpoints.py``; one ``register_transport`` line
below; a case in ``tests/integration/test_weight_sync.py``.

Timeouts: every wait (store, collective, Ray call) has one, and its error names the actor(s)
(``WeightSyncError``). After a failed sync, ``close()`` and ``setup()`` again (the driver does).
"""

from __future__ import annotations

from actors.weight_sync.auto import AutoTransport
from actors.weight_sync.base import SENDER_NAME, SyncStats, WeightSyncError, WeightTransport, wait_named
from actors.weight_sync.broadcast import BroadcastTransport, WeightGroup
from actors.weight_sync.endpoints import WeightReceiverMixin, WeightSenderMixin
from actors.weight_sync.object_store import ObjectStoreTransport
from actors.weight_sync.shared_memory import SharedMemoryTransport
from actors.weight_sync.wire import TIED_EMBED, TIED_HEAD, NumpyState, dtype_from_name, memory_key

__all__ = [
    "SENDER_NAME", "TIED_EMBED", "TIED_HEAD", "TRANSPORTS", "DEVICES", "NumpyState", "SyncStats", "WeightGroup",
    "WeightReceiverMixin", "WeightSenderMixin", "WeightSyncError", "WeightTransport", "dtype_from_name",
    "make_transport", "memory_key", "register_transport", "wait_named",
]

DEVICES = ("cpu", "cuda")
TRANSPORTS: dict[str, type] = {}


def register_transport(name: str, cls: type) -> None:
    """Add a backend under ``name`` (refused if the name is taken)."""
    if name in TRANSPORTS:
        raise ValueError(f"weight-sync transport {name!r} is already registered ({TRANSPORTS[name].__name__})")
    TRANSPORTS[name] = cls


register_transport("auto", AutoTransport)
register_transport("broadcast", BroadcastTransport)
register_transport("object_store", ObjectStoreTransport)
register_transport("shared_memory", SharedMemoryTransport)


def make_transport(name: str, timeout_s: float = 300.0, bucket_mb: float = 64.0,
                   device: str = "cpu") -> WeightTransport:
    """Build a transport by name, with one signature for all (``bucket_mb`` matters to ``broadcast``)."""
    if name not in TRANSPORTS:
        raise ValueError(f"unknown weight-sync transport {name!r}; valid: {', '.join(TRANSPORTS)}")
    if device not in DEVICES:
        raise ValueError(f"weight-sync device {device!r} is not supported; valid: {', '.join(DEVICES)}")
    return TRANSPORTS[name](timeout_s=timeout_s, bucket_mb=bucket_mb, device=device)
