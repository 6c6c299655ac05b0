"""``MetricLogger``: JSONL and TensorBoard sinks, W&B in offline mode, resume without duplicates, NaN guard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from rlhf.config import LoggingConfig
from rlhf.metrics import MetricLogger, check_finite, truncate_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def steps_of(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_defaults_write_jsonl_and_tensorboard(tmp_path):
    with MetricLogger(tmp_path) as logger:
        logger.log(1, {"loss": 0.5, "note": "text", "reward/hist": [0.0, 1.0, 1.0]}, stage="0:simpo")
        logger.log(2, {"loss": 0.25}, stage="0:simpo")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"], r["loss"]) for r in records] == [("0:simpo", 1, 0.5), ("0:simpo", 2, 0.25)]
    assert records[0]["reward/hist"] == [0.0, 1.0, 1.0] and records[0]["note"] == "text"
    assert all(r["time"] >= 0 for r in records)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "wandb").exists()


def test_tensorboard_off(tmp_path):
    with MetricLogger(tmp_path, LoggingConfig(tensorboard=False)) as logger:
        logger.log(1, {"loss": 1.0})
        logger.log_images([])  # no W&B: nothing to do
    assert not (tmp_path / "tensorboard").exists()
    assert steps_of(tmp_path) == [1]


def test_nan_guard_names_the_metric(tmp_path):
    with pytest.raises(FloatingPointError, match="stage 's' step 3: metric loss is nan"):
        check_finite({"loss": math.nan}, "stage 's' step 3")
    with MetricLogger(tmp_path, LoggingConfig(tensorboard=False)) as logger:
        with pytest.raises(FloatingPointError, match="metric grad_norm is inf"):
            logger.log(1, {"grad_norm": math.inf})
        logger.log(2, {"grad_norm": math.inf}, check=False)  # the caller opted out
    assert steps_of(tmp_path) == [2]


def test_resume_step_drops_later_records_and_continues(tmp_path):
    cfg = LoggingConfig(tensorboard=False)
    with MetricLogger(tmp_path, cfg) as logger:
        for step in range(1, 6):
            logger.log(step, {"loss": 1.0 / step})
        logger.log(5, {"eval/accuracy": 0.5})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "", "step": 6, "ti')  # a record cut short by the crash
    last_time = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[2])["time"]
    with MetricLogger(tmp_path, cfg, {"algo": "simpo"}, resume_step=3) as logger:  # the checkpoint was at 3
        assert steps_of(tmp_path) == [1, 2, 3]
        for step in range(4, 8):
            logger.log(step, {"loss": 1.0 / step})
    assert steps_of(tmp_path) == list(range(1, 8))  # no duplicated, no missing step
    times = [json.loads(line)["time"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert times[3] >= last_time  # time goes on from the last kept record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left


def test_resume_with_tensorboard_and_without_a_file(tmp_path):
    with MetricLogger(tmp_path, resume_step=10) as logger:  # nothing to truncate yet
        logger.log(11, {"loss": 1.0})
    assert steps_of(tmp_path) == [11]
    assert truncate_metrics(tmp_path / "absent.jsonl", 3) == 0.0


def test_resume_to_zero_keeps_nothing_after_it(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time": s}) + "\n" for s in range(3)))
    assert truncate_metrics(tmp_path / "metrics.jsonl", 0) == 0
    assert steps_of(tmp_path) == [0]


@pytest.mark.timeout(180)
def test_wandb_offline_run_under_out_dir(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
                       "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    plot = tmp_path / "loss.png"
    fig = Figure()
    fig.subplots().plot([1, 2], [2, 1])
    fig.savefig(plot)
    cfg = LoggingConfig(tensorboard=False, wandb=True, wandb_project="rlhf-test", wandb_run_name="unit",
                        wandb_mode="offline")
    run_config = {"algo": "simpo", "train": {"lr": 3.5e-6}, "model": {"path": "tiny-model-xyz"}}
    with MetricLogger(out, cfg, run_config) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"loss": 1.0 / step, "reward/mean": 0.1 * step, "reward/hist": [0.0, 1.0]}, "0:grpo")
        logger.log(3, {"eval/accuracy_after": 0.75}, "0:grpo")
        logger.log_images([plot])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    (log,) = runs[0].glob("run-*.wandb")
    needles = (b"loss", b"reward/mean", b"reward/hist", b"eval/accuracy_after", b"report/loss",
               b"tiny-model-xyz", b"rlhf-test", b"unit")
    deadline = time.monotonic() + 30  # W&B's own service process writes the file; on a busy machine it lags
    while not all(n in log.read_bytes() for n in needles) and time.monotonic() < deadline:
        time.sleep(0.2)
    data = log.read_bytes()
    for needle in needles:
        assert needle in data, needle
    media = list((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert media and media[0].read_bytes()[:8] == PNG_MAGIC
    assert steps_of(out) == [1, 2, 3, 3]  # the JSONL is written as without W&B
