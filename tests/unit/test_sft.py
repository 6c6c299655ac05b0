"""SFT: completion-only token-mean NLL over the global batch, by hand; the completions data kind."""

import pytest
import torch

from rlhf.batch import collate, global_counts
from rlhf.objectives import GlobalCounts, get


def test_sft_loss_is_the_global_token_mean_nll_of_completion_tokens_only():
    sft = get("sft")
    # row 0: prompt at t=0,1 (log-probs -9 there must be ignored), completion t=2,3: -1, -2
    # row 1: prompt t=0, completion t=1: -3
    logps = torch.tensor([[0.0, -9.0, -1.0, -2.0], [0.0, -3.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]])
    counts = GlobalCounts(examples=2, tokens=3)
    loss, metrics = sft.loss(logps, {"response_mask": mask}, sft.make_params(), counts)
    assert loss.item() == pytest.approx((1 + 2 + 3) / 3)
    assert metrics["length/completion"].item() == pytest.approx(3 / 2)
    loss.backward()
    assert torch.equal(logps.grad, -mask.float() / 3)  # d/d logp of -mean over 3 tokens, 0 on the prompt


def test_sft_split_over_micro_batches_sums_to_the_whole():
    sft = get("sft")
    logps = torch.tensor([[0.0, -1.0, -2.0], [0.0, -4.0, 0.0], [0.0, -0.5, -0.5]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0], [0, 1, 1]])
    counts = GlobalCounts(examples=3, tokens=5)
    whole, _ = sft.loss(logps, {"response_mask": mask}, sft.make_params(), counts)
    parts = sum(sft.loss(logps[i : i + 1], {"response_mask": mask[i : i + 1]}, sft.make_params(), counts)[0]
                for i in range(3))
    assert whole.item() == pytest.approx(parts.item()) == pytest.approx(8 / 5)


def test_sft_implicit_reward_is_the_length_averaged_logprob():
    sft = get("sft")
    logps = torch.tensor([[0.0, -1.0, -3.0], [0.0, -2.0, 0.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    assert sft.implicit_reward(logps, {"response_mask": mask}, sft.make_params()).tolist() == [-2.0, -2.0]


def test_completions_kind_collates_rows_and_reads_a_pairs_row_as_its_chosen_answer():
    from rlhf.data.schema import validate_rows

    examples = [{"prompt_ids": [5, 6], "completion_ids": [7]}, {"prompt_ids": [8], "completion_ids": [9, 10]}]
    batch = collate("completions", examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 10]]
    assert batch["response_mask"].tolist() == [[0, 0, 1], [0, 1, 1]]
    assert global_counts("completions", examples) == GlobalCounts(examples=2, tokens=3, nonempty=2)
    validate_rows([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "completion": "a"}],
                  "completions", "x.jsonl")
    with pytest.raises(ValueError, match=r"x.jsonl: row 0 \(0-based\), field 'completion' is missing"):
        validate_rows([{"prompt": "q"}], "completions", "x.jsonl")
