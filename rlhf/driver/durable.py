"""What a stage loop shares with the run around it: checkpoints, the progress bar, bad-step counting.

A ``StageRun`` is handed to each stage loop. After every step the loop calls ``step_done`` with
its metrics and its data position; that logs the step, counts non-finite (skipped) steps, and
writes a checkpoint every ``checkpoint.every`` steps. ``stage_done`` writes one at the end of the
stage. A checkpoint (``rlhf.checkpoint``) holds the learners' DeepSpeed state and RNG per rank,
the driver's RNG and a ``RunState`` (global step, policy version, stage and step within it, the
data position, the last metrics step), written atomically with a ``COMPLETE`` marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.checkpoint import RunState, atomic_dir, checkpoint_path, prune, save_rng, save_state
from rlhf.driver.progress import ScheduleProgress

SKIPPED_KEYS = ("skipped", "skip_reason", "lr")  # what a skipped step logs (besides its timings)
LEARNER_TAG = "learner"  # DeepSpeed's checkpoint tag inside a checkpoint folder


class BadStepsError(FloatingPointError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


@dataclass
class StageRun:
    """One stage's view of the run: where it is, and what to do after each step."""

    index: int
    name: str
    out_dir: Path
    every: int
    keep: int
    max_bad_steps: int
    progress: ScheduleProgress
    logger: Any
    resume: RunState | None = None  # set when this stage continues from a checkpoint
    stage_step: int = 0
    bad_steps: int = 0
    last_checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> int:
        """Steps of this stage already done (from the checkpoint being resumed, else 0)."""
        if self.resume is not None and self.resume.stage_index == self.index:
            self.stage_step = self.resume.stage_step
            self.bad_steps = self.resume.bad_steps
        return self.stage_step

    def step_done(self, session: Any, metrics: dict[str, Any], data_position: dict[str, Any]) -> None:
        """Log one step; count a skipped (non-finite) step; checkpoint when due."""
        self.stage_step += 1
        session.steps += 1
        if metrics.get("skipped"):
            self.bad_steps += 1
            metrics = {k: v for k, v in metrics.items() if k in SKIPPED_KEYS or k.startswith("time/")}
            metrics["bad_steps"] = float(self.bad_steps)
        else:
            self.bad_steps = 0
        self.logger.log(session.steps, metrics, self.name)
        if self.bad_steps >= self.max_bad_steps:
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise BadStepsError(
                f"[{self.name}] {self.bad_steps} steps in a row had a non-finite loss or gradient and were skipped "
                f"(train.max_bad_steps={self.max_bad_steps}){where}; lower train.lr or check the data"
            )
        if self.every and session.steps % self.every == 0 and not self.bad_steps:
            self.save(session, data_position)

    def save(self, session: Any, data_position: dict[str, Any]) -> Path:
        """Write a complete checkpoint of the run as it is now (once per step)."""
        final = checkpoint_path(self.out_dir, session.steps)
        if self.last_checkpoint == final:
            return final
        state = RunState(global_step=session.steps, stage_index=self.index, stage_step=self.stage_step,
                         stage_name=self.name, data_position=data_position, metrics_step=session.steps,
                         bad_steps=self.bad_steps, extra={"version": session.version, **self.extra})
        with atomic_dir(final, step=session.steps) as tmp:
            session.learners.save_checkpoint(str(tmp), LEARNER_TAG)
            save_rng(tmp, "driver")
            save_state(tmp, state)
        prune(self.out_dir, self.keep)
        self.last_checkpoint = final
        return final
