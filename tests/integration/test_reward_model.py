"""RewardModelActor through Ray: scores equal a direct transformers forward; the batch adapter works."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

PROMPTS = ["What is 2 + 3?", "State the final answer: 4 + 3 =", "Hello"]
COMPLETIONS = ["5", " The answer is 7.", " world! How are you today?"]


@pytest.fixture(scope="module")
def rm_folder(tiny_model, tmp_path_factory) -> str:
    """A scoring folder like ``--algo rm`` saves: the tiny Llama with a fresh 1-output score head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    with torch.no_grad():  # a head of std 1 instead of 0.02, so that scores differ visibly
        model.score.weight.normal_(0.0, 1.0)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def rm_actor(ray_cluster, rm_folder):
    from actors.reward_model import RewardModelActor

    actor = ray_cluster.remote(RewardModelActor).options(num_cpus=1).remote({"model_path": rm_folder, "batch_size": 2})
    yield actor
    ray_cluster.kill(actor)


def _direct_scores(rm_folder: str, sequences: list[list[int]]) -> list[float]:
    """One unpadded forward per sequence; HF pools at the last token when pad_token_id is None."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm_folder).eval()
    model.config.pad_token_id = None  # batch of 1: pool at position -1 whatever the token
    with torch.no_grad():
        return [model(input_ids=torch.tensor([seq])).logits[0, 0].item() for seq in sequences]


def test_scores_equal_direct_forward(ray_cluster, rm_actor, rm_folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_folder)
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    completion_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in COMPLETIONS]
    completion_ids[0] = completion_ids[0] + [tok.eos_token_id, tok.pad_token_id]  # a real token equal to pad
    messages = [{"role": "user", "content": "What is 12 + 7?"}]
    chat_ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    sequences = [p + c for p, c in zip(prompt_ids, completion_ids)] + [chat_ids + completion_ids[1]]
    expected = _direct_scores(rm_folder, sequences)

    by_ids = ray_cluster.get(
        rm_actor.score.remote(prompt_ids + [chat_ids], completion_ids + [completion_ids[1]]), timeout=120
    )
    assert by_ids == pytest.approx(expected, abs=1e-5)
    # text (and chat messages) tokenized by the actor give the same sequences, hence the same scores
    texts = [tok.decode(completion_ids[0])] + COMPLETIONS[1:] + [COMPLETIONS[1]]  # "5<|im_end|><|pad|>", ...
    by_text = ray_cluster.get(rm_actor.score.remote(PROMPTS + [messages], texts), timeout=120)
    assert by_text == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 1e-2  # the scores are not all the same number


def test_batch_adapter_through_ray(ray_cluster, rm_actor):
    from actors.reward_model import reward_model_reward
    from rlhf.rewards import load_rewards, score_samples

    reward = reward_model_reward(rm_actor, timeout_s=120, name="tiny_rm")
    rows = [{"prompt": p, "answer": "7"} for p in PROMPTS]
    direct = ray_cluster.get(rm_actor.score.remote(PROMPTS, COMPLETIONS), timeout=120)
    totals, stats = score_samples(load_rewards([{"fn": reward, "weight": 0.5}, "numeric_match"]), COMPLETIONS, rows)
    numeric = [0.0, 1.0, 0.0]
    assert totals == pytest.approx([0.5 * d + n for d, n in zip(direct, numeric)], abs=1e-6)
    assert stats["mean_by_fn"]["tiny_rm"] == pytest.approx(sum(direct) / 3, abs=1e-6)
    # prompt_ids / completion_ids in the rows win over the text
    ids_rows = [
        {"prompt_ids": [5, 6, 7], "completion_ids": [8, 9]},
        {"prompt_ids": [5, 6, 7, 8], "completion_ids": [9]},
    ]
    by_ids = reward(["ignored", "ignored"], ids_rows)
    assert by_ids == pytest.approx([by_ids[0]] * 2, abs=1e-5)  # the same 5-token sequence twice


def test_adapter_timeout_names_the_actor(rm_actor):
    from actors.reward_model import reward_model_reward

    reward = reward_model_reward(rm_actor, timeout_s=1e-4, name="slow_rm")
    rows = [{"prompt": "What is 2 + 3? " * 20}] * 64
    with pytest.raises(TimeoutError, match="reward model actor 'slow_rm' did not score 64 samples within"):
        reward(["The answer is five. " * 10] * 64, rows)


def test_config_errors(tiny_model):
    from actors.reward_model import RewardModelActor

    with pytest.raises(ValueError, match="unknown key\\(s\\) batchsize; valid: model_path"):
        RewardModelActor({"model_path": tiny_model, "batchsize": 2})
    with pytest.raises(ValueError, match="num_labels=2; a reward model is a causal LM with a 1-output 'score' head"):
        RewardModelActor({"model_path": tiny_model})  # a policy folder, not a reward model
