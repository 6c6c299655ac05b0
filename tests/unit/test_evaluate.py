"""Held-out preference accuracy from implicit rewards (ties are half right)."""

import torch

from rlhf.driver.evaluate import preference_accuracy
from rlhf.objectives import get


class _Learners:
    """Stands in for the learner group: returns fixed per-token log-probs for any batch."""

    def __init__(self, fn):
        self.fn = fn

    def compute(self, batch, output="token_logps"):
        return self.fn(batch)


class _Session:
    def __init__(self, fn, ref_fn=None):
        self.learners = _Learners(fn)
        self.ref_fn = ref_fn

    def reference_logps(self, per_rank):
        return [[self.ref_fn(per_rank[0][0])]]


PAIRS = [{"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]} for _ in range(3)]


def test_simpo_accuracy_counts_chosen_above_rejected():
    # chosen rows get log-prob -1 per token, rejected rows -2: SimPO's average prefers chosen
    def logps(batch):
        out = torch.full(batch["input_ids"].shape, -1.0)
        out[len(PAIRS):] = -2.0
        return out

    simpo = get("simpo")
    result = preference_accuracy(_Session(logps), simpo, simpo.make_params(), PAIRS, pad_id=0)
    assert result["eval/accuracy"] == 1.0 and result["eval/pairs"] == 3


def test_dpo_accuracy_before_training_is_chance_not_zero():
    same = lambda batch: torch.full(batch["input_ids"].shape, -1.5)  # noqa: E731 - policy == reference
    dpo = get("dpo")
    result = preference_accuracy(_Session(same, same), dpo, dpo.make_params(), PAIRS, pad_id=0)
    assert result["eval/accuracy"] == 0.5 and result["eval/margin"] == 0.0
