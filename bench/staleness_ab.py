"""Generation ahead of training against the synchronous online step, measured side by side.

    python bench/staleness_ab.py [--repeats 3] [--steps 8] [--algo grpo] [key=value ...]

Runs ``python -m rlhf.run --algo ALGO`` (its shipped config, the embedded default model and task)
with ``train.max_staleness=0`` (each step generates after the previous update) and
``train.max_staleness=1`` (the next step's samples are generated while this step trains), each in
its own process, alternating which goes first. The figure is the median wall time between
consecutive steps (first two steps excluded: warm-up, and the ahead run's first step has nothing to
overlap), with min / median / max over repeats, and the training phase's seconds per step. Prints
``ahead_vs_sync_step_time_ratio`` (ahead / sync; below 1.0 means generating ahead wins) and writes
the same as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def step_figures(metrics_file: Path) -> dict[str, float]:
    """Median step interval (wall clock between consecutive steps) and medians of the step's phases,
    over the rollout steps after the first two."""
    recs = [json.loads(line) for line in metrics_file.read_text().splitlines() if '"time/step"' in line]
    walls = [r["wall"] for r in recs]
    gaps = [b - a for a, b in zip(walls, walls[1:])][1:]
    later = recs[2:]
    if not gaps or not later:
        raise RuntimeError(f"{metrics_file}: {len(recs)} steps logged; need at least 3")
    return {
        "interval_s": statistics.median(gaps),
        "train_s": statistics.median(r["time/train"] for r in later),
        "generate_wait_s": statistics.median(r.get("time/generate", 0.0) for r in later),
        "staleness_max": max(r.get("staleness/max", 0.0) for r in recs),
        "response_length": statistics.median(r["response/length"] for r in later),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="grpo")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--work-dir", default="runs/bench_staleness")
    p.add_argument("--out", default="bench/results/staleness_ab.json")
    p.add_argument("overrides", nargs="*", help="key=value for both runs")
    a = p.parse_args(argv)
    if a.steps < 4:
        p.error("--steps must be >= 4 (two warm-up steps are excluded)")
    work = Path(a.work_dir) / time.strftime("%Y%m%d-%H%M%S")
    runs: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    for rep in range(a.repeats):
        for lag in ((0, 1) if rep % 2 == 0 else (1, 0)):
            out = work / f"r{rep}_staleness{lag}"
            cmd = [sys.executable, "-m", "rlhf.run", "--algo", a.algo, "--output-dir", str(out),
                   "--max-steps", str(a.steps), f"train.max_staleness={lag}", "progress=false", *a.overrides]
            log = work / f"r{rep}_staleness{lag}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
            if rc != 0:
                print(f"run failed (exit {rc}): {' '.join(cmd)}; see {log}", file=sys.stderr)
                return 1
            fig = step_figures(out / "metrics.jsonl")
            runs[lag].append(fig)
            for heavy in ("model", "checkpoints"):  # only the metrics are read
                shutil.rmtree(out / heavy, ignore_errors=True)
            print(f"repeat {rep} staleness {lag}: step interval {fig['interval_s']:.2f} s, "
                  f"train {fig['train_s']:.2f} s, waiting for generation {fig['generate_wait_s']:.2f} s", flush=True)
    ratios = [b["interval_s"] / s["interval_s"] for s, b in zip(runs[0], runs[1])]
    result = {
        "ahead_vs_sync_step_time_ratio": statistics.median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios),
        "sync": runs[0], "ahead": runs[1],
        "settings": {"algo": a.algo, "steps": a.steps, "repeats": a.repeats, "overrides": a.overrides,
                     "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    for name, figs in (("sync (max_staleness=0)", runs[0]), ("ahead (max_staleness=1)", runs[1])):
        iv = [f["interval_s"] for f in figs]
        tr = [f["train_s"] for f in figs]
        print(f"{name:<24} step interval min {min(iv):.2f} median {statistics.median(iv):.2f} s; "
              f"train median {statistics.median(tr):.2f} s")
    print(f"ahead_vs_sync_step_time_ratio {result['ahead_vs_sync_step_time_ratio']:.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
