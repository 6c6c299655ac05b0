"""Metrics: one JSON line per step in ``metrics.jsonl`` plus TensorBoard events, and a NaN guard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricLogger:
    """Append-only metric sink under ``out_dir``: ``metrics.jsonl`` and ``tensorboard/``.

    Every record carries ``stage``, ``step`` (global optimizer step) and wall ``time``. Values
    that are not finite raise at once (``check_finite``), so a NaN loss never goes unnoticed.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.out_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        except ImportError:  # tensorboard not installed: JSONL only
            self._tb = None
        self._start = time.time()

    def log(self, step: int, metrics: dict[str, Any], stage: str = "", check: bool = True) -> None:
        """Record ``metrics`` for ``step``; numeric values also go to TensorBoard."""
        if check:
            check_finite(metrics, f"stage {stage!r} step {step}")
        record = {"stage": stage, "step": step, "time": round(time.time() - self._start, 3), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def check_finite(metrics: dict[str, Any], where: str) -> None:
    """Raise when a loss-like metric is NaN or infinite."""
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FloatingPointError(f"{where}: metric {key} is {value}; stopping (lower train.lr or check the data)")
