"""End to end: ``python -m rlhf.run --algo X --max-steps 2`` on the tiny model, in a subprocess."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("algo", ["simpo", "dpo", "kto", "rm"])
def test_offline_algo_runs_and_saves_a_loadable_model(algo, tiny_model, tmp_path, run_cli):
    out = tmp_path / algo
    proc = run_cli("--algo", algo, "--max-steps", "2", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=48", "data.eval_size=8", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out preference accuracy before" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["actors"]["reference"] == (1 if algo in ("dpo", "kto") else 0)
    assert summary["actors"]["generators"] == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    if algo == "rm":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(out / "model")
        assert model.config.num_labels == 1
    else:
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(out / "model")


def test_lora_bf16_zero2_saves_merged_and_adapter(tiny_model, tmp_path, run_cli):
    out = tmp_path / "lora"
    proc = run_cli("--algo", "simpo", "--max-steps", "2", "--output-dir", str(out), "--model", tiny_model,
                   "data.size=24", "data.eval_size=8", "model.lora_r=4", "model.dtype=bfloat16",
                   "train.zero_stage=2", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model" / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_bad_config_key_is_one_line_error(run_cli):
    proc = run_cli("--algo", "simpo", "train.lrr=1", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lrr" in lines[0] and "valid:" in lines[0]


def test_unknown_algo_lists_valid_names(run_cli):
    proc = run_cli("--algo", "ppo2", timeout=120)
    assert proc.returncode == 2 and "valid: dpo, grpo" in proc.stderr


def test_malformed_data_row_names_file_row_field(tmp_path, tiny_model, run_cli):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    proc = run_cli("--algo", "simpo", "--model", tiny_model, "--data", str(bad), "--max-steps", "1",
                   "--output-dir", str(tmp_path / "o"), timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "pairs.jsonl" in last and "row 1" in last and "rejected" in last
    assert "Traceback" not in proc.stderr


def test_imported_objective_trains_in_the_learner_actors(tiny_model, tmp_path, run_cli):
    """`--import examples.custom_objective --algo slic`: the Objective record reaches the learners."""
    out = tmp_path / "slic"
    proc = run_cli("--import", "examples.custom_objective", "--algo", "slic", "--max-steps", "2", "--output-dir",
                   str(out), "--model", tiny_model, "data.size=48", "data.eval_size=8", "progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all("rewards/accuracy" in r for r in steps)
    from safetensors.torch import load_file

    before, after = load_file(f"{tiny_model}/model.safetensors"), load_file(str(out / "model" / "model.safetensors"))
    assert any(not before[k].equal(after[k]) for k in before), "the slic loss moved the learners' weights"


CUSTOM_CODE = '''from transformers import LlamaConfig, LlamaForCausalLM


class CustomLlamaConfig(LlamaConfig):
    model_type = "custom_llama"


class CustomLlamaForCausalLM(LlamaForCausalLM):
    config_class = CustomLlamaConfig
'''


def test_a_model_that_ships_its_code_trains_with_trust_remote_code(tiny_model, tmp_path, run_cli):
    """model.trust_remote_code reaches every process that loads the model: the driver's tokenizer,
    the learner and the separate reference actor of DPO (transformers knows no ``custom_llama``)."""
    import shutil

    model = tmp_path / "custom-model"
    shutil.copytree(tiny_model, model)
    (model / "modeling_custom.py").write_text(CUSTOM_CODE)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="custom_llama", architectures=["CustomLlamaForCausalLM"],
                  auto_map={"AutoConfig": "modeling_custom.CustomLlamaConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomLlamaForCausalLM"})
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    args = ("--algo", "dpo", "--max-steps", "1", "--output-dir", str(out), "--model", str(model),
            "data.size=16", "data.eval_size=4", "progress=false")
    refused = run_cli(*args, timeout=120)
    assert refused.returncode == 2 and "model.trust_remote_code=true" in refused.stderr
    proc = run_cli(*args, "model.trust_remote_code=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["actors"]["reference"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1]
