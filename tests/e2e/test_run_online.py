"""End to end online RL: real vLLM generators, real DeepSpeed learners, on the tiny model."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce_pp"])
def test_online_algo_two_steps(algo, tiny_model, tmp_path, run_cli):
    out = tmp_path / algo
    proc = run_cli("--algo", algo, "--max-steps", "2", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=16", "generator.prompts_per_step=4", "generator.n=4", "generator.max_tokens=8",
                   "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r for r in records(out) if "reward/mean" in r]
    assert len(steps) == 2
    for r in steps:
        for key in ("sync/seconds", "sync/bytes", "logprob_gap/mean", "logprob_gap/max", "loss", "samples/dropped"):
            assert key in r, key
        assert r["sync/bytes"] > 0
        # the transport's phases (one node, CPU: shared memory), each inside the whole sync
        assert 0 < r["sync/write"] < r["sync/seconds"] and 0 < r["sync/update"] <= r["sync/load"] < r["sync/seconds"]
        assert r["logprob_gap/max"] < 1e-3  # vLLM samples from exactly the learner's weights
    summary = json.loads((out / "summary.json").read_text())
    assert summary["actors"]["generators"] == 1
    assert summary["actors"]["reference"] == (1 if algo == "reinforce_pp" else 0)  # KL on by default there only
    assert (out / "model" / "model.safetensors").exists()


def test_two_engines_two_learners_zero3_object_store(tiny_model, tmp_path, run_cli):
    out = tmp_path / "grpo2x2"
    proc = run_cli("--algo", "grpo", "--max-steps", "2", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=16", "generator.num_engines=2", "train.num_learners=2", "train.zero_stage=3",
                   "generator.prompts_per_step=4", "generator.n=4", "generator.max_tokens=8",
                   "generator.sync=object_store", "train.epochs=2", "train.mini_batches=2", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r for r in records(out) if "reward/mean" in r]
    assert len(steps) == 2 and all(r["logprob_gap/max"] < 1e-3 for r in steps)
    assert [r["policy_version"] for r in steps] == [4.0, 8.0]  # 2 epochs x 2 mini-batches per rollout
    assert json.loads((out / "summary.json").read_text())["actors"] == {
        "learners": 2, "reference": 0, "generators": 2, "reward_model": 0}


def test_schedule_sft_simpo_grpo_on_live_actors(tiny_model, tmp_path, run_cli):
    out = tmp_path / "sched"
    proc = run_cli("--schedule", "sft:2,simpo:2,grpo:2", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=24", "data.eval_size=8", "generator.prompts_per_step=4", "generator.n=4",
                   "generator.max_tokens=8", "checkpoint.keep=5", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(out)
    assert [r["stage"] for r in recs if "loss" in r] == ["0:sft"] * 2 + ["1:simpo"] * 2 + ["2:grpo"] * 2
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4, 5, 6]
    # a complete checkpoint at every stage boundary (and at the end)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]
    assert all((out / "checkpoints" / f"step-{n}" / "COMPLETE").is_file() for n in (2, 4, 6))
    summary = json.loads((out / "summary.json").read_text())
    assert [s["algo"] for s in summary["stages"]] == ["sft", "simpo", "grpo"]
    first_online = next(r for r in recs if r["stage"] == "2:grpo" and "reward/mean" in r)
    assert first_online["sync/bytes"] > 0  # the SimPO-trained weights reached the generators first
    assert first_online["logprob_gap/max"] < 1e-3


def test_reward_model_as_reward(tiny_model, tmp_path, run_cli):
    rm_out = tmp_path / "rm"
    proc = run_cli("--algo", "rm", "--max-steps", "1", "--output-dir", str(rm_out), "--model", tiny_model,
                   "data.size=24", "data.eval_size=8", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "grpo_rm"
    proc = run_cli("--algo", "grpo", "--max-steps", "1", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=8", "generator.prompts_per_step=4", "generator.n=2", "generator.max_tokens=8",
                   "reward.functions=[]", f"reward.model={rm_out / 'model'}", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = next(r for r in records(out) if "reward/mean" in r)
    assert step["reward/std"] > 0  # scores from a model, not a 0/1 verifier
    assert json.loads((out / "summary.json").read_text())["actors"]["reward_model"] == 1


def test_generation_ahead_is_at_most_one_version_stale_and_logs_is_weights(tiny_model, tmp_path, run_cli):
    out = tmp_path / "ahead"
    proc = run_cli("--algo", "grpo", "--max-steps", "3", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=16", "generator.prompts_per_step=2", "generator.n=4", "generator.max_tokens=8",
                   "train.max_staleness=1", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r for r in records(out) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["staleness/max"] for r in steps] == [0.0, 1.0, 1.0]  # step 1 samples the initial policy
    assert "is/mean" not in steps[0]
    for r in steps[1:]:
        assert 0.0 < r["is/mean"] <= 2.0 and r["is/max"] > 0.0 and 0.0 <= r["is/truncated"] <= 1.0


def test_generators_are_released_when_no_later_stage_needs_them(tiny_model, tmp_path, run_cli):
    out = tmp_path / "release"
    proc = run_cli("--schedule", "grpo:1,simpo:1", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=24", "data.eval_size=8", "generator.prompts_per_step=2", "generator.n=2",
                   "generator.max_tokens=8", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "released the generators: no later stage needs them" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["actors"]["generators"] == 1  # started once, ended after the GRPO stage
    assert [p["role"] for p in summary["placement"]] == ["learner"]


def test_online_eval_every_scores_held_out_prompts(tiny_model, tmp_path, run_cli):
    out = tmp_path / "eval"
    proc = run_cli("--algo", "grpo", "--max-steps", "2", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=16", "data.eval_size=4", "eval_every=1", "generator.prompts_per_step=2",
                   "generator.n=2", "generator.max_tokens=8", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r for r in records(out) if "reward/mean" in r]
    for r in steps:  # the same scoring code as python -m rlhf.eval
        assert r["eval/prompts"] == 4 and 0.0 <= r["eval/pass@1"] <= r["eval/pass@2"] <= 1.0
        assert "eval/reward/mean" in r and r["time/eval"] > 0
    assert (out / "report.md").is_file()
