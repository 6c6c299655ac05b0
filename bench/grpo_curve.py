"""Learning evidence for online RL: run GRPO on the default task and plot mean reward per step.

    python bench/grpo_curve.py --max-steps 60 --output-dir runs/bench_grpo [key=value ...]

Writes ``curve.csv`` (step, mean reward, smoothed reward, elapsed seconds) and ``curve.png`` in
the output dir, and prints the starting and final mean reward (averaged over the first and last
``--window`` steps) and their ratio, measured in this one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from rlhf.config import build_config
from rlhf.run import train


def read_curve(metrics_file: Path) -> list[tuple[int, float, float]]:
    """(step, mean reward, elapsed seconds) of every rollout step in ``metrics.jsonl``."""
    rows = []
    for line in metrics_file.read_text().splitlines():
        rec = json.loads(line)
        if "reward/mean" in rec:
            rows.append((len(rows) + 1, rec["reward/mean"], rec["time"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="grpo")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--output-dir", default="runs/bench_grpo")
    p.add_argument("--window", type=int, default=5, help="steps averaged for the start and end figures")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = build_config(algo=args.algo, flags={"output_dir": args.output_dir, "train": {"max_steps": args.max_steps}},
                       overrides=args.overrides)
    out = Path(args.output_dir)
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    summary = train(cfg)
    curve = read_curve(out / "metrics.jsonl")
    w = max(1, min(args.window, len(curve) // 2 or 1))
    smooth = [sum(r for _, r, _ in curve[max(0, i - w + 1) : i + 1]) / len(curve[max(0, i - w + 1) : i + 1])
              for i in range(len(curve))]
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "reward_mean", f"reward_mean_smoothed_{w}", "elapsed_s"])
        for (step, r, t), s in zip(curve, smooth):
            writer.writerow([step, f"{r:.4f}", f"{s:.4f}", f"{t:.1f}"])
    start = sum(r for _, r, _ in curve[:w]) / w
    end = sum(r for _, r, _ in curve[-w:]) / w
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([c[0] for c in curve], [c[1] for c in curve], alpha=0.4, label="mean reward")
        ax.plot([c[0] for c in curve], smooth, label=f"moving mean ({w} steps)")
        ax.set_xlabel("rollout step")
        ax.set_ylabel("mean reward")
        ax.set_title(f"{args.algo} on {cfg.data.task} ({cfg.model.path}), {summary['wall_s']:.0f} s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "curve.png", dpi=120)
    except ImportError:
        print("matplotlib missing: curve.png not written")
    ratio = end / start if start > 0 else float("inf")
    print(f"{args.algo}: {len(curve)} steps in {summary['wall_s']:.0f} s; mean reward first {w} steps "
          f"{start:.3f}, last {w} steps {end:.3f}, ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
