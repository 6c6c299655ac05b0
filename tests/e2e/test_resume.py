"""Durability end to end: SIGKILL mid-run then ``--resume`` equals an uninterrupted run; NaN steps skipped.

Each run is ``python -m rlhf.run`` in its own process group on the tiny model. The driver owns
its private Ray cluster, whose processes die with it; the test still checks by pid (processes
carrying the run's marker variable) that nothing is left, and ends any straggler it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e

HELPERS = Path(__file__).parent / "helpers"


def _env(marker: str) -> dict[str, str]:
    path = os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "RLHF_TEST_RUN": marker, "PYTHONPATH": path}


def _pids_with(marker: str) -> list[int]:
    """Processes whose environment carries ``RLHF_TEST_RUN=marker`` (the run and its Ray processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"RLHF_TEST_RUN={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _end_leftovers(marker: str) -> list[int]:
    """SIGKILL what this test's run left behind (by pid); returns those pids."""
    deadline = time.time() + 20
    left = _pids_with(marker)
    while left and time.time() < deadline:  # Ray's processes notice their parent's death within seconds
        time.sleep(1)
        left = _pids_with(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _run(args: list[str], marker: str, timeout: int = 600) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "rlhf.run", *args], capture_output=True, text=True,
                              timeout=timeout, env=_env(marker))
    finally:
        _end_leftovers(marker)


def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _steps(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r or "reward/mean" in r]


def _kill_after_checkpoint(args: list[str], run_dir: Path, step: int, marker: str) -> None:
    """Start a run, SIGKILL its driver once checkpoint ``step`` is complete."""
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.run", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(marker))
    marker_file = run_dir / "checkpoints" / f"step-{step}" / "COMPLETE"
    try:
        deadline = time.time() + 600
        while not marker_file.exists():
            assert proc.poll() is None, f"run ended before checkpoint {step}: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _end_leftovers(marker)


TINY_OFFLINE = ["--algo", "simpo", "--model", "tiny", "data.size=64", "data.eval_size=8", "progress=false",
                "train.micro_batch_size=2", "train.grad_accum=2", "checkpoint.every=2", "checkpoint.keep=2"]


def test_offline_resume_after_sigkill_is_bit_equal(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _run([*TINY_OFFLINE, "--max-steps", "8", "--output-dir", str(straight)], uuid.uuid4().hex)
    assert proc.returncode == 0, proc.stderr[-3000:]

    marker = uuid.uuid4().hex
    _kill_after_checkpoint([*TINY_OFFLINE, "--max-steps", "8", "--output-dir", str(killed)], killed, 4, marker)
    assert not (killed / "model").exists() or not (killed / "model" / "COMPLETE").exists()
    resumed = _run(["--resume", str(killed)], marker)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout

    a, b = _weights(straight), _weights(killed)
    assert sorted(a) == sorted(b)
    assert all(a[k].equal(b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert _steps(killed) == list(range(1, 9)), "metrics continue without duplicated or missing steps"
    assert (killed / "report.md").is_file()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-6", "step-8"]  # keep=2

    again = _run(["--resume", str(killed)], marker)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]


def test_resume_of_a_folder_with_no_run_is_one_line(tmp_path):
    proc = _run(["--resume", str(tmp_path / "nothing")], uuid.uuid4().hex, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --resume") and "no run there" in lines[0]


def test_resume_refuses_a_changed_setting(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run([*TINY_OFFLINE, "--max-steps", "2", "--output-dir", str(run_dir)], uuid.uuid4().hex)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused = _run(["--resume", str(run_dir), "train.lr=0.5"], uuid.uuid4().hex, timeout=120)
    assert refused.returncode == 2 and "train.lr changed" in refused.stderr, refused.stderr


def test_nan_steps_are_skipped_then_the_run_stops_with_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "nan"
    proc = _run(["--import", "poisoned_objective", "--algo", "poisoned_simpo", "--model", "tiny", "--max-steps", "6",
                 "--output-dir", str(run_dir), "data.size=48", "data.eval_size=8", "progress=false",
                 "checkpoint.every=1", "checkpoint.keep=10", "train.max_bad_steps=2"], uuid.uuid4().hex)
    assert proc.returncode == 1, proc.stdout[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "2 steps in a row had a non-finite loss" in last and "step-3" in last, last
    assert "Traceback" not in proc.stderr
    assert f"full traceback: {run_dir / 'error.log'}" in last  # the one line says where the rest went
    assert "BadStepsError" in (run_dir / "error.log").read_text()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in records if r.get("skipped") == 1.0]
    assert skipped == [4, 5]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-1", "step-2", "step-3"], "no checkpoint is written on a skipped step"
    assert (run_dir / "checkpoints" / "step-3" / "COMPLETE").is_file()


TINY_ONLINE = ["--algo", "grpo", "--model", "tiny", "data.size=16", "generator.prompts_per_step=2", "generator.n=2",
               "generator.max_tokens=8", "progress=false", "checkpoint.every=1", "checkpoint.keep=10"]


def test_online_resume_continues_with_the_same_prompt_order_and_step_count(tmp_path):
    """GRPO killed after checkpoint 2 and resumed draws the same prompts as an uninterrupted run.

    Weights are not compared: vLLM's sampling state is not part of a checkpoint (its engine is
    seeded once, at start), so resumed completions are fresh draws. What the test bounds: the
    step count, the metrics (no step duplicated or missing) and the prompt order (the data
    position of every later checkpoint equals the uninterrupted run's).
    """
    from rlhf.checkpoint import load_state

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _run([*TINY_ONLINE, "--max-steps", "4", "--output-dir", str(straight)], uuid.uuid4().hex)
    assert proc.returncode == 0, proc.stderr[-3000:]
    marker = uuid.uuid4().hex
    _kill_after_checkpoint([*TINY_ONLINE, "--max-steps", "4", "--output-dir", str(killed)], killed, 2, marker)
    resumed = _run(["--resume", str(killed)], marker)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _steps(killed) == [1, 2, 3, 4]
    for step in (3, 4):
        a = load_state(straight / "checkpoints" / f"step-{step}")
        b = load_state(killed / "checkpoints" / f"step-{step}")
        assert a.data_position["order"] == b.data_position["order"], f"prompt order differs at step {step}"
        assert a.data_position["rng"] == b.data_position["rng"] and a.global_step == b.global_step == step
