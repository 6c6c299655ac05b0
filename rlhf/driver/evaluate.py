"""Held-out preference accuracy: how often the policy's implicit reward ranks chosen over rejected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlhf.batch import collate_pairs
from rlhf.objectives.base import Objective


def preference_accuracy(
    session: Any,
    objective: Objective,
    params: Any,
    pairs: Sequence[dict],
    pad_id: int,
    batch_size: int = 16,
    ref_cache: dict[int, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Accuracy and mean margin of ``objective.implicit_reward`` on held-out ``pairs``.

    A tie counts as half right: before any update DPO's and KTO's implicit rewards are exactly
    0 for every row, which is chance (0.5), not "always wrong".

    The rows are split over the learner ranks (``LearnerGroup.compute``). Reference log-probs,
    when the implicit reward needs them, are computed once and kept
    in ``ref_cache`` (the reference never changes).
    """
    if not pairs or objective.implicit_reward is None:
        return {}
    correct, margins, total = 0.0, 0.0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate_pairs(chunk, pad_id)
        if objective.needs_reference(params):
            if ref_cache is not None and start in ref_cache:
                batch["ref_token_logps"] = ref_cache[start]
            else:
                batch["ref_token_logps"] = session.reference_logps([[batch]])[0][0]
                if ref_cache is not None:
                    ref_cache[start] = batch["ref_token_logps"]
        out = session.learners.compute(batch, objective.output)
        reward = objective.implicit_reward(out, batch, params)
        n = len(chunk)
        diff = reward[:n] - reward[n:]
        correct += float((diff > 0).float().sum() + 0.5 * (diff == 0).float().sum())  # a tie is a coin flip
        margins += float(diff.sum())
        total += n
    return {"eval/accuracy": correct / total, "eval/margin": margins / total, "eval/pairs": total}
