"""Per-phase step timings and a progress bar whose ETA covers the whole schedule.

    timer = PhaseTimer()
    with timer.phase("generate"):
        ...
    metrics.update(timer.finish())   # time/generate, ..., time/other, time/step

``time/other`` is the step's wall time outside every named phase, so the phases add up to
``time/step``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


class PhaseTimer:
    """Wall time of named phases within one step."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began

    def finish(self) -> dict[str, float]:
        """``time/<phase>`` for every phase, ``time/other`` and ``time/step`` (seconds)."""
        total = time.perf_counter() - self._start
        out = {f"time/{k}": v for k, v in self.seconds.items()}
        out["time/other"] = max(0.0, total - sum(self.seconds.values()))
        out["time/step"] = total
        return out


class ScheduleProgress:
    """Steps done over the whole schedule, for an ETA that is not just the current stage's."""

    def __init__(self, total_steps: int, done: int = 0, enabled: bool = True) -> None:
        self.total = int(total_steps)
        self.done = int(done)
        self.enabled = enabled
        self._seconds = 0.0
        self._timed = 0

    def bar(self, stage_name: str, steps: int, initial: int = 0) -> tqdm:
        return tqdm(total=steps, initial=initial, desc=stage_name, disable=not self.enabled, dynamic_ncols=True)

    def advance(self, bar: tqdm, step_seconds: float, headline: dict[str, float], phases: dict[str, float]) -> str:
        """Count one step; show ``headline`` (loss or reward), the phase split and the schedule's ETA.
        Returns the same text (for logs without a bar)."""
        self.done += 1
        self._seconds += step_seconds
        self._timed += 1
        left = max(0, self.total - self.done)
        eta = left * self._seconds / self._timed
        step = phases.get("time/step", 0.0) or 1e-9
        split = " ".join(f"{k[5:]} {100 * v / step:.0f}%" for k, v in phases.items()
                         if k not in ("time/step",) and v / step >= 0.05)
        parts = [f"{k} {v:.4g}" for k, v in headline.items()]
        text = " | ".join([*parts, split, f"run {self.done}/{self.total} eta {_clock(eta)}"])
        bar.set_postfix_str(text, refresh=False)
        bar.update(1)
        return text


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def headline(metrics: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    """The first of ``keys`` present in ``metrics`` (numbers only), for the progress bar."""
    return {k.split("/")[-1]: float(metrics[k]) for k in keys if isinstance(metrics.get(k), (int, float))}
