"""Files between the driver and the actors when nodes share no filesystem (``cluster.ship_files``).

Model in. The driver packs the model folder once (``pack_folder``: its top-level files, which is
all transformers and vLLM read) and ``ray.put``s it once per run; every actor config carries a
``Shipping`` record with that ``ObjectRef``. In its ``__init__`` / ``setup`` an actor calls
``ensure_local(model_path, shipping)``: where shipping is active it fetches the packed folder and
writes it to ``<tmp>/rlhf-shipped-<uid>/<name>-<hash>`` (temp folder + rename, so several actors on a
node share one copy and a half-written copy is never used), else it returns ``model_path`` as is.

Outputs back. Where shipping is active, ``LearnerActor.save`` / ``save_checkpoint`` write into a
node-local scratch folder and return its files as ``{relative_path: bytes}`` (``pack_tree``);
``LearnerGroup`` writes them under the driver's folder (``write_files``).

Checkpoints in again (``--resume``). ``LearnerGroup.load_checkpoint`` packs what the learners read
of the driver's checkpoint folder (``pack_checkpoint``) and ``ray.put``s it once; a rank where
shipping is active writes it to a scratch folder (``fetched``) and loads from there; a rank where
it is not (``auto``: on the driver's node) reads the folder itself, and when no rank ships nothing
is packed. Everything passes
through Ray's object store as one ``bytes`` per file: fine for models and checkpoints that fit
in the object store and the driver's memory; a very large checkpoint should use a shared
filesystem (``cluster.ship_files=never``) until files stream in chunks.

When shipping is active (``Shipping.active``): ``never`` - no; ``always`` - yes (tests one
machine); ``auto`` - when this actor runs on another Ray node than the driver. The driver builds
no record at all (so nothing is packed) for ``never``, or for ``auto`` on a one-node cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ShipMode = Literal["auto", "always", "never"]
SHIP_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class Shipping:
    """What one actor needs to move files: the mode, the driver's Ray node id and, when the
    driver's model path is a folder, the packed folder (``model_ref``, a ``ray.ObjectRef`` of a
    ``pack_folder`` dict) with its content hash ``model_digest``."""

    mode: ShipMode
    driver_node: str
    model_ref: Any = None
    model_digest: str = ""

    def __post_init__(self) -> None:
        if self.mode not in SHIP_MODES:
            raise ValueError(f"ship_files must be one of {', '.join(SHIP_MODES)}, got {self.mode!r}")

    def active(self, node_id: str | None = None) -> bool:
        """Whether files travel through Ray for an actor on ``node_id`` (default: this process's node)."""
        if self.mode != "auto":
            return self.mode == "always"
        if node_id is None:
            import ray

            node_id = ray.get_runtime_context().get_node_id()
        return node_id != self.driver_node


def ships(shipping: Shipping | None) -> bool:
    """``shipping.active()``, False without a record (the single-node path)."""
    return shipping is not None and shipping.active()


def pack_folder(path: str | Path) -> dict[str, bytes]:
    """The top-level files of a model folder, ``{name: bytes}`` (sub-folders and hidden files left
    out: transformers and vLLM read only top-level files; symlinks, as in the hub cache, are followed)."""
    folder = Path(path)
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot ship {str(folder)!r}: not a folder")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def pack_tree(path: str | Path) -> dict[str, bytes]:
    """Every file under ``path``, ``{relative/posix/path: bytes}`` (what an actor sends back)."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pack_checkpoint(folder: str | Path, tag: str) -> dict[str, bytes]:
    """What the learners read of a checkpoint folder, ``{relative/posix/path: bytes}``: DeepSpeed's
    ``folder/tag`` tree, every ``rng-learner-*.pt`` and the ``COMPLETE`` marker (the driver's own
    files, ``state.json`` and ``rng-driver.pt``, stay on the driver)."""
    root = Path(folder)
    if not (root / tag).is_dir():
        raise FileNotFoundError(f"cannot ship checkpoint {str(root)!r}: it has no {tag!r} folder")
    files = {f"{tag}/{name}": data for name, data in pack_tree(root / tag).items()}
    for p in sorted(root.iterdir()):
        if p.is_file() and (p.name.startswith("rng-learner-") or p.name == "COMPLETE"):
            files[p.name] = p.read_bytes()
    return files


def digest(files: Mapping[str, bytes]) -> str:
    """A hash of names and contents (what keys a shipped copy on a node)."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def write_files(root: str | Path, files: Mapping[str, bytes]) -> list[Path]:
    """Write ``files`` (relative paths) under ``root``; a path that leaves ``root`` is refused."""
    base = Path(root).resolve()
    base.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        target = (base / name).resolve()
        if Path(name).is_absolute() or base not in target.parents:
            raise ValueError(f"refusing to write {name!r}: outside {str(base)!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written


def merge_files(parts: list[Any]) -> dict[str, bytes]:
    """The ``{path: bytes}`` dicts among ``parts`` (one per rank) as one; the same path with other
    contents from two ranks is an error."""
    merged: dict[str, bytes] = {}
    for rank, part in enumerate(parts):
        for name, data in (part if isinstance(part, Mapping) else {}).items():
            if name in merged and merged[name] != data:
                raise ValueError(f"learner rank {rank} sent {name!r}, which another rank sent with other contents")
            merged[name] = data
    return merged


def shipped_root() -> Path:
    """Where shipped folders live on this node (``<tmp>/rlhf-shipped-<uid>``, kept for later runs)."""
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    return Path(tempfile.gettempdir()) / f"rlhf-shipped{user}"


def ensure_local(model_path: str, shipping: Shipping | None, root: str | Path | None = None,
                 fetch: Callable[[Any], Mapping[str, bytes]] | None = None, timeout_s: float = 600.0) -> str:
    """A folder on this node holding the model: ``model_path`` itself, or the shipped copy.

    With no record, no packed folder, or shipping inactive for this actor: ``model_path``. Else
    ``root/<name>-<hash16>`` (``root``: ``shipped_root()``), written once per node from
    ``fetch(shipping.model_ref)`` (default ``ray.get`` within ``timeout_s``) into a temp sibling
    and renamed into place; a copy already there (another actor, an earlier run) is used as is.
    """
    if shipping is None or shipping.model_ref is None or not shipping.active():
        return model_path
    base = Path(root) if root is not None else shipped_root()
    name = Path(str(model_path).rstrip("/")).name or "model"
    target = base / f"{name}-{shipping.model_digest[:16]}"
    if target.is_dir():
        return str(target)
    files = (fetch or _ray_fetch(timeout_s, name))(shipping.model_ref)
    if shipping.model_digest and digest(files) != shipping.model_digest:
        raise ValueError(f"shipped model {name!r}: contents do not match the driver's hash")
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{target.name}-{uuid.uuid4().hex}"
    try:
        write_files(tmp, files)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # anything but "another actor got there first"
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _ray_fetch(timeout_s: float, name: str, what: str = "model") -> Callable[[Any], Mapping[str, bytes]]:
    def fetch(ref: Any) -> Mapping[str, bytes]:
        import ray

        try:
            return ray.get(ref, timeout=float(timeout_s))
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"the shipped {what} {name!r} did not arrive within {float(timeout_s):g} s") from None

    return fetch


@contextlib.contextmanager
def fetched(ref: Any, name: str, timeout_s: float = 600.0) -> Iterator[str]:
    """A node-local scratch folder holding the shipped ``{path: bytes}`` behind ``ref`` (a
    ``ray.put`` of ``pack_checkpoint``), fetched within ``timeout_s``; removed afterwards."""
    files = _ray_fetch(timeout_s, name, "checkpoint")(ref)
    with scratch() as path:
        write_files(path, files)
        yield path


@contextlib.contextmanager
def scratch() -> Iterator[str]:
    """A node-local temporary folder, removed afterwards (where a shipping learner writes its outputs)."""
    path = tempfile.mkdtemp(prefix="rlhf-out-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def for_actors(mode: ShipMode, model_path: str) -> Shipping | None:
    """The driver's record for the actors of a run (call once per model folder and keep it).

    ``never``, and ``auto`` on a one-node cluster: None (nothing is packed; actors read
    ``model_path`` and write outputs themselves). Otherwise a ``Shipping`` with the driver's node
    and, when ``model_path`` is a folder here, the folder packed and ``ray.put`` once (a hub name
    is left for each node to resolve).
    """
    import ray

    if mode not in SHIP_MODES:
        raise ValueError(f"ship_files must be one of {', '.join(SHIP_MODES)}, got {mode!r}")
    if mode == "never" or (mode == "auto" and sum(bool(n.get("Alive")) for n in ray.nodes()) < 2):
        return None
    driver = ray.get_runtime_context().get_node_id()
    if not Path(model_path).is_dir():
        return Shipping(mode, driver)
    packed = pack_folder(model_path)
    return Shipping(mode, driver, ray.put(packed), digest(packed))
