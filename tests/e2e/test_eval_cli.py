"""``python -m rlhf.eval`` end to end on the tiny model: pass@k on a task, accuracy on pairs, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlhf.passk import pass_at_k

pytestmark = pytest.mark.e2e

PAIRS = [
    {"prompt": "What is 2 + 3?", "chosen": " 5", "rejected": " 6 seven eight"},
    {"prompt": "What is 4 + 4?", "chosen": " 8 is the answer", "rejected": " 9"},
    {"prompt": "State the sum: 1 + 1", "chosen": " 2", "rejected": " 3"},
    {"prompt": "What is 10 - 7?", "chosen": " 3", "rejected": " three hundred"},
]


def run_eval(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rlhf.eval", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return str(path)


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory) -> str:
    """A 1-label sequence classifier on the tiny model, saved like ``--algo rm`` saves one."""
    import torch

    from actors.model_io import copy_tokenizer, load_model
    from rlhf.models import save_model

    out = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    save_model(load_model(tiny_model, score_head=True), out)
    copy_tokenizer(tiny_model, out)
    return str(out)


def test_task_prompts_report_reward_and_pass_at_k(tmp_path):
    out = tmp_path / "E.json"
    proc = run_eval("--model", "tiny", "--data", "rg:chain_sum", "--limit", "4", "--samples", "2",
                    "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pass@2" in proc.stdout and "reward/mean" in proc.stdout
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert {k: settings[k] for k in ("model", "data", "limit", "samples", "temperature", "seed", "threshold")} == {
        "model": "tiny", "data": "rg:chain_sum", "limit": 4, "samples": 2, "temperature": 1.0, "seed": 0,
        "threshold": 1.0}
    metrics = report["metrics"]
    for key in ("reward/mean", "pass@1", "pass@2", "prompts", "samples", "response/length"):
        assert key in metrics, key
    assert metrics["prompts"] == 4 and metrics["samples"] == 8
    per_prompt = report["per_prompt"]
    assert len(per_prompt) == 4 and all(p["n"] == 2 and len(p["completions"]) == 2 for p in per_prompt)
    for k in (1, 2):  # the reported numbers follow from the per-prompt counts
        assert metrics[f"pass@{k}"] == pytest.approx(sum(pass_at_k(2, p["correct"], k) for p in per_prompt) / 4)
    rewards = [r for p in per_prompt for r in p["rewards"]]
    assert metrics["reward/mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert report["timing"]["wall_s"] > 0


def test_pairs_accuracy_from_the_implicit_reward(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "P.json"
    proc = run_eval("--model", tiny_model, "--data", pairs_file, "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["kind"] == "pairs" and report["settings"]["scorer"] == "simpo"
    assert report["metrics"]["pairs"] == len(PAIRS) and 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert "accuracy" in proc.stdout

    # DPO's reward with the policy itself as reference is 0 everywhere: every pair ties, half right
    proc = run_eval("--model", tiny_model, "--data", pairs_file, "--reference", tiny_model, "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["scorer"] == "dpo"
    assert report["metrics"] == {"accuracy": 0.5, "margin": 0.0, "pairs": float(len(PAIRS))}


def test_pairs_accuracy_from_a_reward_model(reward_model, pairs_file, tmp_path):
    from actors.reward_model import RewardModelActor

    out = tmp_path / "R.json"
    proc = run_eval("--data", pairs_file, "--reward-model", reward_model, "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["scorer"] == "rm"
    scorer = RewardModelActor({"model_path": reward_model})
    chosen = scorer.score([r["prompt"] for r in PAIRS], [r["chosen"] for r in PAIRS])
    rejected = scorer.score([r["prompt"] for r in PAIRS], [r["rejected"] for r in PAIRS])
    expected = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)) / len(PAIRS)
    assert report["metrics"]["accuracy"] == pytest.approx(expected)


def test_reward_model_scores_generated_samples_in_process(reward_model, tiny_model):
    from actors.reward_model import RewardModelActor
    from rlhf.eval import local_reward_model
    from rlhf.passk import score_generations

    rows = [{"prompt": "What is 2 + 3?"}, {"prompt": "What is 4 + 4?"}]
    samples = [[" 5", " six"], [" 8", " 9"]]
    scores = RewardModelActor({"model_path": reward_model}).score(
        [r["prompt"] for r in rows for _ in range(2)], [s for group in samples for s in group])
    threshold = sorted(scores)[2]  # the two best samples are "correct"
    out = score_generations(samples, rows, [{"name": "reward_model", "fn": local_reward_model(reward_model, "cpu")}],
                            threshold=threshold, details=True)
    assert [r for p in out["per_prompt"] for r in p["rewards"]] == pytest.approx(scores, abs=1e-5)
    assert out["correct/fraction"] == 0.5


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "/nonexistent/model", "--data", "rg:chain_sum"], "no such folder"),
        (["--model", "tiny", "--data", "rg:no_such_task"], "unknown reasoning-gym task"),
        (["--model", "tiny", "--data", "{missing}"], "does not exist"),
        (["--model", "tiny", "--data", "{bad}"], "not valid JSON"),
        (["--model", "tiny", "--data", "rg:chain_sum", "--temperature", "0", "--samples", "2"], "greedy"),
        (["--model", "tiny", "--data", "rg:chain_sum", "--reward", "no_such_reward"], "unknown reward"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, words, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "1"}\n{not json\n')
    args = [a.format(missing=tmp_path / "missing.jsonl", bad=bad) for a in args]
    proc = run_eval(*args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and words in lines[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
