"""Actor failures end to end: SIGKILL an actor's process by pid while ``python -m rlhf.run`` trains.

- a generator that dies is restarted (bounded by ``generator.max_restarts``), synced to the current
  weights, its prompts generated again: the run loses no step and counts the restart;
- past ``generator.max_restarts`` the run stops with one line naming the actor and the setting;
- a reward-model actor that dies is restarted and the batch scored again;
- a learner that dies ends the run with one line naming ``LearnerActor`` and the ``--resume``
  command, and that command finishes the run.

Each run is a subprocess on the tiny model with a private Ray cluster. The test finds the actor's
process among those carrying the run's marker variable (``RLHF_TEST_RUN``) whose command line Ray
set to ``ray::<ActorClass>...``, and ends any straggler by pid afterwards.
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

pytestmark = pytest.mark.e2e

ONLINE = ["--algo", "grpo", "--model", "tiny", "generator.num_engines=1", "generator.prompts_per_step=2",
          "generator.n=2", "generator.max_tokens=8", "data.size=32", "progress=false"]
DEADLINE_S = 300


def _env(marker: str) -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "RLHF_TEST_RUN": marker}


def _pids(marker: str, actor: str | None = None) -> list[int]:
    """Processes carrying ``RLHF_TEST_RUN=marker``; with ``actor``, only Ray workers of that actor class."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"RLHF_TEST_RUN={marker}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        if actor is None or _doing(int(entry.name)).split(".")[0] == f"ray::{actor}":
            found.append(int(entry.name))
    return found


def _doing(pid: int) -> str:
    """A Ray worker's title: ``ray::Class.method`` while an actor method runs, ``ray::Class`` when idle."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
    except OSError:
        return ""


def _end_leftovers(marker: str) -> None:
    """SIGKILL, by pid, whatever this test's run left behind (Ray's processes follow their driver within seconds)."""
    deadline = time.time() + 20
    while _pids(marker) and time.time() < deadline:
        time.sleep(1)
    for pid in _pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _steps(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip() and "reward/mean" in line]


class Run:
    """``python -m rlhf.run ARGS`` in the background; stdout and stderr go to files (no pipe to fill)."""

    def __init__(self, args: list[str], tmp_path: Path, name: str) -> None:
        self.marker = uuid.uuid4().hex
        self.stdout_path, self.stderr_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "rlhf.run", *args], stdout=out, stderr=err,
                                         env=_env(self.marker))

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill_actor(self, run_dir: Path, steps: int, actor: str, when: str, spare: tuple[int, ...] = ()) -> int:
        """Once ``steps`` steps are logged, SIGKILL the process of ``actor`` (not one of ``spare``) as soon as
        some process of this run is titled ``when`` (e.g. ``ray::GeneratorActor.generate``); returns its pid."""
        deadline = time.time() + DEADLINE_S
        target, watched = None, []
        while target is None or not any(_doing(pid) == when for pid in watched):
            assert self.proc.poll() is None, f"the run ended before the kill: {self.stderr[-2000:]}"
            assert time.time() < deadline, f"no step {steps} then {when} within {DEADLINE_S} s"
            if target is None and len(_steps(run_dir)) >= steps:
                pids = [p for p in _pids(self.marker, actor) if p not in spare]
                target = pids[0] if pids else None
                watched = [p for p in _pids(self.marker) if _doing(p).startswith("ray::")]
            time.sleep(0.005 if target else 0.05)
        os.kill(target, signal.SIGKILL)
        return target

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=DEADLINE_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            _end_leftovers(self.marker)


def test_a_killed_generator_is_restarted_and_no_step_is_lost(tmp_path):
    out = tmp_path / "gen"
    run = Run([*ONLINE, "--max-steps", "6", "--output-dir", str(out), "generator.max_restarts=2"], tmp_path, "gen")
    first = run.kill_actor(out, 1, "GeneratorActor", when="ray::GeneratorActor.generate")  # mid-generation
    run.kill_actor(out, 3, "GeneratorActor", when="ray::LearnerActor.train_step", spare=(first,))  # idle
    assert run.wait() == 0, run.stderr[-3000:]
    steps = _steps(out)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # every step logged once
    assert steps[-1]["actors/restarts"] == 2.0
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: GeneratorActor[0] died")]
    assert len(warnings) == 2, run.stderr[-3000:]
    assert warnings[0].startswith("warning: GeneratorActor[0] died during generate (ActorDiedError")
    assert warnings[1].startswith("warning: GeneratorActor[0] died before a weight sync (ActorDiedError")
    assert "restart 2 of generator.max_restarts=2" in warnings[1]
    assert all(r["logprob_gap/max"] < 1e-3 for r in steps)  # the new engine holds the learner's current weights
    assert (out / "model" / "model.safetensors").is_file()


def test_a_generator_past_max_restarts_stops_the_run_in_one_line(tmp_path):
    out = tmp_path / "limit"
    run = Run([*ONLINE, "--max-steps", "6", "--output-dir", str(out), "generator.max_restarts=0"], tmp_path, "limit")
    run.kill_actor(out, 1, "GeneratorActor", when="ray::GeneratorActor.generate")
    assert run.wait() == 1, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: GeneratorActor[0] died during"), last
    assert "generator.max_restarts=0 allows no more" in last
    assert "Traceback" not in run.stderr


def test_a_killed_learner_ends_the_run_with_the_resume_command(tmp_path):
    out = tmp_path / "learner"
    args = [*ONLINE, "--max-steps", "4", "--output-dir", str(out), "checkpoint.every=1"]
    run = Run(args, tmp_path, "learner")
    run.kill_actor(out, 1, "LearnerActor", when="ray::LearnerActor.train_step")
    assert run.wait() == 1, run.stderr[-3000:]
    named = [line for line in run.stderr.splitlines() if "LearnerActor" in line]
    assert len(named) == 1, run.stderr[-3000:]
    assert named[0].startswith("error: LearnerActor[rank 0]") and f"--resume {out}" in named[0], named[0]
    assert "Traceback" not in run.stderr

    resumed = Run(["--resume", str(out)], tmp_path, "resumed")  # the printed command finishes the run
    assert resumed.wait() == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in _steps(out)] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    """A reward model folder as ``--algo rm`` saves it (one step on the tiny model)."""
    out = tmp_path_factory.mktemp("rm")
    run = Run(["--algo", "rm", "--model", "tiny", "--max-steps", "1", "--output-dir", str(out / "run"),
               "data.size=24", "data.eval_size=8", "progress=false"], out, "rm")
    assert run.wait() == 0, run.stderr[-3000:]
    return out / "run" / "model"


def test_a_killed_reward_model_is_restarted_and_the_batch_rescored(reward_model, tmp_path):
    out = tmp_path / "rm_grpo"
    run = Run([*ONLINE, "--max-steps", "4", "--output-dir", str(out), "reward.functions=[]",
               f"reward.model={reward_model}"], tmp_path, "rm_grpo")
    run.kill_actor(out, 1, "RewardModelActor", when="ray::LearnerActor.train_step")  # the next score call finds it dead
    assert run.wait() == 0, run.stderr[-3000:]
    steps = _steps(out)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["reward/skipped"] == 0 for r in steps)  # the batch of the death was scored, not skipped
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: RewardModelActor")]
    assert len(warnings) == 1 and "restart 1 of generator.max_restarts=2" in warnings[0], run.stderr[-3000:]
    assert steps[-1]["actors/restarts"] == 1.0
