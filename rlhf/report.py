"""A Markdown report of a run folder, with PNG plots beside it.

    python -m rlhf.report runs/simpo        # writes runs/simpo/report.md and runs/simpo/report/*.png

The report opens with a table (model, data, algorithm(s), steps, wall time, each stage's
before -> after result, where the model is), read from ``config.yaml``, ``summary.json`` and
``metrics.jsonl``; any of them but ``metrics.jsonl`` may be missing (a run stopped early). Then one
section per plot that has data (``rlhf.report_plots.PLOTS``): loss, held-out accuracy and reward,
reward distribution, KL and log-prob gap, lengths, learning rate, time per step per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

PLOT_DIR = "report"  # the plots go to <run_dir>/report/


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; lines that do not parse (a record cut by a crash) are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def _read(path: Path, loader: Any) -> dict[str, Any]:
    try:
        data = loader(path.read_text()) if path.is_file() else {}
    except (ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_results(records: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage: name, algo, steps and before/after, from ``summary.json`` or else the metrics."""
    if summary.get("stages"):
        return [s for s in summary["stages"] if isinstance(s, dict)]
    stages: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        stages.setdefault(str(r.get("stage", "")), []).append(r)
    out, previous_end = [], 0
    for name, rs in stages.items():
        end = max(r["step"] for r in rs)
        result: dict[str, Any] = {"stage": name, "algo": name.partition(":")[2] or name, "steps": end - previous_end}
        previous_end = end
        before = [r["eval/accuracy_before"] for r in rs if "eval/accuracy_before" in r]
        after = [r["eval/accuracy_after"] for r in rs if "eval/accuracy_after" in r]
        rewards = [r["reward/mean"] for r in rs if "reward/mean" in r]
        if before and after:
            result.update(accuracy_before=before[0], accuracy_after=after[-1])
        elif rewards:
            result.update(reward_first=rewards[0], reward_last=rewards[-1])
        out.append(result)
    return out


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def _wall(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def summary_table(run_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    """The report's opening table, as Markdown lines."""
    config = _read(run_dir / "config.yaml", yaml.safe_load)
    summary = _read(run_dir / "summary.json", json.loads)
    stages = stage_results(records, summary)
    model = (config.get("model") or {}).get("path", "?")
    data = config.get("data") or {}
    data_text = f"`{data.get('train', '?')}`"
    if data.get("train") == "default" and data.get("task"):
        data_text += f" (reasoning-gym `{data['task']}`)"
    algos = " -> ".join(str(s.get("algo", "?")) for s in stages) or str(config.get("algo", "?"))
    steps = [int(s.get("steps", 0)) for s in stages]
    steps_text = str(sum(steps)) + (f" ({', '.join(str(n) for n in steps)})" if len(steps) > 1 else "")
    wall = summary.get("wall_s", max((r.get("time", 0.0) for r in records), default=0.0))
    saved = summary.get("model") or (str(run_dir / "model") if (run_dir / "model").is_dir() else "not saved")
    rows = [("model", f"`{model}`"), ("data", data_text), ("algorithm", algos), ("steps", steps_text),
            ("wall time", _wall(float(wall)) + ("" if "wall_s" in summary else " (to the last metric)"))]
    for s in stages:
        name = s.get("stage", s.get("algo", "?"))
        if "accuracy_before" in s:
            rows.append((name, f"held-out accuracy {_fmt(s['accuracy_before'])} -> {_fmt(s.get('accuracy_after'))}"))
        elif "reward_first" in s:
            rows.append((name, f"mean reward {_fmt(s['reward_first'])} -> {_fmt(s.get('reward_last'))} "
                               "(first -> last step)"))
    rows.append(("saved model", f"`{saved}`"))
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` and its plots under ``run_dir/report/``; return the Markdown's path."""
    from rlhf.report_plots import PLOTS, stage_boundaries

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl")
    records = load_records(metrics)
    boundaries = stage_boundaries(records)
    plot_dir = run_dir / PLOT_DIR
    plot_dir.mkdir(exist_ok=True)
    lines = [f"# Run report: {run_dir.resolve().name}", "", *summary_table(run_dir, records), ""]
    if boundaries:
        lines += ["Dashed lines in the plots mark where each stage of the schedule starts.", ""]
    for stem, title, caption, plot in PLOTS:
        target = plot_dir / f"{stem}.png"
        fig = plot(records, boundaries)
        if fig is None:
            target.unlink(missing_ok=True)  # a stale plot of an earlier report
            continue
        fig.savefig(target, dpi=100)
        lines += [f"## {title}", "", f"![{title}]({PLOT_DIR}/{stem}.png)", "", caption, ""]
    if not records:
        lines += ["`metrics.jsonl` holds no records yet: no plots.", ""]
    out = run_dir / "report.md"
    _write_atomic(out, "\n".join(lines))
    return out


def report_images(run_dir: str | Path) -> list[Path]:
    """The PNG plots of the report in ``run_dir`` (for ``MetricLogger.log_images``)."""
    return sorted((Path(run_dir) / PLOT_DIR).glob("*.png"))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".md", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="DIR", help="a run's --output-dir (holds metrics.jsonl)")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.run_dir)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {out} ({len(report_images(args.run_dir))} plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
