"""Broadcast backend: a private torch.distributed group, learner rank 0 -> every generator, in buckets.

Learner rank 0 is rank 0 (the source), generator ``i`` is rank ``i + 1``. The group is built from
its own ``TCPStore`` (hosted by learner rank 0) and a ``ProcessGroupGloo`` on CPU or
``ProcessGroupNCCL`` on GPU (same code; only the device differs), so the learners' DeepSpeed
group is never touched. Each bucket (about ``bucket_mb``) is a JSON header (``wire`` layout) and
then its bytes. On GPU the tensors never leave it: the learner hands its parameters as they are
(``iter_state(device="cuda", copy=False)``) and they are packed into a GPU bucket; a tensor that
fills a bucket alone is sent as it is, with no packing copy. On GPU generators hand vLLM views of
the buckets as they arrive; on CPU they take all buckets first and then the whole state in one
piece (``actors.cpu_reload``: no layer-by-layer reload). Each generator acknowledges through the
store; learner rank 0 waits for every ack, so a hung generator is named. Works across nodes (the
fallback of ``auto``).

Buffers: learner rank 0 keeps one bucket buffer; on CPU each generator keeps its received
buckets for the next sync (one model's size), since fresh host memory costs a page fault per
4 KiB the first time it is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from actors.group import FAN_OUT
from actors.weight_sync.base import (
    SENDER_NAME,
    SyncStats,
    WeightSyncError,
    close_members,
    first_line,
    load_paths,
    load_phases,
    members,
    node_ip,
    wait_named,
)
from actors.weight_sync.wire import layout, nbytes, pack_into, unpack, without_tied_head

logger = logging.getLogger(__name__)

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
_STORE_PREFIX = "rlhf_weights"


class _StoreKey:
    """A key another rank sets in the group's store (a ``Pending`` for ``wait_named``).

    With ``expect_ok`` its value is an acknowledgement: ``ok``, or the error line of the rank.
    """

    def __init__(self, store: dist.Store, key: str, expect_ok: bool = False):
        self.store, self.key, self.expect_ok = store, key, expect_ok

    def done(self) -> bool:
        try:
            return bool(self.store.check([self.key]))
        except Exception:  # noqa: BLE001 - the store itself is gone: never done
            return False

    def result(self) -> str:
        value = self.store.get(self.key).decode()
        if self.expect_ok:
            self.store.delete_key(self.key)
            if value != "ok":
                raise WeightSyncError(value)
        return value


def _new_process_group(store: dist.Store, rank: int, world_size: int, timeout: timedelta, backend: str) -> Any:
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)
    raise ValueError(f"weight-sync backend {backend!r} is not supported; valid: {', '.join(BACKENDS.values())}")


class WeightGroup:
    """A process group of learner rank 0 (rank 0, the source) and K generators (ranks 1..K).

    ``names[r]`` names the actor of rank ``r`` in every error. Keys the group sets in its store:
    ``joined/<rank>`` when a rank starts connecting, ``ack/<version>/<rank>`` (``ok`` or the
    error line) when a generator has loaded a version.
    """

    def __init__(self, store: dist.Store, rank: int, names: list[str], timeout_s: float, backend: str):
        self.store = store
        self.rank = rank
        self.names = names
        self.world_size = len(names)
        self.timeout_s = float(timeout_s)
        self.timeout = timedelta(seconds=self.timeout_s)
        self.backend = backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.pg: Any = None
        self._raw_store: Any = None  # the source's TCPStore (``store`` is its per-group prefix view)
        self._send_buffer: torch.Tensor | None = None
        self._recv_buffers: list[torch.Tensor] = []

    @property
    def name(self) -> str:
        return self.names[self.rank]

    # ---- set-up --------------------------------------------------------------------------

    @classmethod
    def open_source(cls, peer_names: list[str], timeout_s: float,
                    backend: str) -> tuple[WeightGroup, str, int, str]:
        """Host the store on this process (rank 0); returns the group, the store's address and the group's
        secret.

        The store listens on this node's cluster address only (not on every interface: a socket
        bound there is handed to the store), and every key lives under a random per-group prefix
        that only the run's own actors are told (through Ray), so nothing else can join the group.
        """
        host = node_ip()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((host, 0))
        sock.listen()
        port = sock.getsockname()[1]
        raw = dist.TCPStore(host, port, None, True, timedelta(seconds=float(timeout_s)), wait_for_workers=False,
                            master_listen_fd=sock.detach(), use_libuv=False)  # the store owns the socket now
        secret = secrets.token_hex(16)
        group = cls(dist.PrefixStore(secret, raw), 0, [SENDER_NAME, *peer_names], timeout_s, backend)
        group._raw_store = raw
        return group, host, port, secret

    @classmethod
    def join(cls, host: str, port: int, rank: int, names: list[str], timeout_s: float, backend: str,
             secret: str = "") -> WeightGroup:
        """Connect to the source's store as ``rank`` (>= 1) with the group's ``secret`` and form the group
        (blocks until all joined)."""
        try:
            store = dist.PrefixStore(secret, dist.TCPStore(host, int(port), None, False,
                                                           timedelta(seconds=float(timeout_s))))
        except Exception as exc:
            raise WeightSyncError(
                f"{names[rank]}: cannot reach the weight-sync store of {SENDER_NAME} at {host}:{port} "
                f"within {timeout_s:g}s ({first_line(exc)})"
            ) from None
        group = cls(store, rank, names, timeout_s, backend)
        group.connect()
        return group

    def connect(self) -> None:
        """Form the process group; every rank calls it at the same time. Names missing ranks on timeout."""
        self.store.set(f"joined/{self.rank}", "1")
        what = f"{self.name}: weight-sync group of {self.world_size} not formed within {self.timeout_s:g}s"
        others = [r for r in range(self.world_size) if r != self.rank]
        wait_named([(self.names[r], _StoreKey(self.store, f"joined/{r}")) for r in others], self.timeout_s, what,
                   silent="never joined")
        try:
            self.pg = _new_process_group(dist.PrefixStore(_STORE_PREFIX, self.store), self.rank,
                                         self.world_size, self.timeout, self.backend)
        except Exception as exc:
            raise WeightSyncError(f"{what} ({first_line(exc)})") from None

    def close(self) -> None:
        if self.pg is not None and hasattr(self.pg, "shutdown"):
            try:
                self.pg.shutdown()
            except Exception as exc:  # noqa: BLE001 - closing a broken group must not raise
                logger.debug("%s: process-group shutdown: %s", self.name, exc)
        self.pg = None
        self.store = None
        self._raw_store = None
        self._send_buffer, self._recv_buffers = None, []

    # ---- collectives ---------------------------------------------------------------------

    def _broadcast(self, tensor: torch.Tensor, what: str) -> None:
        try:
            self.pg.broadcast(tensor, 0, self.timeout).wait()
        except Exception as exc:
            who = self.names[1:] if self.rank == 0 else [SENDER_NAME]
            raise WeightSyncError(
                f"{self.name}: {what} with {', '.join(who)} failed or timed out "
                f"(timeout {self.timeout_s:g}s): {first_line(exc)}"
            ) from None

    def _broadcast_json(self, obj: Any | None, what: str) -> Any:
        if self.rank == 0:
            payload = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(self.device)
            size = torch.tensor([payload.numel()], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._broadcast(size, f"{what} (size)")
        if self.rank != 0:
            payload = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        self._broadcast(payload, what)
        return obj if self.rank == 0 else json.loads(bytes(payload.cpu().numpy()).decode())

    # ---- source side ---------------------------------------------------------------------

    def send(self, items: Iterable[tuple[str, torch.Tensor]], version: int, bucket_bytes: int) -> dict[str, Any]:
        """Rank 0: broadcast ``items`` bucket by bucket, then wait for every generator's ack.

        Returns ``{"bytes", "tensors", "buckets", "seconds"}``. A tensor larger than
        ``bucket_bytes`` travels alone in its own bucket; a tied ``lm_head.weight`` is not sent.
        """
        start = time.perf_counter()
        sent_bytes = sent_tensors = buckets = 0
        pending: list[tuple[str, torch.Tensor]] = []
        pending_bytes = 0
        for name, tensor in without_tied_head(items):
            size = nbytes(tensor)
            if pending and pending_bytes + size > bucket_bytes:
                sent_bytes += self._send_bucket(pending, version, last=False)
                sent_tensors, buckets = sent_tensors + len(pending), buckets + 1
                pending, pending_bytes = [], 0
            pending.append((name, tensor))
            pending_bytes += size
        sent_bytes += self._send_bucket(pending, version, last=True)
        sent_tensors, buckets = sent_tensors + len(pending), buckets + 1
        self.wait_acks(version)
        return {"bytes": sent_bytes, "tensors": sent_tensors, "buckets": buckets,
                "seconds": time.perf_counter() - start}

    def _send_bucket(self, items: list[tuple[str, torch.Tensor]], version: int, last: bool) -> int:
        entries, _ = layout(items)
        used = entries[-1][3] + entries[-1][4] if entries else 0
        self._broadcast_json({"version": version, "last": last, "entries": entries, "bytes": used},
                             f"weights v{version} header")
        if not used:
            return 0
        lone = items[0][1].detach() if len(items) == 1 else None
        if lone is not None and lone.is_contiguous() and lone.device == self.device:
            payload = lone.reshape(-1).view(torch.uint8)  # sent as it is: no packing copy
        else:
            if self._send_buffer is None or self._send_buffer.numel() < used:
                self._send_buffer = torch.empty(used, dtype=torch.uint8, device=self.device)
            payload = self._send_buffer[:used]
            pack_into(payload, entries, [t for _, t in items])
        self._broadcast(payload, f"weights v{version} bucket of {len(items)} tensors ({used} bytes)")
        return sum(e[4] for e in entries)

    def wait_acks(self, version: int) -> None:
        """Rank 0: wait until every generator acked ``version``; name the silent or failing ones."""
        acks = [(self.names[r], _StoreKey(self.store, f"ack/{version}/{r}", expect_ok=True))
                for r in range(1, self.world_size)]
        wait_named(acks, self.timeout_s, f"{self.name}: acknowledgement of weights v{version}")

    # ---- receiver side -------------------------------------------------------------------

    def receive(self, version: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Ranks >= 1: yield ``(name, tensor)`` as buckets arrive (views into the bucket buffer)."""
        index = 0
        while True:
            header = self._broadcast_json(None, f"weights v{version} header")
            if header["version"] != version:
                raise WeightSyncError(
                    f"{self.name}: expected weights v{version}, {SENDER_NAME} is sending v{header['version']}"
                )
            used = int(header["bytes"])
            buffer = self._recv_buffer(index, used)
            if used:
                self._broadcast(buffer, f"weights v{version} bucket ({used} bytes)")
            yield from unpack(buffer, header["entries"])
            index += 1
            if header["last"]:
                return

    def _recv_buffer(self, index: int, size: int) -> torch.Tensor:
        """Bucket ``index``'s buffer: on CPU the one of the last sync when its size fits (no page faults)."""
        if self.device.type != "cpu":
            return torch.empty(size, dtype=torch.uint8, device=self.device)
        if index < len(self._recv_buffers) and self._recv_buffers[index].numel() == size:
            return self._recv_buffers[index]
        buffer = torch.empty(size, dtype=torch.uint8)
        if index < len(self._recv_buffers):
            self._recv_buffers[index] = buffer
        else:
            self._recv_buffers.append(buffer)
        return buffer

    def ack(self, version: int, error: str | None = None) -> None:
        """Ranks >= 1: tell the source this rank has loaded ``version`` (or why it could not)."""
        self.store.set(f"ack/{version}/{self.rank}", "ok" if error is None else error[:500])


class BroadcastSender:
    """Learner-side methods (mixed into ``WeightSenderMixin``); the host provides ``rank`` and ``iter_state``."""

    _weight_group: WeightGroup | None = None

    def open_weight_group(self, peer_names: list[str], timeout_s: float, backend: str) -> tuple[str, int, str]:
        """Rank 0: host a new weight-sync store for ``len(peer_names)`` generators; returns (host, port, secret)."""
        self._close_broadcast()
        group, host, port, secret = WeightGroup.open_source(list(peer_names), timeout_s, backend)
        self._weight_group = group
        return host, port, secret

    def connect_weight_group(self) -> None:
        """Rank 0: form the group; call while every generator runs ``join_weight_group``."""
        if self._weight_group is None:
            raise WeightSyncError(f"{SENDER_NAME}: connect_weight_group() before open_weight_group()")
        self._weight_group.connect()

    def broadcast_weights(self, version: int, bucket_mb: float = 64.0, device: str | None = None) -> dict[str, Any]:
        """All ranks: rank 0 broadcasts the weights as ``version``; others only join the gather.

        Tensors come from ``iter_state`` on the group's device (``device`` on ranks without a
        group), as views where the learner can give them. Returns ``{"bytes", "tensors",
        "buckets", "seconds"}`` (zeros on ranks other than 0).
        """
        group = self._weight_group
        items = self.iter_state(device=group.device.type if group is not None else (device or "cpu"), copy=False)
        if group is None:
            if getattr(self, "rank", 0) == 0:
                raise WeightSyncError(f"{SENDER_NAME}: broadcast_weights() without a weight-sync group")
            for _ in items:  # take part in the ZeRO-3 gathers
                pass
            return {"bytes": 0, "tensors": 0, "buckets": 0, "seconds": 0.0}
        return group.send(items, version, int(float(bucket_mb) * (1 << 20)))

    def _close_broadcast(self) -> None:
        if self._weight_group is not None:
            self._weight_group.close()
            self._weight_group = None


class BroadcastReceiver:
    """Generator-side methods (mixed into ``WeightReceiverMixin``); the host provides ``name`` and ``load_weights``."""

    _weight_group: WeightGroup | None = None

    def join_weight_group(self, host: str, port: int, rank: int, names: list[str], timeout_s: float,
                          backend: str, secret: str = "") -> None:
        """Join learner rank 0's weight-sync group as ``rank`` (>= 1) with the group's ``secret``; blocks until
        every member joined."""
        self._close_broadcast()
        self._weight_group = WeightGroup.join(host, port, int(rank), list(names), timeout_s, backend, secret)

    def receive_weights(self, version: int) -> dict[str, Any]:
        """Receive ``version`` from the group bucket by bucket, load it, acknowledge it."""
        group = self._weight_group
        if group is None:
            raise WeightSyncError(f"{self.name}: receive_weights() before join_weight_group()")
        try:
            received = group.receive(int(version))
            if group.device.type == "cpu":  # each bucket keeps its own buffer: the whole state at once, so the
                received = list(received)  # engine takes it in one piece (actors.cpu_reload), not layer by layer
            stats = self.load_weights(received, version)
        except Exception as exc:
            with contextlib.suppress(Exception):  # the store may be gone with the sender
                group.ack(int(version), error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        group.ack(int(version))
        return stats

    def _close_broadcast(self) -> None:
        if self._weight_group is not None:
            self._weight_group.close()
            self._weight_group = None


class BroadcastTransport:
    """Driver side of the broadcast backend. ``timeout_s`` bounds set-up, every collective and every sync."""

    def __init__(self, timeout_s: float = 300.0, bucket_mb: float = 64.0, device: str = "cpu"):
        if device not in BACKENDS:
            raise ValueError(f"weight-sync device {device!r} is not supported; valid: {', '.join(BACKENDS)}")
        self.bucket_mb = float(bucket_mb)
        self.timeout_s = float(timeout_s)
        self.device = device
        self.backend = BACKENDS[device]
        self.learners: list[Any] = []
        self.generators: list[Any] = []
        self.names: list[str] = []

    def setup(self, learner_group: Any, generators: Sequence[Any]) -> None:
        self.close()
        self.learners, self.names = members(learner_group, generators, self.timeout_s)
        self.generators = list(generators)
        source = self.learners[0]
        [(host, port, secret)] = wait_named([(SENDER_NAME, source.open_weight_group.remote(
            self.names, self.timeout_s, self.backend))], self.timeout_s, "weight-sync setup")
        names = [SENDER_NAME, *self.names]
        calls = [(SENDER_NAME, source.connect_weight_group.remote())] + [
            (name, g.join_weight_group.remote(host, port, rank, names, self.timeout_s, self.backend, secret))
            for rank, (name, g) in enumerate(zip(self.names, self.generators), start=1)
        ]
        wait_named(calls, self.timeout_s + 5.0, "weight-sync setup")

    def sync(self, version: int) -> SyncStats:
        if not self.learners:
            raise WeightSyncError("broadcast transport: sync() before setup()")
        start = time.perf_counter()
        with FAN_OUT:  # every rank gets this call in the same order as the training loop's (actors.group)
            sends = [lr.broadcast_weights.remote(version, self.bucket_mb, self.device) for lr in self.learners]
        receives = [g.receive_weights.remote(version) for g in self.generators]
        calls = [(f"learner rank {r}", ref) for r, ref in enumerate(sends)] + list(zip(self.names, receives))
        results = wait_named(calls, self.timeout_s + 5.0, f"weight sync v{version} (broadcast)")
        sent, loaded = results[0], results[len(sends):]
        phases = {"send": float(sent["seconds"]), **load_phases(loaded)}
        return SyncStats(time.perf_counter() - start, int(sent["bytes"]), int(sent["tensors"]), phases,
                         load_paths(loaded))

    def close(self) -> None:
        """Drop the group on every member that still answers (dead members are skipped)."""
        close_members(self.learners[:1], self.names, self.generators, self.timeout_s)
        self.learners, self.generators, self.names = [], [], []

