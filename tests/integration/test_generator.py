"""GeneratorActor through Ray on the tiny Llama: shapes, log-probs equal to transformers', stops, seeding."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

TIMEOUT = 180
TEXTS = ["What is 2 + 3?", "The quick brown fox", "State the final answer: 4 + 3 =", "Hello, world!", "one two"]
SAMPLING = {"n": 3, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 12}


def _config(model_path: str) -> dict:
    return {"model_path": model_path, "max_model_len": 128, "kv_cache_bytes": 128 << 20, "seed": 7}


def _start(ray, model_path: str, index: int):
    from actors.generator import GeneratorActor

    return ray.remote(GeneratorActor).options(num_cpus=1).remote(index, _config(model_path))


@pytest.fixture(scope="module")
def prompts(tiny_model) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    return [tok(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def generators(ray_cluster, tiny_model, prompts):
    """Two generators and the result of their first call (all prompts, SAMPLING) for the seeding test."""
    actors = [_start(ray_cluster, tiny_model, i) for i in range(2)]
    first = ray_cluster.get([a.generate.remote(prompts, SAMPLING) for a in actors], timeout=TIMEOUT)
    yield actors, first
    for a in actors:
        ray_cluster.kill(a)


def _hf_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """log p(completion[t] | prompt + completion[:t]) under ``model``, fp32, temperature 1."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return logps[len(prompt) - 1 : -1].gather(-1, ids[0, len(prompt) :, None])[:, 0]


def test_sharded_samples_match_transformers(ray_cluster, tiny_model, generators, prompts):
    from transformers import AutoModelForCausalLM

    actors, _ = generators
    shards = [prompts[0::2], prompts[1::2]]  # round-robin over the two generators
    results = ray_cluster.get([a.generate.remote(s, SAMPLING) for a, s in zip(actors, shards)], timeout=TIMEOUT)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for shard, result in zip(shards, results):
        assert len(result) == len(shard)
        for prompt, samples in zip(shard, result):
            assert len(samples) == SAMPLING["n"]
            for s in samples:
                assert s["finish_reason"] in ("stop", "length")
                assert s["version"] == 0 and isinstance(s["text"], str)
                assert 1 <= len(s["completion_ids"]) <= SAMPLING["max_tokens"]
                assert len(s["logps"]) == len(s["completion_ids"])
                expected = _hf_logps(model, prompt, s["completion_ids"])
                assert torch.tensor(s["logps"]) == pytest.approx(expected, abs=1e-4)
    # samples of one prompt differ (temperature 1 over a ~640-token vocabulary)
    assert len({tuple(s["completion_ids"]) for s in results[0][0]}) > 1


def test_stop_token_ends_completion(ray_cluster, generators, prompts):
    actor = generators[0][0]
    greedy = {"n": 1, "temperature": 0.0, "max_tokens": 10}
    [[full]] = ray_cluster.get(actor.generate.remote(prompts[:1], greedy), timeout=TIMEOUT)
    assert full["finish_reason"] == "length" and len(full["completion_ids"]) == 10
    ids = full["completion_ids"]
    cut = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # first token not seen before
    [[stopped]] = ray_cluster.get(
        actor.generate.remote(prompts[:1], {**greedy, "stop_token_ids": [ids[cut]]}), timeout=TIMEOUT
    )
    assert stopped["finish_reason"] == "stop"
    assert stopped["completion_ids"] == ids[: cut + 1]  # the stop token is kept
    assert stopped["logps"] == pytest.approx(full["logps"][: cut + 1], abs=1e-6)


def test_seeded_generator_replays_its_samples(ray_cluster, tiny_model, generators, prompts):
    actors, first = generators
    # generator 1 (engine seed 7 + 1) drew other samples than generator 0 (seed 7 + 0) for the same call
    assert [[s["completion_ids"] for s in p] for p in first[0]] != [[s["completion_ids"] for s in p] for p in first[1]]
    fresh = _start(ray_cluster, tiny_model, 0)
    try:
        replay = ray_cluster.get(fresh.generate.remote(prompts, SAMPLING), timeout=TIMEOUT)
    finally:
        ray_cluster.kill(fresh)
    assert [[s["completion_ids"] for s in p] for p in replay] == [[s["completion_ids"] for s in p] for p in first[0]]


def test_bad_requests_fail_in_one_line(ray_cluster, generators, prompts):
    actor = generators[0][0]
    with pytest.raises(Exception, match="unknown sampling key.*beam_width.*valid: n, temperature"):
        ray_cluster.get(actor.generate.remote(prompts[:1], {"beam_width": 2}), timeout=TIMEOUT)
    with pytest.raises(Exception, match="prompt 1 has 200 tokens; max_model_len is 128"):
        ray_cluster.get(actor.generate.remote([prompts[0], [5] * 200], {"max_tokens": 2}), timeout=TIMEOUT)
    assert ray_cluster.get(actor.generate.remote([], {"max_tokens": 2}), timeout=TIMEOUT) == []


def test_config_validation():
    from actors.generator import resolve_config

    with pytest.raises(ValueError, match="generator config needs model_path"):
        resolve_config({})
    with pytest.raises(ValueError, match="unknown generator config key.*kv_cache; valid: model_path"):
        resolve_config({"model_path": "m", "kv_cache": 1})
    with pytest.raises(ValueError, match="tensor_parallel_size must be 1 on cpu"):
        resolve_config({"model_path": "m", "tensor_parallel_size": 2})
    with pytest.raises(ValueError, match="logprobs_mode 'raw_logits' is not supported"):
        resolve_config({"model_path": "m", "logprobs_mode": "raw_logits"})
    assert resolve_config({"model_path": "m"})["dtype"] == "float32"


def test_direct_weight_update_serves_the_new_weights_and_falls_back(ray_cluster, tiny_model, prompts):
    """CPU: a whole state goes in through ``actors.cpu_reload`` (no vLLM reload) and the engine then
    samples exactly what transformers computes with those weights; a state the direct path cannot
    place whole (one tensor missing) goes through vLLM's reload, which keeps the missing one; then
    the direct path again."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    actor = _start(ray_cluster, tiny_model, 0)
    greedy = {"n": 1, "temperature": 0.0, "max_tokens": 8}
    try:
        no_norm = {k: v for k, v in base.items() if k != "model.norm.weight"}
        for version, (sent, expected, path) in enumerate([
            (state, state, "direct"),
            (no_norm, {**no_norm, "model.norm.weight": state["model.norm.weight"]}, "vllm"),
            (state, state, "direct"),  # and back: vLLM's reload leaves the layers as the direct path expects
        ], start=1):
            stats = ray_cluster.get(actor.load_weights.remote(sent, version), timeout=TIMEOUT)
            assert stats["path"] == path and stats["version"] == version
            model.load_state_dict(expected)
            results = ray_cluster.get(actor.generate.remote(prompts, {**SAMPLING, "n": 2}), timeout=TIMEOUT)
            results += ray_cluster.get(actor.generate.remote(prompts, greedy), timeout=TIMEOUT)
            for prompt, samples in zip(prompts * 2, results):
                for s in samples:
                    assert s["version"] == version
                    expected_logps = _hf_logps(model, prompt, s["completion_ids"])
                    assert torch.tensor(s["logps"]) == pytest.approx(expected_logps, abs=1e-4)
    finally:
        ray_cluster.kill(actor)


def test_direct_update_of_a_tied_qwen2_with_biases_and_a_padded_vocabulary(ray_cluster, tiny_model, prompts, tmp_path):
    """The direct path on what the tiny Llama lacks: q/k/v biases, grouped K/V heads, a tied head, a
    vocabulary vLLM pads (650 rows -> 704), and a bf16 state loaded into an fp32 engine."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=650, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True, dtype="float32")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert any(k.endswith("q_proj.bias") for k in state)
    gen = torch.Generator().manual_seed(6)
    sent = {k: (v + 0.05 * torch.randn(v.shape, generator=gen)).to(torch.bfloat16) for k, v in state.items()}
    actor = _start(ray_cluster, str(tmp_path), 0)
    try:
        stats = ray_cluster.get(actor.load_weights.remote(sent, 1), timeout=TIMEOUT)
        assert stats["path"] == "direct"
        model.load_state_dict({k: v.float() for k, v in sent.items()}, strict=False)  # the head is tied
        results = ray_cluster.get(actor.generate.remote(prompts, {**SAMPLING, "n": 2}), timeout=TIMEOUT)
        for prompt, samples in zip(prompts, results):
            for s in samples:
                expected_logps = _hf_logps(model, prompt, s["completion_ids"])
                assert torch.tensor(s["logps"]) == pytest.approx(expected_logps, abs=1e-4)
    finally:
        ray_cluster.kill(actor)
