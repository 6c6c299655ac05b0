"""Pieces the offline objectives (SimPO, DPO, KTO, reward modeling) share.

Every function here returns values in the convention of ``base``: a loss or metric is this
micro-batch's share of a mean over the **global** examples of the optimizer step
(``counts.examples``: pairs for ``pairs`` data, real rows for ``unpaired``).

``PAIR_FIELDS`` are the batch fields every pair objective reads (``length_metrics`` needs both
masks), so that ``Objective.check_batch`` catches a batch without them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.objectives.base import Batch, GlobalCounts
from rlhf.reduction import aggregate

PAIR_FIELDS: tuple[str, ...] = ("response_mask", "attention_mask")


def share(values: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    """0-dim share of the global mean over examples of per-example ``values`` ``[B]``.

    ``values.sum() / counts.examples``, via ``rlhf.reduction.aggregate`` (``seq-mean``), so that the
    shares of every micro-batch and rank add up to the mean over the whole step.
    """
    return aggregate(values, None, "seq-mean", global_sequences=counts.examples, global_tokens=counts.tokens)


def smoothed_sigmoid_loss(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-pair label-smoothed sigmoid loss ``-(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)``.

    ``logits`` ``z`` is ``[P]`` (``beta`` times the chosen-minus-rejected margin); returns ``[P]``.
    ``eps = 0`` is the plain Bradley-Terry loss; ``eps > 0`` is the conservative (cDPO) variant.
    """
    return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


def preference_metrics(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, counts: GlobalCounts
) -> dict[str, torch.Tensor]:
    """Shares of the global means of the implicit rewards of ``P`` pairs.

    Args:
        r_chosen: ``[P]`` detached reward of each pair's chosen completion.
        r_rejected: ``[P]`` detached reward of each pair's rejected completion.
        counts: global counts; ``counts.examples`` is the number of pairs in the step.

    Returns:
        ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracy`` (strictly ``r_chosen >
        r_rejected``) and ``rewards/margin`` (``r_chosen - r_rejected``), each 0-dim.
    """
    return {
        "rewards/chosen": share(r_chosen, counts),
        "rewards/rejected": share(r_rejected, counts),
        "rewards/accuracy": share((r_chosen > r_rejected).float(), counts),
        "rewards/margin": share(r_chosen - r_rejected, counts),
    }


def length_metrics(batch: Batch, counts: GlobalCounts) -> dict[str, torch.Tensor]:
    """Shares of the global mean lengths, in tokens, of the completions and prompts of ``P`` pairs.

    Args:
        batch: ``response_mask`` and ``attention_mask``, ``[2P, T]`` (rows ``[0:P]`` chosen,
            ``[P:2P]`` rejected).
        counts: global counts; ``counts.examples`` is the number of pairs in the step.

    Returns:
        ``length/chosen``, ``length/rejected`` (response tokens) and ``length/prompt`` (a chosen
        row's attended tokens minus its response tokens; both rows of a pair share the prompt),
        each 0-dim. The driver derives ratios (e.g. chosen / rejected) from the global means.
    """
    response = batch["response_mask"].detach().float().sum(-1)
    attended = batch["attention_mask"].detach().float().sum(-1)
    if response.shape[0] % 2 or attended.shape != response.shape:
        raise ValueError(
            f"pairs batch: response_mask {tuple(batch['response_mask'].shape)} and attention_mask "
            f"{tuple(batch['attention_mask'].shape)} must be the same [2P, T]"
        )
    chosen, rejected = response.chunk(2)
    prompt = attended[: chosen.shape[0]] - chosen
    return {
        "length/chosen": share(chosen, counts),
        "length/rejected": share(rejected, counts),
        "length/prompt": share(prompt, counts),
    }
