"""Reward modeling: the Bradley-Terry pairwise loss (Ouyang et al., 2022; margin as Llama 2).

Papers: https://arxiv.org/abs/2203.02155 (InstructGPT, Eq. 1) and https://arxiv.org/abs/2307.09288
(Llama 2, Eq. 2). The policy output is a scalar score per row (``"score"``, a value head read at
the last real token). Per pair with scores ``s_w`` (chosen) and ``s_l`` (rejected)::

    loss = -log sigmoid(s_w - s_l - margin) + center_rewards_coefficient * (s_w + s_l) ** 2

``margin`` is one constant for every pair (Llama 2 uses a per-pair margin from rating levels;
OpenRLHF and TRL read it from a data column). The centering term (Eisenstein et al., 2023) keeps
the scores near zero mean, as TRL's ``center_rewards_coefficient`` does; TRL takes its mean over
the micro-batch's pairs, here it is the mean over the global pairs like the main term.

Conventions: rows ``[0:P]`` chosen, ``[P:2P]`` rejected; computed in float32; no reference; no
epsilons (``logsigmoid`` is stable). ``accuracy`` counts ``s_w > s_l`` strictly. Metrics also
carry the pairs' mean lengths (``_pairs.length_metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf.objectives._pairs import PAIR_FIELDS, length_metrics, share
from rlhf.objectives.base import Batch, GlobalCounts, Objective, register


@dataclass(frozen=True)
class Params:
    """Reward-model hyper-parameters."""

    margin: float = 0.0
    center_rewards_coefficient: float = 0.0

    def __post_init__(self) -> None:
        if self.center_rewards_coefficient < 0:
            raise ValueError(f"rm center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}")


def loss(
    score: torch.Tensor, batch: Batch, params: Params, counts: GlobalCounts
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley-Terry loss of one micro-batch of ``P`` pairs.

    Args:
        score: ``[2P]`` scalar score per row.
        batch: ``response_mask`` and ``attention_mask`` ``[2P, T]``, read for the length metrics only.
        params: ``Params``.
        counts: global counts; ``counts.examples`` is the number of pairs in the optimizer step.

    Returns:
        ``(loss, metrics)``: this micro-batch's share of the global mean over pairs.
    """
    if score.dim() != 1 or score.shape[0] % 2:
        raise ValueError(f"rm: score must be [2P] (chosen rows then rejected rows), got {tuple(score.shape)}")
    chosen, rejected = score.float().chunk(2)
    per_pair = -F.logsigmoid(chosen - rejected - params.margin)
    if params.center_rewards_coefficient > 0:
        per_pair = per_pair + params.center_rewards_coefficient * (chosen + rejected) ** 2
    total = share(per_pair, counts)
    diff = (chosen - rejected).detach()
    metrics = {
        "loss": total.detach(),
        "accuracy": share((diff > 0).float(), counts),
        "margin": share(diff, counts),
        **length_metrics(batch, counts),
    }
    return total, metrics


def implicit_reward(score: torch.Tensor, batch: Batch, params: Params) -> torch.Tensor:
    """``[R]`` the reward model's score itself."""
    return score.float()


register(
    Objective(
        name="rm",
        mode="offline",
        data="pairs",
        params=Params,
        fields=PAIR_FIELDS,
        output="score",
        needs_reference=lambda params: False,
        loss=loss,
        implicit_reward=implicit_reward,
        paper="Ouyang et al. 2022, Training language models to follow instructions with human feedback (BT loss)",
    )
)
