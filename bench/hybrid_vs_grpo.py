"""Does a preference stage before RL pay for itself? SimPO (or SFT + SimPO) then GRPO vs GRPO alone,
at equal wall time, on the default task.

    python bench/hybrid_vs_grpo.py --schedule simpo:30,grpo:20 --out bench/results/hybrid_vs_grpo.json
    python bench/hybrid_vs_grpo.py --quick          # tiny model, a few steps: checks the plumbing

Run A is the schedule. Its wall time (process start to the end of training) sets the budget of
run B, GRPO alone on the same model, data and GRPO settings: B gets as many rollout steps as fit
in A's wall time at the GRPO step time A measured (start-up counted once). Both final models are
then scored the same way: mean reward and pass@k on held-out prompts of the task
(``python -m rlhf.eval``, the same prompts and sampling seed for both) and held-out preference
accuracy on verifier pairs. Prints and writes one JSON with both runs' figures and settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(args: list[str]) -> tuple[float, float]:
    """``python -m rlhf.run ARGS``; returns its start and end (unix seconds); fails loudly on an error."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "rlhf.run", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"rlhf.run {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return start, time.time()


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def evaluate(model: Path, data: str, limit: int, samples: int, out: Path, kind: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "rlhf.eval", "--model", str(model), "--data", data, "--limit", str(limit),
           "--output", str(out), "--kind", kind, *extra]
    if kind == "prompts":
        cmd += ["--samples", str(samples)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"rlhf.eval failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())["metrics"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--schedule", default="simpo:30,grpo:20", help="run A (the last stage must be grpo)")
    p.add_argument("--model", default="default")
    p.add_argument("--workdir", default="runs/hybrid_vs_grpo")
    p.add_argument("--out", default="bench/results/hybrid_vs_grpo.json")
    p.add_argument("--eval-limit", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="tiny model, 2+2 steps, 8 eval prompts")
    p.add_argument("overrides", nargs="*", help="key=value settings for both runs")
    a = p.parse_args(argv)
    if a.quick:
        a.schedule, a.model, a.eval_limit, a.eval_samples = "simpo:2,grpo:2", "tiny", 8, 2
        a.overrides += ["data.size=32", "data.eval_size=8", "generator.prompts_per_step=2", "generator.n=4",
                        "generator.max_tokens=8"]
    work = Path(a.workdir)
    common = ["--model", a.model, "progress=false", *a.overrides]
    hybrid, alone = work / "hybrid", work / "grpo_alone"

    start_a, end_a = run(["--schedule", a.schedule, "--output-dir", str(hybrid), *common])
    wall_a = end_a - start_a
    recs = records(hybrid)
    online = [r for r in recs if "reward/mean" in r]
    step_s = sorted(r["time/step"] for r in online)[len(online) // 2]  # median GRPO step of run A
    startup = min(r["wall"] for r in recs) - start_a  # to the first record: start-up, counted once for B too
    steps_b = max(1, round((wall_a - startup) / step_s))
    start_b, end_b = run(["--algo", "grpo", "--max-steps", str(steps_b), "--output-dir", str(alone), *common])
    wall_b = end_b - start_b

    result: dict = {"settings": {"schedule_a": a.schedule, "model": a.model, "overrides": a.overrides,
                                 "grpo_step_s_in_a": step_s, "steps_b": steps_b},
                    "runs": {}}
    for name, run_dir, wall in (("hybrid", hybrid, wall_a), ("grpo_alone", alone, wall_b)):
        rewards = [r["reward/mean"] for r in records(run_dir) if "reward/mean" in r]
        tail = rewards[-5:]
        prompts = evaluate(run_dir / "model", "rg:chain_sum", a.eval_limit, a.eval_samples,
                           work / f"{name}_prompts.json", "prompts", ["--data-seed", "12345"])
        pairs = evaluate(run_dir / "model", "rg:chain_sum", a.eval_limit, 1, work / f"{name}_pairs.json", "pairs",
                         ["--data-seed", "12345"])
        result["runs"][name] = {
            "wall_s": round(wall, 1), "rollout_steps": len(rewards),
            "train_reward_last5": sum(tail) / len(tail) if tail else None,
            "eval_mean_reward": prompts.get("reward/mean"), "eval_pass@1": prompts.get("pass@1"),
            "heldout_pair_accuracy": pairs.get("accuracy"),
        }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
