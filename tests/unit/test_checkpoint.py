"""Durable checkpoints: atomic folders (also under a real SIGKILL), layout and pruning, run state,
RNG round-trips under ``weights_only`` loading, and the resume config check."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rlhf import checkpoint as ck
from rlhf.checkpoint import (
    CheckpointError,
    RunState,
    atomic_dir,
    check_resume_config,
    checkpoint_path,
    is_complete,
    latest_complete,
    list_complete,
    load_rng,
    load_state,
    prune,
    read_marker,
    rng_state,
    save_rng,
    save_state,
    set_rng_state,
)
from rlhf.config import RunConfig, to_dict


def _write(folder: Path, text: str = "x") -> None:
    (folder / "weights.bin").write_text(text)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "part.bin").write_text(text)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((".tmp-", ".old-")))


# --- atomic folders ---------------------------------------------------------------------------


def test_atomic_dir_success_marks_complete_last(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final, step=7) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-model-")
        _write(tmp)
        assert not final.exists()
    assert is_complete(final)
    assert (final / "sub" / "part.bin").read_text() == "x"
    marker = read_marker(final)
    assert marker["step"] == 7 and abs(marker["time"] - time.time()) < 60
    assert _leftovers(tmp_path) == []


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    final = tmp_path / "model"
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(final) as tmp:
        _write(tmp)
        raise RuntimeError("boom")
    assert not final.exists()
    assert _leftovers(tmp_path) == []


def test_atomic_dir_replaces_existing(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final, step=1) as tmp:
        _write(tmp, "old")
        (tmp / "only_old.txt").write_text("gone")
    with atomic_dir(final, step=2) as tmp:
        _write(tmp, "new")
    assert (final / "weights.bin").read_text() == "new"
    assert not (final / "only_old.txt").exists()
    assert read_marker(final)["step"] == 2
    assert _leftovers(tmp_path) == []


def test_atomic_dir_failure_keeps_existing(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final, step=1) as tmp:
        _write(tmp, "old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(final, step=2) as tmp:
        _write(tmp, "new")
        raise KeyboardInterrupt
    assert is_complete(final) and (final / "weights.bin").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_marker_failure_restores_previous(tmp_path, monkeypatch):
    """A failure after the rename (writing the marker) puts the previous complete folder back."""
    final = tmp_path / "model"
    with atomic_dir(final, step=1) as tmp:
        _write(tmp, "old")

    def fail(folder, step):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "_write_marker", fail)
    with pytest.raises(OSError, match="disk full"), atomic_dir(final, step=2) as tmp:
        _write(tmp, "new")
    assert is_complete(final) and (final / "weights.bin").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_marker_written_inside_body_is_not_trusted(tmp_path, monkeypatch):
    """Only atomic_dir marks a folder, after the rename: a COMPLETE written by the body is dropped first."""
    final = tmp_path / "model"
    monkeypatch.setattr(ck, "_write_marker", lambda folder, step: (_ for _ in ()).throw(OSError("no")))
    with pytest.raises(OSError), atomic_dir(final) as tmp:
        (tmp / "COMPLETE").write_text("{}")
    assert not final.exists()


# --- layout and pruning -----------------------------------------------------------------------


def _checkpoint(run_dir: Path, step: int) -> Path:
    with atomic_dir(checkpoint_path(run_dir, step), step=step) as tmp:
        save_state(tmp, RunState(global_step=step))
    return checkpoint_path(run_dir, step)


def test_layout_and_prune_keeps_newest(tmp_path):
    assert latest_complete(tmp_path) is None and list_complete(tmp_path) == []
    assert prune(tmp_path, 2) == []
    for step in (1, 2, 10, 3):
        _checkpoint(tmp_path, step)
    root = tmp_path / "checkpoints"
    (root / "step-5").mkdir()  # renamed into place, then killed before the marker
    (root / "step-11").mkdir()  # newer than every complete one: left alone
    (root / ".tmp-step-12-dead").mkdir()  # killed mid-write
    (root / ".old-step-9-dead").mkdir()
    assert checkpoint_path(tmp_path, 10) == root / "step-10"
    assert [s for s, _ in list_complete(tmp_path)] == [1, 2, 3, 10]  # numeric order, unmarked ignored
    assert latest_complete(tmp_path) == root / "step-10"
    removed = prune(tmp_path, 2)
    assert sorted(p.name for p in removed) == sorted(["step-1", "step-2", "step-5", ".tmp-step-12-dead",
                                                      ".old-step-9-dead"])
    assert sorted(p.name for p in root.iterdir()) == ["step-10", "step-11", "step-3"]
    assert load_state(latest_complete(tmp_path)).global_step == 10
    with pytest.raises(ValueError, match="keep"):
        prune(tmp_path, 0)


# --- a real kill during a write ---------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from rlhf.checkpoint import RunState, atomic_dir, checkpoint_path, save_rng, save_state
    run_dir = sys.argv[1]
    with atomic_dir(checkpoint_path(run_dir, 1), step=1) as tmp:
        save_state(tmp, RunState(global_step=1, stage_name="0:simpo", data_position={"index": 8}))
        save_rng(tmp)
    with atomic_dir(checkpoint_path(run_dir, 2), step=2) as tmp:
        save_state(tmp, RunState(global_step=2))
        for i in range(400):
            (tmp / f"shard-{i}.bin").write_bytes(b"w" * 4096)
            if i == 0:
                print("writing", flush=True)
            time.sleep(0.02)
    print("finished", flush=True)
""")


def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "writing", proc.stderr.read()[-2000:]
        time.sleep(0.2)
        proc.kill()  # SIGKILL: no handler, no cleanup
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -9
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-step-2-")]  # the half-written one
    assert not (root / "step-2").exists()
    latest = latest_complete(tmp_path)
    assert latest == root / "step-1"
    state = load_state(latest)
    assert state.global_step == 1 and state.data_position == {"index": 8}
    assert set(load_rng(latest)) >= {"python", "numpy", "torch"}
    prune(tmp_path, 1)
    assert [p.name for p in root.iterdir()] == ["step-1"]


# --- run state ---------------------------------------------------------------------------------


def test_state_round_trip(tmp_path):
    order_rng = random.Random(3)
    order_rng.random()
    state = RunState(
        global_step=12, stage_index=1, stage_step=4, stage_name="1:grpo",
        data_position={"order": [5, 2, 9], "rng": ck.encode_random_state(order_rng.getstate())},
        metrics_step=12, bad_steps=1, extra={"note": "x", "nested": {"a": [1.5, None]}},
    )
    folder = tmp_path / "step-12"
    with atomic_dir(folder, step=12) as tmp:
        save_state(tmp, state)
    loaded = load_state(folder)
    assert loaded == state
    resumed = random.Random()
    resumed.setstate(ck.decode_random_state(loaded.data_position["rng"]))
    assert [resumed.random() for _ in range(3)] == [order_rng.random() for _ in range(3)]


def test_state_refuses_incomplete_and_unserialisable(tmp_path):
    save_state(tmp_path, RunState(global_step=1))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_state(tmp_path)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_rng(tmp_path)
    with pytest.raises(TypeError):
        save_state(tmp_path, RunState(extra={"tensor": torch.zeros(1)}))
    (tmp_path / "COMPLETE").write_text("{}")
    (tmp_path / "state.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_state(tmp_path)


# --- RNG ---------------------------------------------------------------------------------------


CUDA = torch.cuda.is_available()


def _draw() -> tuple:
    out = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.normal(),
           torch.rand(3).tolist(), torch.randn(2).tolist())
    return out + (torch.rand(3, device="cuda").tolist(),) if CUDA else out


def test_rng_round_trip_under_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draw()  # with CUDA: initialises it, so rng_state() captures its generators too
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.normal()
    folder = tmp_path / "ckpt"
    with atomic_dir(folder) as tmp:
        path = save_rng(tmp, "learner-0")
        assert path.name == "rng-learner-0.pt"
    assert ("cuda" in load_rng(folder, "learner-0")) == CUDA
    expected = [_draw() for _ in range(3)]
    _draw()  # move every generator on
    set_rng_state(load_rng(folder, "learner-0"))  # torch.load(weights_only=True) inside
    assert [_draw() for _ in range(3)] == expected
    with pytest.raises(CheckpointError, match="no RNG state"):
        load_rng(folder, "driver")
    with pytest.raises(ValueError):
        save_rng(tmp_path, "../escape")


def test_rng_state_in_memory_and_cuda_guard():
    state = rng_state()
    first = _draw()
    set_rng_state(state)
    assert _draw() == first
    if not CUDA:
        with pytest.raises(CheckpointError, match="CUDA"):
            set_rng_state({**state, "cuda": [torch.zeros(8, dtype=torch.uint8)]})


# --- resume config check -----------------------------------------------------------------------


def _saved(**kw) -> dict:
    """A config as the run wrote it: to_dict + YAML dump + load (floats and tuples as YAML gives them)."""
    return yaml.safe_load(yaml.safe_dump(to_dict(RunConfig(**kw)), sort_keys=False))


def test_resume_same_config_and_allowed_changes():
    saved = _saved()
    assert check_resume_config(saved, to_dict(RunConfig())) == []
    new = to_dict(RunConfig())
    new.update(output_dir="/elsewhere", progress=False, timeout_s=5.0, eval_every=3, ray_address="auto")
    new["logging"]["wandb"] = True
    new["checkpoint"] = {"every": 1, "keep": 5}
    new["train"]["max_steps"] = 500
    new["train"]["max_bad_steps"] = 10
    new["generator"]["max_restarts"] = 9
    assert check_resume_config(saved, new) == []


def test_resume_refuses_other_changes_with_one_line_each():
    saved = _saved()
    new = to_dict(RunConfig())
    new["train"]["lr"] = 2e-5
    new["train"]["max_steps"] = 50
    new["objective"] = {"beta": 2.0}
    new["model"]["path"] = "other"
    saved["train"]["lr"] = 1e-5
    reasons = check_resume_config(saved, new)
    assert reasons == [
        "model.path changed from 'default' to 'other': resuming would not continue the same run",
        "train.lr changed from 1e-05 to 2e-05: resuming would not continue the same run",
        "train.max_steps changed from 100 to 50: it may only grow (train for longer), "
        "anything else would not continue the same run",
        "objective.beta changed from <unset> to 2.0: resuming would not continue the same run",
    ]
    assert all("\n" not in r for r in reasons)


def test_resume_stages():
    stages = [{"algo": "simpo", "steps": 4, "train": {"lr": 1e-6}}, {"algo": "grpo", "steps": 5}]
    saved = _saved(stages=tuple(stages))
    grown = to_dict(RunConfig(stages=(stages[0], {"algo": "grpo", "steps": 9, "logging": {"wandb": True}})))
    assert check_resume_config(saved, grown) == []
    first_grown = to_dict(RunConfig(stages=({**stages[0], "steps": 6}, stages[1])))
    assert check_resume_config(saved, first_grown) == [
        "stages[0].steps changed from 4 to 6: resuming would not continue the same run"]
    shrunk = to_dict(RunConfig(stages=(stages[0], {"algo": "grpo", "steps": 3})))
    assert check_resume_config(saved, shrunk)[0].startswith("stages[1].steps changed from 5 to 3: it may only grow")
    lr = to_dict(RunConfig(stages=({**stages[0], "train": {"lr": 2e-6}}, stages[1])))
    assert check_resume_config(saved, lr) == [
        "stages[0].train.lr changed from 1e-06 to 2e-06: resuming would not continue the same run"]
    appended = to_dict(RunConfig(stages=(*stages, {"algo": "rloo", "steps": 2})))
    reasons = check_resume_config(saved, appended)
    assert reasons[0] == "stages: 2 stage(s) saved, 3 now: resuming would not continue the same run"
    assert any(r.startswith("stages[2].algo changed from <unset> to 'rloo'") for r in reasons)
