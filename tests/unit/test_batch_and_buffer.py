"""Collation layout, sharding, global counts, reduction invariance, and the rollout buffer."""

import dataclasses

import pytest
import torch

from rlhf.batch import collate, collate_pairs, global_counts, mismatched_completions, pad_rows, shard
from rlhf.buffer import RolloutBuffer
from rlhf.objectives import GlobalCounts
from rlhf.reduction import REDUCTIONS, aggregate, sequence_logps


def test_pad_rows_masks():
    b = pad_rows([([1, 2], [3]), ([4], [5, 6, 7])], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]


def test_pairs_layout_chosen_then_rejected():
    pairs = [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3, 3]},
             {"prompt_ids": [4], "chosen_ids": [5], "rejected_ids": [6]}]
    b = collate_pairs(pairs)
    assert b["input_ids"][:, :2].tolist() == [[1, 2], [4, 5], [1, 3], [4, 6]]
    c = global_counts("pairs", pairs)
    assert (c.examples, c.tokens, c.nonempty) == (2, 5, 2)


def test_global_counts_nonempty_rows():
    samples = [{"prompt_ids": [1], "completion_ids": ids, "reward": 0.0, "group": 0} for ids in ([2, 3], [], [4])]
    c = global_counts("prompts", samples)
    assert (c.examples, c.tokens, c.nonempty, c.nonempty_examples) == (3, 3, 2, 2)
    # the learner rebuilds it from the dict the driver ships
    assert GlobalCounts(**dataclasses.asdict(c)) == c
    legacy = GlobalCounts(**{"examples": 3, "tokens": 3})  # no "nonempty" key: every example counts
    assert legacy.nonempty is None and legacy.nonempty_examples == 3
    with pytest.raises(ValueError, match=r"nonempty \(4\) must be between 0 and examples \(3\)"):
        GlobalCounts(examples=3, tokens=3, nonempty=4)


def test_kto_mismatched_rows_any_batch_size():
    rows = [{"prompt_ids": [i], "completion_ids": [10 + i], "label": i % 2} for i in range(3)]
    kl = mismatched_completions(rows)
    assert kl == [[11], [12], [10]]
    b = collate("unpaired", [{**r, "kl_completion_ids": k} for r, k in zip(rows, kl)])
    assert b["input_ids"].tolist() == [[0, 10], [1, 11], [2, 12], [0, 11], [1, 12], [2, 10]]
    assert b["label"].tolist() == [0.0, 1.0, 0.0]
    one = collate("unpaired", rows[:1])
    assert one["input_ids"].shape[0] == 2


def test_shard_even_split_and_error():
    items = list(range(8))
    out = shard(items, world_size=2, grad_accum=2)
    assert out == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    with pytest.raises(ValueError, match="does not split"):
        shard(items[:7], 2, 2)


@pytest.mark.parametrize("mode", [m for m in REDUCTIONS if m != "seq-mean"])
@pytest.mark.parametrize("empty_row", [False, True])
def test_aggregate_split_invariance(mode, empty_row):
    torch.manual_seed(0)
    values = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).long()
    mask[:, 0] = 1
    if empty_row:
        mask[3] = 0  # no token in row 3, inside the second micro-batch
    seqs, tokens = int((mask.sum(-1) > 0).sum()), int(mask.sum())
    whole = aggregate(values, mask, mode, seqs, tokens, norm=7)
    parts = sum(aggregate(values[i : i + 2], mask[i : i + 2], mode, seqs, tokens, norm=7) for i in range(0, 6, 2))
    assert torch.allclose(whole, parts, atol=1e-6)


def test_aggregate_hand_values():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert aggregate(v, m, "token-mean", 2, 3).item() == pytest.approx((1 + 2 + 6) / 3)
    assert aggregate(v, m, "seq-mean-token-sum", 2, 3).item() == pytest.approx((3 + 6) / 2)
    assert aggregate(v, m, "seq-mean-token-mean", 2, 3).item() == pytest.approx((1.5 + 6) / 2)
    assert aggregate(torch.tensor([1.0, 3.0]), None, "seq-mean", 4, 0).item() == pytest.approx(1.0)
    assert aggregate(v, m, "token-sum", 2, 3).item() == pytest.approx(1 + 2 + 6)
    # Dr. GRPO: per-row sums 3 and 6 over the constant 4, mean over 2 rows
    assert aggregate(v, m, "seq-mean-token-sum-norm", 2, 3, norm=4).item() == pytest.approx((3 / 4 + 6 / 4) / 2)
    with pytest.raises(ValueError, match="needs a constant norm > 0"):
        aggregate(v, m, "seq-mean-token-sum-norm", 2, 3)
    assert sequence_logps(v, m).tolist() == [3.0, 6.0]
    assert sequence_logps(v, m, average=True).tolist() == [1.5, 6.0]


def test_aggregate_empty_row_hand_values():
    # row 1 has no masked token: it adds 0 and the caller counts 2 non-empty rows, not 3
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 1]])
    assert aggregate(v, m, "seq-mean-token-sum", 2, 3).item() == pytest.approx((3 + 9) / 2)
    assert aggregate(v, m, "seq-mean-token-mean", 2, 3).item() == pytest.approx((1.5 + 9) / 2)
    assert aggregate(v, m, "seq-mean-token-sum-norm", 2, 3, norm=3).item() == pytest.approx((3 + 9) / 3 / 2)
    assert aggregate(v, m, "token-mean", 2, 3).item() == pytest.approx((1 + 2 + 9) / 3)
    assert sequence_logps(v, m, average=True).tolist() == [1.5, 0.0, 9.0]


def test_buffer_versions_staleness_and_epochs():
    buf = RolloutBuffer("prompts", max_staleness=1)
    buf.add([{"a": 1}, {"a": 2}], version=3)
    assert buf.staleness(5) == {"staleness/mean": 2.0, "staleness/max": 2.0}
    with pytest.raises(RuntimeError, match="2 policy versions old"):
        buf.take(current_version=5)
    offline = RolloutBuffer("pairs")
    offline.add([{"i": i} for i in range(5)])
    stream = offline.epochs(2, seed=0)
    seen = [x["i"] for _ in range(2) for x in next(stream)]
    assert len(set(seen)) == 4 and len(offline) == 5
