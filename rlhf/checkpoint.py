"""Durable run state: atomic folders, the checkpoint layout, run state, RNG state, resume checks.

A run folder ``DIR`` holds ``config.yaml``, ``metrics.jsonl``, the final ``model/`` and::

    DIR/checkpoints/step-N/     N = global step (optimizer steps so far, the policy version)
        state.json              RunState: schedule and data position, metrics step, bad steps
        rng-driver.pt           the driver's RNG (rng-learner-0.pt ... from the learners)
        ...                     DeepSpeed's own save_checkpoint output, one part per ZeRO rank
        COMPLETE                written last; a folder without it is never loaded

Every folder is written through ``atomic_dir``: everything goes to a hidden temporary sibling,
is fsynced, renamed into place, and only then marked ``COMPLETE``. A kill at any instant leaves
either the previous complete folder or the new one, plus at worst a stale ``.tmp-*``/``.old-*``
folder (or an unmarked ``step-N``) that ``prune`` deletes. The driver writes a checkpoint as::

    with atomic_dir(checkpoint_path(run_dir, step), step=step) as tmp:
        learners.save_checkpoint(tmp)          # DeepSpeed, every rank (tmp must be visible to them)
        save_rng(tmp, "driver")
        save_state(tmp, state)
    prune(run_dir, cfg.checkpoint.keep)

and resumes from ``latest_complete(run_dir)`` with ``load_state``/``load_rng`` after
``check_resume_config`` found no reason to refuse. RNG files are read only with
``torch.load(weights_only=True)``: nothing in a checkpoint can run code when it is loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "COMPLETE"
STATE_FILE = "state.json"
STATE_FORMAT = 1
CHECKPOINTS = "checkpoints"
_STEP_RE = re.compile(r"^step-(\d+)$")
_TEMP_PREFIXES = (".tmp-", ".old-")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unreadable (message is one line)."""


# ---------------------------------------------------------------------------------------------
# Atomic folders


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (folders after their entries), then ``root``."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                _fsync_path(path)
        _fsync_path(Path(dirpath))


def _remove(path: Path) -> None:
    """Delete a folder (its marker first, so a kill mid-delete never leaves a "complete" remnant)."""
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            (path / MARKER).unlink()
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _write_marker(folder: Path, step: int | None) -> None:
    body = json.dumps({"time": time.time(), "step": step})
    tmp = folder / f".{MARKER}.tmp"
    with open(tmp, "w") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MARKER)  # the marker appears whole or not at all
    _fsync_path(folder)


@contextlib.contextmanager
def atomic_dir(final: str | Path, step: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final``; on success it becomes ``final``, marked complete.

    On a clean exit: every file is fsynced, an existing ``final`` is renamed aside, the temporary
    folder is renamed to ``final``, ``final/COMPLETE`` (JSON ``{"time", "step"}``) is written last,
    and the old folder is deleted. On an exception (``KeyboardInterrupt`` included) the temporary
    folder is removed, an existing ``final`` is left as it was, and the exception propagates.
    """
    final = Path(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{final.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    old = parent / f".old-{final.name}-{uuid.uuid4().hex}"
    moved_aside = False
    try:
        with contextlib.suppress(FileNotFoundError):
            (tmp / MARKER).unlink()  # only this function marks a folder complete, and last
        _fsync_tree(tmp)
        if final.exists() or final.is_symlink():
            os.rename(final, old)
            moved_aside = True
        os.rename(tmp, final)
        _fsync_path(parent)
        _write_marker(final, step)
    except BaseException:
        if tmp.exists():
            _remove(tmp)
        elif not is_complete(final):  # renamed into place but never marked
            _remove(final)
        if moved_aside and not final.exists():  # put the previous folder back
            os.rename(old, final)
            moved_aside = False
        raise
    finally:
        if moved_aside:
            _remove(old)
    _fsync_path(parent)


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a folder that ``atomic_dir`` finished (it holds the ``COMPLETE`` marker)."""
    return Path(path, MARKER).is_file()


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The ``COMPLETE`` marker's body (``{"time", "step"}``), or None when the folder is not complete."""
    try:
        return json.loads(Path(path, MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _require_complete(folder: Path) -> None:
    if not is_complete(folder):
        raise CheckpointError(f"{folder} is not a complete checkpoint (no {MARKER} marker): refusing to load it")


# ---------------------------------------------------------------------------------------------
# Checkpoint layout


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``run_dir/checkpoints/step-<step>``."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def _step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for path in root.iterdir():
        match = _STEP_RE.match(path.name)
        if match and path.is_dir():
            out.append((int(match.group(1)), path))
    return sorted(out)


def list_complete(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint of ``run_dir``, oldest first."""
    return [(step, path) for step, path in _step_dirs(run_dir) if is_complete(path)]


def latest_complete(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None when it has none."""
    complete = list_complete(run_dir)
    return complete[-1][1] if complete else None


def prune(run_dir: str | Path, keep: int) -> list[Path]:
    """Keep the newest ``keep`` complete checkpoints; delete the rest and the debris of killed writes.

    Debris: temporary ``.tmp-*``/``.old-*`` folders, and unmarked ``step-N`` folders older than the
    newest complete checkpoint. Call it only while no checkpoint is being written. Returns what was
    deleted.
    """
    if keep < 1:
        raise ValueError(f"checkpoint keep must be >= 1 (a resume needs a complete checkpoint), got {keep}")
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    complete = list_complete(run_dir)
    removed = [path for _, path in complete[:-keep]]
    newest = complete[-1][0] if complete else None
    removed += [p for s, p in _step_dirs(run_dir) if newest is not None and s < newest and not is_complete(p)]
    removed += [p for p in root.iterdir() if p.name.startswith(_TEMP_PREFIXES)]
    for path in removed:
        _remove(path)
    if removed:
        _fsync_path(root)
    return removed


# ---------------------------------------------------------------------------------------------
# Run state


@dataclass
class RunState:
    """Where a run stands, saved as ``state.json`` (every value must be JSON-serialisable).

    ``data_position`` is owned by the stage's data loop and opaque here, e.g. ``{"epoch", "index",
    "seed"}`` for an offline stage or ``{"order": [...], "rng": encode_random_state(r.getstate())}``
    for an online one (JSON turns tuples into lists: encode them). ``metrics_step`` is the last step
    written to ``metrics.jsonl`` (``MetricLogger(resume_step=metrics_step)``); ``bad_steps`` the
    consecutive skipped NaN/Inf steps so far.
    """

    global_step: int = 0  # optimizer steps so far (the policy version)
    stage_index: int = 0
    stage_step: int = 0  # steps done in the current stage
    stage_name: str = ""
    data_position: dict[str, Any] = field(default_factory=dict)
    metrics_step: int = 0
    bad_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def save_state(folder: str | Path, state: RunState) -> Path:
    """Write ``state`` as ``folder/state.json`` (a value JSON cannot hold fails here, not at resume)."""
    body = {"format": STATE_FORMAT, **dataclasses.asdict(state)}
    path = Path(folder) / STATE_FILE
    path.write_text(json.dumps(body, indent=1))
    return path


def load_state(folder: str | Path) -> RunState:
    """The ``RunState`` of the complete checkpoint ``folder``."""
    folder = Path(folder)
    _require_complete(folder)
    try:
        body = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / STATE_FILE}: cannot read the run state ({err})") from None
    fmt = body.pop("format", None)
    if fmt != STATE_FORMAT:
        raise CheckpointError(f"{folder / STATE_FILE}: state format {fmt!r}, this version reads {STATE_FORMAT}")
    valid = {f.name for f in dataclasses.fields(RunState)}
    unknown = sorted(set(body) - valid)
    if unknown:
        raise CheckpointError(f"{folder / STATE_FILE}: unknown key(s) {', '.join(unknown)}")
    return RunState(**body)


# ---------------------------------------------------------------------------------------------
# RNG state


def encode_random_state(state: tuple) -> list:
    """Python ``random.getstate()`` as nested lists of ints (JSON and ``weights_only`` safe)."""
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def decode_random_state(data: list) -> tuple:
    """The inverse of ``encode_random_state``: a tuple ``random.setstate`` accepts."""
    version, internal, gauss_next = data
    return (int(version), tuple(int(x) for x in internal), gauss_next)


def rng_state(cuda: bool | None = None) -> dict[str, Any]:
    """This process's RNG states: python ``random``, numpy's global, torch CPU and (optionally) CUDA.

    ``cuda=None`` captures the CUDA generators only when CUDA is already initialised here, so a
    driver that never used the GPU does not create a context on it just to save its state.
    """
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": encode_random_state(random.getstate()),
        "numpy": [str(kind), [int(x) for x in key], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if cuda is None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured: the next numbers of every generator repeat the saved run's."""
    cuda = state.get("cuda")
    if cuda is not None and len(cuda) > (torch.cuda.device_count() if torch.cuda.is_available() else 0):
        raise CheckpointError(
            f"the saved RNG state has {len(cuda)} CUDA device(s) but this process sees "
            f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}: cannot resume bit-exactly"
        )
    random.setstate(decode_random_state(state["python"]))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _rng_file(folder: str | Path, name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"RNG state name {name!r} must be letters, digits, '_', '-' or '.'")
    return Path(folder) / f"rng-{name}.pt"


def save_rng(folder: str | Path, name: str = "driver", state: dict[str, Any] | None = None) -> Path:
    """Write ``state`` (default: this process's ``rng_state()``) to ``folder/rng-<name>.pt``."""
    path = _rng_file(folder, name)
    torch.save(rng_state() if state is None else state, path)
    return path


def load_rng(folder: str | Path, name: str = "driver") -> dict[str, Any]:
    """Read ``folder/rng-<name>.pt`` of a complete checkpoint with ``weights_only=True`` (no code runs)."""
    folder = Path(folder)
    _require_complete(folder)
    path = _rng_file(folder, name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: this checkpoint has no RNG state for {name!r}") from None


# ---------------------------------------------------------------------------------------------
# Resume config check

#: Keys (a section name covers every key below it) whose change keeps a resumed run the same run,
#: with the reason. Everything not listed here, or in RESUME_MAY_GROW, must be unchanged.
RESUME_MAY_CHANGE: dict[str, str] = {
    "output_dir": "where the run folder lives (a moved or copied run resumes from its new place)",
    "ray_address": "which cluster runs it",
    "cluster": "which nodes and resources each role's actors use; no value computed depends on it",
    "timeout_s": "a time limit on remote calls; no value computed depends on it",
    "progress": "the progress bar",
    "logging": "where metrics are sent besides metrics.jsonl",
    "checkpoint": "how often checkpoints are written and how many are kept",
    "eval_every": "evaluation reads the policy and draws from no training generator",
    "train.max_bad_steps": "when a run of skipped NaN/Inf steps stops the run; each step is unchanged",
    "generator.max_restarts": "how many generator deaths the run survives; samples are unchanged",
}

#: Integer keys that may grow (never shrink): a resume may train for longer. ``stages[-1]`` is
#: the last stage, and only when the number of stages is unchanged. Growing a length also
#: stretches a learning-rate decay that depends on it, from the resume point on.
RESUME_MAY_GROW: dict[str, str] = {
    "train.max_steps": "train for longer",
    "stages[-1].steps": "train the last stage for longer",
}

_UNSET = object()


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(sub, f"{prefix}.{key}" if prefix else str(key), out)
    elif prefix == "stages" and isinstance(value, (list, tuple)):
        for i, stage in enumerate(value):
            _flatten(stage, f"stages[{i}]", out)
    else:
        out[prefix] = _plain(value)
    return out


def _covered(key: str, names: dict[str, str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in names)


def _show(value: Any) -> str:
    return "<unset>" if value is _UNSET else repr(value)


def check_resume_config(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Reasons (one line per key) why ``new`` would not continue the run saved with config ``saved``.

    ``saved`` is the run's ``config.yaml``, ``new`` the config the resume would use (both plain
    dicts, e.g. ``to_dict(cfg)``). Keys in ``RESUME_MAY_CHANGE`` may change, keys in
    ``RESUME_MAY_GROW`` may grow, every other key must be equal. Stage entries follow the same
    rules with their ``stages[i].`` prefix removed. An empty list: the resume may go on.
    """
    old_flat = _flatten(saved, "", {})
    new_flat = _flatten(new, "", {})
    n_old, n_new = len(saved.get("stages") or ()), len(new.get("stages") or ())
    reasons = []
    if n_old != n_new:
        reasons.append(f"stages: {n_old} stage(s) saved, {n_new} now: resuming would not continue the same run")
    last = f"stages[{n_old - 1}]." if n_old == n_new and n_old else None
    keys = list(old_flat) + [k for k in new_flat if k not in old_flat]
    for key in keys:
        before, after = old_flat.get(key, _UNSET), new_flat.get(key, _UNSET)
        if before == after:
            continue
        rel = re.sub(r"^stages\[\d+\]\.", "", key)
        if _covered(key, RESUME_MAY_CHANGE) or _covered(rel, RESUME_MAY_CHANGE):
            continue
        grow = key if key in RESUME_MAY_GROW else ("stages[-1].steps" if last and key == last + "steps" else None)
        if grow is None:
            reasons.append(f"{key} changed from {_show(before)} to {_show(after)}: "
                           "resuming would not continue the same run")
        elif not (isinstance(before, int) and isinstance(after, int) and after > before):
            reasons.append(f"{key} changed from {_show(before)} to {_show(after)}: it may only grow "
                           f"({RESUME_MAY_GROW[grow]}), anything else would not continue the same run")
    return reasons
