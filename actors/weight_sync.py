"""Learner -> generator weight sync: a tiny transport interface with two backends.

After every optimizer step of an online stage the generators must sample from the new policy.
A ``WeightTransport`` is driven from the driver process:

```python
transport = make_transport("broadcast", timeout_s=120, bucket_mb=64, device="cpu")
transport.setup(learner_handles, generator_handles)   # once (again after a restart)
stats = transport.sync(version)                         # after each policy update
transport.close()
```

Backends:

- ``broadcast`` (``BroadcastTransport``): a private torch.distributed group, learner rank 0 is
  rank 0 (the source), generator ``i`` is rank ``i + 1``. It is built from its own ``TCPStore``
  (hosted by learner rank 0) and a ``ProcessGroupGloo`` (``ProcessGroupNCCL`` on GPU: same code,
  backend from the device), so the learners' DeepSpeed default group is never touched. Tensors go
  bucket by bucket (``bucket_mb``): a small JSON header (names, dtypes, shapes, byte offsets),
  then the raw bytes of the bucket. Generators feed the tensors to vLLM as they arrive, so
  neither side holds more than a bucket beyond the model itself. Each generator acknowledges
  through the store; learner rank 0 waits for every ack, so a hung generator is named.
- ``object_store`` (``ObjectStoreTransport``): learner rank 0 returns the full state as numpy
  arrays (bf16 viewed as int16), which Ray stores once; every generator reads it zero-copy.

Learner side: ``WeightSenderMixin`` (inherit it in the learner actor). The host class provides
``rank`` and ``iter_state()`` (``(hf_name, tensor)`` pairs of the full model; every rank iterates
in step, since under ZeRO-3 each tensor is gathered by a collective). Generator side: the
``join_weight_group`` / ``receive_weights`` / ``load_weights`` methods of
``actors.generator.GeneratorActor``.

Timeouts: every wait (store, collective, Ray call) has one, and its error names the actor(s)
that did not answer (``WeightSyncError``). After a failed sync the group is broken: ``close()``
and ``setup()`` again (learner rank 0 may stay busy until its own collective timeout).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import numpy as np
import ray
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

SENDER_NAME = "learner rank 0"
_ALIGN = 64  # byte alignment of each tensor inside a bucket (any dtype can view an aligned slice)
_STORE_PREFIX = "rlhf_weights"
TIED_EMBED, TIED_HEAD = "model.embed_tokens.weight", "lm_head.weight"


class WeightSyncError(RuntimeError):
    """A weight sync or its set-up failed or timed out; the message names the actor(s)."""


@dataclass(frozen=True)
class SyncStats:
    """One sync as seen from the driver: wall ``seconds``, payload ``bytes`` and ``tensors`` sent."""

    seconds: float
    bytes: int
    tensors: int


class WeightTransport(Protocol):
    """Moves the learner's weights into every generator. Driven from the driver process."""

    def setup(self, learner_group: Any, generators: Sequence[Any]) -> None:
        """Prepare the transport for these learner ranks (rank 0 first) and generator actors."""

    def sync(self, version: int) -> SyncStats:
        """Send the learner's current weights; on return every generator serves ``version``."""

    def close(self) -> None:
        """Release what ``setup`` built (idempotent)."""


# ---------------------------------------------------------------------------------------------
# Tensors <-> numpy (object-store payload)


_TORCH_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool)
}


def dtype_from_name(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (names as ``str(dtype)`` without ``torch.``)."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise WeightSyncError(f"unsupported tensor dtype {name!r} in a weight payload") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def memory_key(tensor: torch.Tensor) -> tuple:
    """Equal for two tensors that view the same memory the same way (tied weights)."""
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())


@dataclass
class NumpyState:
    """A state dict as numpy arrays, for the Ray object store (numpy is stored and read zero-copy).

    ``arrays[i]`` holds tensor ``names[i]`` of torch dtype ``dtypes[i]``; dtypes numpy lacks
    (bfloat16) travel as a same-size integer view and are viewed back on arrival.
    """

    names: list[str]
    arrays: list[np.ndarray]
    dtypes: list[str]

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, torch.Tensor]]) -> NumpyState:
        names, arrays, dtypes = [], [], []
        seen: dict[tuple, np.ndarray] = {}  # tied tensors (same memory) are stored once
        for name, tensor in items:
            key = memory_key(tensor)
            if key not in seen:
                t = tensor.detach().cpu().contiguous()
                if t.dtype == torch.bfloat16:
                    t = t.view(torch.int16)
                seen[key] = t.numpy()
            names.append(name)
            arrays.append(seen[key])
            dtypes.append(_dtype_name(tensor.dtype))
        return cls(names, arrays, dtypes)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` views of the arrays (read-only memory: the loader copies them)."""
        for name, array, dtype_name in zip(self.names, self.arrays, self.dtypes):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "non-writable" arrays from the object store
                tensor = torch.from_numpy(array)
            dtype = dtype_from_name(dtype_name)
            yield name, tensor.view(dtype) if tensor.dtype != dtype else tensor


# ---------------------------------------------------------------------------------------------
# The private process group


def _node_ip() -> str:
    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside a Ray worker the loopback address works
        return "127.0.0.1"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _new_process_group(store: dist.Store, rank: int, world_size: int, timeout: timedelta,
                       backend: str) -> Any:
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)
    raise ValueError(f"weight-sync backend {backend!r} is not supported; valid: gloo, nccl")


def _comm_device(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


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
        self.timeout = timedelta(seconds=float(timeout_s))
        self.backend = backend
        self.device = _comm_device(backend)
        self.pg: Any = None

    @property
    def name(self) -> str:
        return self.names[self.rank]

    # ---- set-up --------------------------------------------------------------------------

    @classmethod
    def open_source(cls, peer_names: list[str], timeout_s: float, backend: str) -> tuple[WeightGroup, str, int]:
        """Host the store on this process (rank 0); returns the group and the store's address."""
        store = dist.TCPStore("0.0.0.0", 0, None, True, timedelta(seconds=float(timeout_s)), wait_for_workers=False)
        group = cls(store, 0, [SENDER_NAME, *peer_names], timeout_s, backend)
        return group, _node_ip(), store.port

    @classmethod
    def join(cls, host: str, port: int, rank: int, names: list[str], timeout_s: float, backend: str) -> WeightGroup:
        """Connect to the source's store as ``rank`` (>= 1) and form the group (blocks until all joined)."""
        try:
            store = dist.TCPStore(host, int(port), None, False, timedelta(seconds=float(timeout_s)))
        except Exception as exc:
            raise WeightSyncError(
                f"{names[rank]}: cannot reach the weight-sync store of {SENDER_NAME} at {host}:{port} "
                f"within {timeout_s:g}s ({_first_line(exc)})"
            ) from None
        group = cls(store, rank, names, timeout_s, backend)
        group.connect()
        return group

    def connect(self) -> None:
        """Form the process group; every rank calls it at the same time. Names missing ranks on timeout."""
        self.store.set(f"joined/{self.rank}", "1")
        try:
            self.pg = _new_process_group(dist.PrefixStore(_STORE_PREFIX, self.store), self.rank,
                                         self.world_size, self.timeout, self.backend)
        except Exception as exc:
            missing = [self.names[r] for r in range(self.world_size) if not self._has(f"joined/{r}")]
            absent = f"never joined: {', '.join(missing)}" if missing else "all ranks joined"
            raise WeightSyncError(
                f"{self.name}: weight-sync group of {self.world_size} not formed within "
                f"{self.timeout.total_seconds():g}s ({absent}; {_first_line(exc)})"
            ) from None

    def _has(self, key: str) -> bool:
        try:
            return bool(self.store.check([key]))
        except Exception:  # noqa: BLE001 - the store itself is gone: treat as missing
            return False

    def close(self) -> None:
        if self.pg is not None and hasattr(self.pg, "shutdown"):
            try:
                self.pg.shutdown()
            except Exception as exc:  # noqa: BLE001 - closing a broken group must not raise
                logger.debug("%s: process-group shutdown: %s", self.name, exc)
        self.pg = None
        self.store = None

    # ---- collectives ---------------------------------------------------------------------

    def _broadcast(self, tensor: torch.Tensor, what: str) -> None:
        try:
            self.pg.broadcast(tensor, 0, self.timeout).wait()
        except Exception as exc:
            who = self.names[1:] if self.rank == 0 else [SENDER_NAME]
            raise WeightSyncError(
                f"{self.name}: {what} with {', '.join(who)} failed or timed out "
                f"(timeout {self.timeout.total_seconds():g}s): {_first_line(exc)}"
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
        ``bucket_bytes`` travels alone in its own bucket. A ``lm_head.weight`` sharing the memory
        of ``model.embed_tokens.weight`` (tied) is not sent: the generator rebuilds it.
        """
        start = time.perf_counter()
        sent_bytes = sent_tensors = buckets = 0
        pending: list[tuple[str, torch.Tensor]] = []
        pending_bytes = 0
        embed = None  # held until the end, so that its memory cannot be reused by a later tensor
        for name, tensor in items:
            if name == TIED_HEAD and embed is not None and memory_key(tensor) == memory_key(embed):
                continue  # a tied head is rebuilt from the embeddings by the generator (load_weights)
            if name == TIED_EMBED:
                embed = tensor
            size = tensor.numel() * tensor.element_size()
            if pending and pending_bytes + size > bucket_bytes:
                sent_bytes += self._send_bucket(pending, version, last=False)
                sent_tensors, buckets = sent_tensors + len(pending), buckets + 1
                pending, pending_bytes = [], 0
            pending.append((name, tensor))
            pending_bytes += _aligned(size)
        sent_bytes += self._send_bucket(pending, version, last=True)
        sent_tensors, buckets = sent_tensors + len(pending), buckets + 1
        self.wait_acks(version)
        return {"bytes": sent_bytes, "tensors": sent_tensors, "buckets": buckets,
                "seconds": time.perf_counter() - start}

    def _send_bucket(self, items: list[tuple[str, torch.Tensor]], version: int, last: bool) -> int:
        entries, offset = [], 0
        for name, tensor in items:
            size = tensor.numel() * tensor.element_size()
            entries.append([name, _dtype_name(tensor.dtype), list(tensor.shape), offset, size])
            offset += _aligned(size)
        self._broadcast_json({"version": version, "last": last, "entries": entries, "bytes": offset},
                             f"weights v{version} header")
        buffer = torch.zeros(offset, dtype=torch.uint8, device=self.device)
        for (_, tensor), (_, _, _, start, size) in zip(items, entries):
            if size:
                buffer[start:start + size].copy_(tensor.detach().contiguous().reshape(-1).view(torch.uint8))
        self._broadcast(buffer, f"weights v{version} bucket of {len(items)} tensors ({offset} bytes)")
        return sum(e[4] for e in entries)

    def wait_acks(self, version: int) -> None:
        """Rank 0: wait until every generator acked ``version``; name the silent or failing ones."""
        keys = [f"ack/{version}/{r}" for r in range(1, self.world_size)]
        try:
            self.store.wait(keys, self.timeout)
        except Exception:
            silent = [self.names[r] for r, key in enumerate(keys, start=1) if not self._has(key)]
            raise WeightSyncError(
                f"{self.name}: no acknowledgement of weights v{version} from {', '.join(silent)} "
                f"within {self.timeout.total_seconds():g}s"
            ) from None
        errors = []
        for r, key in enumerate(keys, start=1):
            value = self.store.get(key).decode()
            self.store.delete_key(key)
            if value != "ok":
                errors.append(f"{self.names[r]}: {value}")
        if errors:
            raise WeightSyncError(f"{self.name}: weights v{version} failed on " + "; ".join(errors))

    # ---- receiver side -------------------------------------------------------------------

    def receive(self, version: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Ranks >= 1: yield ``(name, tensor)`` as buckets arrive (views into the bucket buffer)."""
        while True:
            header = self._broadcast_json(None, f"weights v{version} header")
            if header["version"] != version:
                raise WeightSyncError(
                    f"{self.name}: expected weights v{version}, {SENDER_NAME} is sending v{header['version']}"
                )
            buffer = torch.empty(header["bytes"], dtype=torch.uint8, device=self.device)
            self._broadcast(buffer, f"weights v{version} bucket ({header['bytes']} bytes)")
            for name, dtype_name, shape, start, size in header["entries"]:
                yield name, buffer[start:start + size].view(dtype_from_name(dtype_name)).view(shape)
            if header["last"]:
                return

    def ack(self, version: int, error: str | None = None) -> None:
        """Ranks >= 1: tell the source this rank has loaded ``version`` (or why it could not)."""
        self.store.set(f"ack/{version}/{self.rank}", "ok" if error is None else error[:500])


def _aligned(size: int) -> int:
    return (size + _ALIGN - 1) // _ALIGN * _ALIGN


# ---------------------------------------------------------------------------------------------
# Learner side


class WeightSenderMixin:
    """Weight-sync methods for the learner actor.

    The host class must provide ``rank: int`` and ``iter_state() -> Iterator[(hf_name, tensor)]``
    (the full merged model; every rank iterates it in step because under ZeRO-3 it gathers).
    Methods marked *all ranks* must be called on every learner rank together.
    """

    _weight_group: WeightGroup | None = None

    def open_weight_group(self, peer_names: list[str], timeout_s: float, backend: str) -> tuple[str, int]:
        """Rank 0: host a new weight-sync store for ``len(peer_names)`` generators; returns (host, port)."""
        self.close_weight_group()
        group, host, port = WeightGroup.open_source(list(peer_names), timeout_s, backend)
        self._weight_group = group
        return host, port

    def connect_weight_group(self) -> None:
        """Rank 0: form the group; call while every generator runs ``join_weight_group``."""
        if self._weight_group is None:
            raise WeightSyncError(f"{SENDER_NAME}: connect_weight_group() before open_weight_group()")
        self._weight_group.connect()

    def broadcast_weights(self, version: int, bucket_mb: float = 64.0) -> dict[str, Any]:
        """All ranks: rank 0 broadcasts the weights as ``version``; others only join the gather.

        Returns ``{"bytes", "tensors", "buckets", "seconds"}`` (zeros on ranks other than 0).
        """
        items = self.iter_state()
        if self._weight_group is None:
            if getattr(self, "rank", 0) == 0:
                raise WeightSyncError(f"{SENDER_NAME}: broadcast_weights() without a weight-sync group")
            for _ in items:  # take part in the ZeRO-3 gathers
                pass
            return {"bytes": 0, "tensors": 0, "buckets": 0, "seconds": 0.0}
        return self._weight_group.send(items, version, int(float(bucket_mb) * (1 << 20)))

    def export_weights(self, version: int) -> NumpyState | None:
        """All ranks: the full state as ``NumpyState`` on rank 0 (None elsewhere), for the object store."""
        if getattr(self, "rank", 0) == 0:
            return NumpyState.from_items(self.iter_state())
        for _ in self.iter_state():
            pass
        return None

    def close_weight_group(self) -> None:
        """Rank 0: drop the weight-sync group (idempotent)."""
        if self._weight_group is not None:
            self._weight_group.close()
            self._weight_group = None


# ---------------------------------------------------------------------------------------------
# Driver side


def _handles(group: Any) -> list[Any]:
    """Actor handles in rank order from a list or an object exposing ``actors`` / ``handles``."""
    for attr in ("actors", "handles"):
        if hasattr(group, attr):
            return list(getattr(group, attr))
    return list(group)


def wait_named(calls: Sequence[tuple[str, Any]], timeout_s: float, what: str) -> list[Any]:
    """``ray.get`` of ``(actor name, ObjectRef)`` pairs under one deadline; errors name the actor.

    Raises ``WeightSyncError`` listing every actor that failed (died or raised) and those that had
    not answered by the deadline. After a first failure the others get 2 s more to report theirs
    (a dead peer usually makes its partner fail too). Results are in the order of ``calls``.
    """
    deadline = time.monotonic() + timeout_s
    results: dict[int, Any] = {}
    failures: list[str] = []
    pending = {ref: i for i, (_, ref) in enumerate(calls)}
    while pending:
        left = max(0.0, deadline - time.monotonic())
        if failures:
            left = min(left, 2.0)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
        if not ready:
            break
        for ref in ready:
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - reported below with the actor's name
                failures.append(f"{calls[i][0]} failed: {_ray_error_line(exc)}")
    if pending:
        silent = ", ".join(calls[i][0] for i in pending.values())
        failures.append(f"still running: {silent}" if failures else f"no answer within {timeout_s:g}s from {silent}")
    if failures:
        raise WeightSyncError(f"{what}: " + "; ".join(failures))
    return [results[i] for i in range(len(calls))]


def _ray_error_line(exc: BaseException) -> str:
    if isinstance(exc, ray.exceptions.RayActorError):
        return "the actor died or is unreachable"
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, WeightSyncError):  # already names the actor: keep its own words
        return str(cause).strip().splitlines()[0]
    return _first_line(cause)


def _generator_names(generators: Sequence[Any], timeout_s: float) -> list[str]:
    """``ping()`` every generator (with a timeout) and return their names for error messages."""
    fallback = [f"generator at position {i}" for i in range(len(generators))]
    infos = wait_named([(n, g.ping.remote()) for n, g in zip(fallback, generators)], timeout_s, "weight-sync setup")
    return [str(info["name"]) for info in infos]


class ObjectStoreTransport:
    """Learner rank 0 exports numpy arrays once into the Ray object store; each generator reads them.

    ``timeout_s`` bounds the whole sync (export on every learner rank + load on every generator).
    """

    def __init__(self, timeout_s: float = 300.0):
        self.timeout_s = float(timeout_s)
        self.learners: list[Any] = []
        self.generators: list[Any] = []
        self.names: list[str] = []

    def setup(self, learner_group: Any, generators: Sequence[Any]) -> None:
        self.learners = _handles(learner_group)
        self.generators = list(generators)
        if not self.learners:
            raise ValueError("weight sync needs at least one learner actor")
        self.names = _generator_names(self.generators, self.timeout_s)

    def sync(self, version: int) -> SyncStats:
        start = time.perf_counter()
        exports = [lr.export_weights.remote(version) for lr in self.learners]
        loads = [g.load_weights.remote(exports[0], version) for g in self.generators]
        calls = [(f"learner rank {r}", ref) for r, ref in enumerate(exports)] + list(zip(self.names, loads))
        results = wait_named(calls, self.timeout_s, f"weight sync v{version} (object_store)")
        stats = results[len(exports):]
        return SyncStats(time.perf_counter() - start, int(stats[0]["bytes"]) if stats else 0,
                         int(stats[0]["tensors"]) if stats else 0)

    def close(self) -> None:
        self.learners, self.generators, self.names = [], [], []


class BroadcastTransport:
    """A torch.distributed broadcast from learner rank 0 to every generator, in buckets.

    ``backend``: ``"gloo"`` (CPU) or ``"nccl"`` (GPU; tensors travel on each process's current
    CUDA device). ``timeout_s`` bounds set-up, every collective and every sync.
    """

    def __init__(self, bucket_mb: float = 64.0, timeout_s: float = 300.0, backend: str = "gloo"):
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"weight-sync backend {backend!r} is not supported; valid: gloo, nccl")
        self.bucket_mb = float(bucket_mb)
        self.timeout_s = float(timeout_s)
        self.backend = backend
        self.learners: list[Any] = []
        self.generators: list[Any] = []
        self.names: list[str] = []

    def setup(self, learner_group: Any, generators: Sequence[Any]) -> None:
        self.close()
        self.learners = _handles(learner_group)
        self.generators = list(generators)
        if not self.learners:
            raise ValueError("weight sync needs at least one learner actor")
        self.names = _generator_names(self.generators, self.timeout_s)
        source = self.learners[0]
        [(host, port)] = wait_named([(SENDER_NAME, source.open_weight_group.remote(
            self.names, self.timeout_s, self.backend))], self.timeout_s, "weight-sync setup")
        names = [SENDER_NAME, *self.names]
        calls = [(SENDER_NAME, source.connect_weight_group.remote())] + [
            (name, g.join_weight_group.remote(host, port, rank, names, self.timeout_s, self.backend))
            for rank, (name, g) in enumerate(zip(self.names, self.generators), start=1)
        ]
        wait_named(calls, self.timeout_s + 5.0, "weight-sync setup")

    def sync(self, version: int) -> SyncStats:
        if not self.learners:
            raise WeightSyncError("broadcast transport: sync() before setup()")
        start = time.perf_counter()
        sends = [lr.broadcast_weights.remote(version, self.bucket_mb) for lr in self.learners]
        receives = [g.receive_weights.remote(version) for g in self.generators]
        calls = [(f"learner rank {r}", ref) for r, ref in enumerate(sends)] + list(zip(self.names, receives))
        results = wait_named(calls, self.timeout_s + 5.0, f"weight sync v{version} (broadcast)")
        sent = results[0]
        return SyncStats(time.perf_counter() - start, int(sent["bytes"]), int(sent["tensors"]))

    def close(self) -> None:
        """Drop the group on every member that still answers (dead members are skipped)."""
        members = [(SENDER_NAME, a) for a in self.learners[:1]] + list(zip(self.names, self.generators))
        refs = [a.close_weight_group.remote() for _, a in members]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=min(10.0, self.timeout_s))
        self.learners, self.generators, self.names = [], [], []


TRANSPORTS = ("broadcast", "object_store")


def make_transport(name: str, timeout_s: float = 300.0, bucket_mb: float = 64.0,
                   device: str = "cpu") -> WeightTransport:
    """Build a transport by name, with one signature for all.

    ``bucket_mb`` and ``device`` only matter to ``broadcast`` (``cpu`` -> gloo, ``cuda`` -> nccl).
    """
    if name == "broadcast":
        backends = {"cpu": "gloo", "cuda": "nccl"}
        if device not in backends:
            raise ValueError(f"weight-sync device {device!r} is not supported; valid: {', '.join(backends)}")
        return BroadcastTransport(bucket_mb=bucket_mb, timeout_s=timeout_s, backend=backends[device])
    if name == "object_store":
        return ObjectStoreTransport(timeout_s=timeout_s)
    raise ValueError(f"unknown weight-sync transport {name!r}; valid: {', '.join(TRANSPORTS)}")
