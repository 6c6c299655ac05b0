"""Metrics: one JSON line per step in ``metrics.jsonl``, TensorBoard and Weights & Biases, and a NaN guard.

The driver builds one logger per run::

    logger = MetricLogger(out_dir, cfg.logging, to_dict(cfg))          # a fresh run
    logger = MetricLogger(out_dir, cfg.logging, to_dict(cfg), resume_step=N)  # resumed from step N
    ...
    logger.log(step, metrics, stage_name)
    logger.log_images(report_images(out_dir))  # after rlhf.report.write_report; W&B only
    logger.close()

A number goes to every sink; a list of numbers (e.g. ``reward/hist``) goes to ``metrics.jsonl`` as
is and to TensorBoard / W&B as a histogram; anything else (strings) only to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhf.config import LoggingConfig


class MetricLogger:
    """Metric sink under ``out_dir``: ``metrics.jsonl``, ``tensorboard/`` and, when asked, ``wandb/``.

    Every record carries ``stage``, ``step`` (global optimizer step) and wall ``time``. Values
    that are not finite raise at once (``check_finite``), so a NaN loss never goes unnoticed.

    ``resume_step=N`` continues a run resumed from step ``N``: records of ``metrics.jsonl`` with
    ``step > N`` (logged after the checkpoint, before the stop) are dropped first, by rewriting the
    file atomically, so the resumed run appends without duplicated or missing steps; TensorBoard
    discards its own events past ``N`` (``purge_step``) and ``time`` continues from the last kept record.
    """

    def __init__(self, out_dir: str | Path, logging: LoggingConfig | None = None,
                 run_config: dict[str, Any] | None = None, *, resume_step: int | None = None) -> None:
        logging = logging or LoggingConfig()
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.jsonl"
        elapsed = truncate_metrics(path, resume_step) if resume_step is not None else 0.0
        self._start = time.time() - elapsed
        self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115
        self._step = resume_step or 0
        self._tb = _tensorboard(self.out_dir / "tensorboard", resume_step) if logging.tensorboard else None
        self._wandb = _wandb_run(logging, self.out_dir, run_config) if logging.wandb else None

    def log(self, step: int, metrics: dict[str, Any], stage: str = "", check: bool = True) -> None:
        """Record ``metrics`` for ``step``; numbers (and lists of numbers) also go to TensorBoard and W&B."""
        if check:
            check_finite(metrics, f"stage {stage!r} step {step}")
        now = time.time()
        record = {"stage": stage, "step": step, "time": round(now - self._start, 3), "wall": round(now, 3), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._step = max(self._step, step)
        scalars = {k: v for k, v in metrics.items() if _is_number(v)}
        lists = {k: v for k, v in metrics.items() if isinstance(v, (list, tuple)) and v and all(map(_is_number, v))}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
            for key, values in lists.items():
                self._tb.add_histogram(key, _array(values), step)
            self._tb.flush()
        if self._wandb is not None:
            import wandb

            hists = {k: wandb.Histogram(v) for k, v in lists.items()}
            self._wandb.log({**scalars, **hists}, step=step)

    def log_images(self, paths: Iterable[str | Path]) -> None:
        """Upload PNG plots (e.g. the report's) to W&B as ``report/<file stem>``; nothing without W&B."""
        if self._wandb is None:
            return
        import wandb

        images = {f"report/{Path(p).stem}": wandb.Image(str(p)) for p in paths}
        if images:
            self._wandb.log(images, step=self._step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def truncate_metrics(path: str | Path, step: int) -> float:
    """Keep only the records of ``path`` with ``step <= step`` (atomic rewrite); return the last kept ``time``.

    A line that does not parse (a record cut short by a crash) is dropped too.
    """
    path = Path(path)
    if not path.is_file():
        return 0.0
    kept, last_time = [], 0.0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
            last_time = float(record.get("time", last_time))
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".jsonl", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return last_time


def check_finite(metrics: dict[str, Any], where: str) -> None:
    """Raise when a loss-like metric is NaN or infinite."""
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FloatingPointError(f"{where}: metric {key} is {value}; stopping (lower train.lr or check the data)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _array(values: list) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.float64)


def _tensorboard(log_dir: Path, resume_step: int | None) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL only
        return None
    purge = resume_step + 1 if resume_step is not None else None  # TensorBoard hides older events past it
    return SummaryWriter(str(log_dir), purge_step=purge)


def _wandb_run(logging: LoggingConfig, out_dir: Path, run_config: dict[str, Any] | None) -> Any:
    try:
        import wandb
    except ImportError:
        raise RuntimeError("logging.wandb=true needs the wandb package (pip install wandb)") from None
    return wandb.init(project=logging.wandb_project, name=logging.wandb_run_name, mode=logging.wandb_mode,
                      dir=str(out_dir), config=run_config or {})
