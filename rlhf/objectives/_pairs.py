"""Pieces the offline objectives (SimPO, DPO, KTO, reward modeling) share.

Every function here returns values in the convention of ``base``: a loss or metric is this
micro-batch's share of a mean over the **global** examples of the optimizer step
(``counts.examples``: pairs for ``pairs`` data, real rows for ``unpaired``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.objectives.base import GlobalCounts
from rlhf.reduction import aggregate


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
