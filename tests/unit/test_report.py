"""``rlhf.report`` renders from synthetic run folders: offline, online, a two-stage schedule, a bare one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf.report import load_records, main, report_images, stage_results, write_report
from rlhf.report_plots import stage_boundaries

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def offline_records(stage: str = "0:simpo", start: int = 0, steps: int = 6) -> list[dict]:
    records = [{"stage": stage, "step": start, "time": 0.5, "eval/accuracy_before": 0.5, "eval/pairs": 8}]
    for i in range(1, steps + 1):
        records.append({"stage": stage, "step": start + i, "time": float(start + i), "loss": 1.0 / i,
                        "rewards/accuracy": 0.5 + i / 20, "rewards/chosen": 0.1 * i, "rewards/rejected": -0.1 * i,
                        "grad_norm": 2.0 / i, "lr": 1e-5, "length/chosen": 12.0, "length/rejected": 14.0,
                        "length/prompt": 40.0, "time/data": 0.1, "time/train": 1.0})
        if i % 3 == 0:
            records.append({"stage": stage, "step": start + i, "time": start + i + 0.2, "eval/accuracy": 0.5 + i / 30,
                            "time/eval": 0.3})
    records.append({"stage": stage, "step": start + steps, "time": start + steps + 0.5, "eval/accuracy_after": 0.75})
    return records


def online_records(stage: str = "0:grpo", start: int = 0, steps: int = 5, hist: bool = False) -> list[dict]:
    records = []
    for i in range(1, steps + 1):
        record = {"stage": stage, "step": start + i, "time": float(start + i), "loss": 0.01 * i, "pg_loss": 0.01 * i,
                  "reward/mean": 0.1 * i, "reward/std": 0.2, "kl": 1e-3 * i, "logprob_gap/mean": 1e-3,
                  "logprob_gap/max": 2e-2, "response/length": 10.0 + i, "lr": 2e-6, "grad_norm": 1.0,
                  "time/generate": 1.0, "time/reward": 0.1, "time/old_logps": 0.5, "time/train": 2.0,
                  "time/sync": 0.4, "time/other": 0.1, "time/custom_phase": 0.05}
        if hist:
            record["reward/hist"] = [0.0, 1.0, 0.5, float(i % 2)]
        records.append(record)
    return records


def make_run(path: Path, records: list[dict], config: dict | None = None, summary: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def referenced_images(report: Path) -> list[Path]:
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    return [report.parent / n for n in names]


def assert_valid_report(report: Path, expected: set[str]) -> str:
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert all(not Path(n).is_absolute() for n in names)  # relative to report.md
    images = referenced_images(report)
    assert {p.stem for p in images} == expected
    for image in images:
        assert image.read_bytes()[:8] == PNG_MAGIC, image
        assert image.stat().st_size > 1000
    return report.read_text()


ALL = {"loss", "accuracy_reward", "reward_distribution", "kl", "length", "lr", "time"}


def test_offline_report(tmp_path):
    summary = {"stages": [{"stage": "0:simpo", "algo": "simpo", "steps": 6, "accuracy_before": 0.5,
                           "accuracy_after": 0.75, "last": {}}], "wall_s": 125.0,
               "output_dir": str(tmp_path), "model": str(tmp_path / "model"), "actors": {}}
    config = {"algo": "simpo", "model": {"path": "tiny"}, "data": {"train": "default", "task": "chain_sum"}}
    run = make_run(tmp_path / "run", offline_records(), config, summary)
    report = write_report(run)
    assert report == run / "report.md"
    text = assert_valid_report(report, ALL - {"kl"})  # no KL or log-prob gap offline
    for cell in ("`tiny`", "reasoning-gym `chain_sum`", "| algorithm | simpo |", "| steps | 6 |", "2 min 5 s",
                 "held-out accuracy 0.500 -> 0.750", str(tmp_path / "model")):
        assert cell in text, cell
    assert "Dashed lines" not in text  # one stage: no boundaries


def test_online_report_without_summary_or_config(tmp_path):
    run = make_run(tmp_path / "run", online_records(hist=True))
    text = assert_valid_report(write_report(run), ALL)
    assert "mean reward 0.100 -> 0.500" in text  # first -> last, read from the metrics
    assert "| algorithm | grpo |" in text and "| steps | 5 |" in text
    assert "not saved" in text and "(to the last metric)" in text


def test_two_stage_schedule_marks_boundaries(tmp_path):
    records = offline_records("0:simpo", 0, 6) + online_records("1:grpo", 6, 4)
    config = {"algo": "simpo", "model": {"path": "default"}, "data": {"train": "pairs.jsonl"},
              "stages": [{"algo": "simpo", "steps": 6}, {"algo": "grpo", "steps": 4}]}
    run = make_run(tmp_path / "run", records, config)
    text = assert_valid_report(write_report(run), ALL)
    assert "| algorithm | simpo -> grpo |" in text and "| steps | 10 (6, 4) |" in text
    assert "| 0:simpo | held-out accuracy 0.500 -> 0.750 |" in text
    assert "| 1:grpo | mean reward 0.100 -> 0.400" in text
    assert "Dashed lines" in text
    # stage 1 starts half a step after stage 0's last step
    assert stage_boundaries(records) == [(0, "0:simpo"), (6.5, "1:grpo")]


def test_only_plots_with_data_are_made_and_stale_ones_removed(tmp_path):
    run = make_run(tmp_path / "run", online_records())
    write_report(run)
    assert (run / "report" / "kl.png").is_file()
    make_run(run, [{"stage": "0:x", "step": 1, "time": 1.0, "loss": 0.5}, {"stage": "0:x", "step": 2, "loss": 0.4}])
    text = assert_valid_report(write_report(run), {"loss"})
    assert not (run / "report" / "kl.png").exists()
    assert report_images(run) == [run / "report" / "loss.png"]
    assert "## Loss" in text and "## KL" not in text


def test_empty_metrics_and_cut_last_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert referenced_images(write_report(run)) == []
    (run / "metrics.jsonl").write_text(json.dumps({"stage": "s", "step": 1, "loss": 1.0}) + "\n{\"stage\": \"s\", \"st")
    assert len(load_records(run / "metrics.jsonl")) == 1


def test_stage_results_prefers_summary(tmp_path):
    summary = {"stages": [{"stage": "0:dpo", "algo": "dpo", "steps": 3, "accuracy_before": 0.1, "accuracy_after": 0.2}]}
    assert stage_results(offline_records(), summary) == summary["stages"]
    derived = stage_results(offline_records("0:simpo", 0, 6) + online_records("1:grpo", 6, 2), {})
    assert [(s["stage"], s["algo"], s["steps"]) for s in derived] == [("0:simpo", "simpo", 6), ("1:grpo", "grpo", 2)]


def test_main_errors_in_one_line_without_metrics(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path} has no metrics.jsonl"


@pytest.mark.timeout(120)
def test_cli_subprocess(tmp_path):
    run = make_run(tmp_path / "run", offline_records())
    ok = subprocess.run([sys.executable, "-m", "rlhf.report", str(run)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "report.md" in ok.stdout and (run / "report.md").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([sys.executable, "-m", "rlhf.report", str(empty)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no metrics.jsonl" in bad.stderr
