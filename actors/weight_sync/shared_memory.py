"""Shared-memory backend: learner rank 0 writes every tensor once into a memory-backed file; the
generators on its node map that file and hand vLLM views of it.

One sync is one ``copy_`` per tensor on the learner (from its parameters straight into the mapped
file: ``iter_state(copy=False)``) and, on each CPU generator, the engine's kernels repacked straight
from views of the file (``actors.cpu_reload``; a fused layer's parts lie back to back there, so even
``qkv_proj`` is a view; an engine on a GPU runs vLLM's ``reload_weights`` over the same views):
nothing is serialised, sent or copied in between. The file
(``/dev/shm/rlhf-weights-<pid>-<id>``, or the temp folder when ``/dev/shm`` lacks room) lives as
long as the weight layout: it is made on the first sync and written in place after that, so its
pages are mapped once (``MAP_POPULATE``) and never faulted in again; the generators keep their
read-only mapping between syncs. A changed layout (or a sync after a failed one, when a generator
may still be reading) makes a new file.

Learner rank 0 removes its file on ``close_weight_group``; a file left by a killed learner is
removed by the next learner that makes one on that node. Every generator must run on learner
rank 0's Ray node (``setup`` checks; ``auto`` picks ``broadcast`` otherwise).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
import uuid
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from actors.group import FAN_OUT
from actors.weight_sync.base import (
    SENDER_NAME,
    SyncStats,
    WeightSyncError,
    close_members,
    elsewhere,
    first_line,
    load_paths,
    load_phases,
    members,
    placements,
    wait_named,
)
from actors.weight_sync.wire import Entry, aligned, layout, matches, unpack, without_tied_head, write

SHM_DIR = "/dev/shm"
PREFIX = "rlhf-weights"


class SharedFile:
    """A file of ``size`` bytes mapped into this process; ``tensor`` is a flat uint8 view of it."""

    def __init__(self, path: str, size: int, writable: bool = False, owner: bool = False):
        self.path, self.size = path, int(size)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=prot)
        finally:
            os.close(fd)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only mapping: torch warns it is not writable
            self.tensor = torch.frombuffer(self._map, dtype=torch.uint8)
        self._unlink = weakref.finalize(self, _remove, path) if owner else None

    @classmethod
    def create(cls, size: int) -> SharedFile:
        """A new file of ``size`` bytes (reserved now: a full tmpfs fails here, not with SIGBUS later)."""
        folder = _folder(size)
        _remove_stale(folder)
        path = os.path.join(folder, f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            os.close(fd)
            _remove(path)
            raise WeightSyncError(f"{SENDER_NAME}: cannot reserve {size} bytes for shared weights in "
                                  f"{folder} ({first_line(exc)})") from None
        os.close(fd)
        return cls(path, size, writable=True, owner=True)

    def close(self) -> None:
        """Unmap (once no view is left) and, for the owner, remove the file."""
        self.tensor = None
        with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
            self._map.close()
        if self._unlink is not None:
            self._unlink()


def _folder(size: int) -> str:
    for folder in (SHM_DIR, os.environ.get("TMPDIR", "/tmp")):
        with contextlib.suppress(OSError):
            stat = os.statvfs(folder)
            if stat.f_bavail * stat.f_frsize >= size:
                return folder
    raise WeightSyncError(f"{SENDER_NAME}: no room for {size} bytes of shared weights in {SHM_DIR} or the temp folder")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_stale(folder: str) -> None:
    """Remove files of this kind whose learner process is gone (killed before it could)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            parts = name.split("-")
            if not name.startswith(PREFIX + "-") or len(parts) != 4 or not parts[2].isdigit():
                continue
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                _remove(os.path.join(folder, name))
            except OSError:
                pass  # alive, another user's


class SharedMemorySender:
    """Learner-side method (mixed into ``WeightSenderMixin``); the host provides ``rank`` and ``iter_state``."""

    _shared_out: SharedFile | None = None
    _shared_entries: list[Entry] = []

    def write_shared_weights(self, version: int, fresh: bool = False) -> dict[str, Any] | None:
        """All ranks: rank 0 writes the full state into its shared file; the others only join the gathers.

        ``fresh``: write a new file even if the layout is unchanged. Returns, on rank 0,
        ``{"path", "size", "entries", "version", "bytes", "tensors", "seconds"}`` (what a
        generator needs to map and read it); None elsewhere. A tied ``lm_head.weight`` is left out.
        """
        items = self.iter_state(device="cpu", copy=False)
        if getattr(self, "rank", 0) != 0:
            for _ in items:
                pass
            return None
        start = time.perf_counter()
        if fresh:
            self._close_shared_out()
        out, entries = self._shared_out, self._shared_entries
        items = without_tied_head(items)
        done, rest = 0, []
        for name, tensor in items:
            if out is None or done >= len(entries) or not matches(entries[done], name, tensor):
                rest = [(name, tensor), *items]
                break
            write(out.tensor, entries[done], tensor)
            done += 1
        if out is None or rest or done != len(entries):
            out, entries = self._new_shared_file(entries[:done], rest)
        return {"path": out.path, "size": out.size, "entries": entries, "version": int(version),
                "bytes": sum(e[4] for e in entries), "tensors": len(entries), "seconds": time.perf_counter() - start}

    def _new_shared_file(self, kept: list[Entry],
                         rest: list[tuple[str, torch.Tensor]]) -> tuple[SharedFile, list[Entry]]:
        """A file for ``kept`` (already written in the current file, copied over) then ``rest``."""
        prefix = kept[-1][3] + aligned(kept[-1][4]) if kept else 0
        added, size = layout(rest, start=prefix)
        new = SharedFile.create(max(size, 1))
        if prefix:
            new.tensor[:prefix].copy_(self._shared_out.tensor[:prefix])
        for entry, (_, tensor) in zip(added, rest):
            write(new.tensor, entry, tensor)
        self._close_shared_out()
        self._shared_out, self._shared_entries = new, kept + added
        return new, self._shared_entries

    def _close_shared_out(self) -> None:
        if self._shared_out is not None:
            self._shared_out.close()
        self._shared_out, self._shared_entries = None, []


class SharedMemoryReceiver:
    """Generator-side method (mixed into ``WeightReceiverMixin``); the host provides ``name`` and ``load_weights``."""

    _shared_in: SharedFile | None = None

    def load_shared_weights(self, where: dict[str, Any] | None, version: int) -> dict[str, Any]:
        """Map learner rank 0's file (kept mapped while it stays the same) and load views of it."""
        if not where:
            raise WeightSyncError(f"{self.name}: load_shared_weights() got no file from {SENDER_NAME}")
        mapped = self._shared_in
        if mapped is None or (mapped.path, mapped.size) != (where["path"], where["size"]):
            self._close_shared_in()
            try:
                mapped = SharedFile(where["path"], where["size"])
            except OSError as exc:
                raise WeightSyncError(
                    f"{self.name}: cannot map {SENDER_NAME}'s shared weights {where['path']} ({first_line(exc)}); "
                    f"a generator must run on the learner's node for the shared_memory transport"
                ) from None
            self._shared_in = mapped
        return self.load_weights(list(unpack(mapped.tensor, where["entries"])), version)

    def _close_shared_in(self) -> None:
        if self._shared_in is not None:
            self._shared_in.close()
            self._shared_in = None


class SharedMemoryTransport:
    """Driver side. ``timeout_s`` bounds set-up and each sync; ``bucket_mb`` does not apply. On
    ``device="cuda"`` the weights go through host memory: ``auto`` picks ``broadcast`` there, unless
    a generator shares learner rank 0's GPU (NCCL cannot put two ranks on one device)."""

    def __init__(self, timeout_s: float = 300.0, bucket_mb: float = 64.0, device: str = "cpu"):
        self.timeout_s = float(timeout_s)
        self.learners: list[Any] = []
        self.generators: list[Any] = []
        self.names: list[str] = []
        self._fresh = True

    def setup(self, learner_group: Any, generators: Sequence[Any]) -> None:
        self.close()
        learners, names = members(learner_group, generators, self.timeout_s)
        places = placements([(SENDER_NAME, learners[0]), *zip(names, generators)], self.timeout_s)
        away = elsewhere(places[0], list(zip(names, places[1:])))
        if away:
            raise ValueError(f"the shared_memory weight sync needs every generator on {SENDER_NAME}'s node; "
                             f"{', '.join(away)} run elsewhere (use auto or broadcast)")
        self.learners, self.generators, self.names = learners, list(generators), names
        self._fresh = True

    def sync(self, version: int) -> SyncStats:
        if not self.learners:
            raise WeightSyncError("shared_memory transport: sync() before setup()")
        start = time.perf_counter()
        with FAN_OUT:  # every rank gets this call in the same order as the training loop's (actors.group)
            writes = [lr.write_shared_weights.remote(version, self._fresh) for lr in self.learners]
        loads = [g.load_shared_weights.remote(writes[0], version) for g in self.generators]
        calls = [(f"learner rank {r}", ref) for r, ref in enumerate(writes)] + list(zip(self.names, loads))
        self._fresh = True  # until this sync succeeds: a generator may still be reading the current file
        results = wait_named(calls, self.timeout_s, f"weight sync v{version} (shared_memory)")
        self._fresh = False
        written = results[0]
        phases = {"write": float(written["seconds"]), **load_phases(results[len(writes):])}
        return SyncStats(time.perf_counter() - start, int(written["bytes"]), int(written["tensors"]), phases,
                         load_paths(results[len(writes):]))

    def close(self) -> None:
        close_members(self.learners[:1], self.names, self.generators, self.timeout_s)
        self.learners, self.generators, self.names = [], [], []
