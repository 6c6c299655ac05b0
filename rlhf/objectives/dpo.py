"""DPO: Direct Preference Optimization (Rafailov et al., 2023), with the cDPO and IPO variants.

Paper: https://arxiv.org/abs/2305.18290. Per pair ``(y_w, y_l)``, with ``rho(y) = log pi(y|x) -
log pi_ref(y|x)`` (reference log-probs from ``batch["ref_token_logps"]``, constants)::

    h = rho(y_w) - rho(y_l)
    sigmoid: loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    ipo:     loss = (h - 1 / (2 * beta)) ** 2               # Azar et al. 2023, Eq. 17 (beta = tau)

``eps = label_smoothing > 0`` is conservative DPO (cDPO, Mitchell 2023), as TRL and OpenRLHF
implement it. Log-probs are **summed** over completion tokens for the ``sigmoid`` loss; for the
``ipo`` loss they are **length-averaged** (policy and reference alike), as TRL's ``DPOTrainer``
does — OpenRLHF and the original IPO code use sums; TRL's choice keeps ``1 / (2 beta)`` on a
per-token scale.

Rewards: ``beta * rho`` with ``rho`` **summed**, for both loss types (TRL, OpenRLHF and verl all
report ``beta * (sum log pi - sum log pi_ref)``); they are the detached ``rewards/*`` metrics and
the ``implicit_reward`` behind held-out accuracy. Only the IPO *loss* averages.

Conventions: rows ``[0:P]`` chosen, ``[P:2P]`` rejected; computed in float32; the reference is
detached; no epsilons. Metrics also carry the pairs' mean lengths (``_pairs.length_metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rlhf.objectives._pairs import PAIR_FIELDS, length_metrics, preference_metrics, share, smoothed_sigmoid_loss
from rlhf.objectives.base import Batch, GlobalCounts, Objective, register
from rlhf.reduction import sequence_logps

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass(frozen=True)
class Params:
    """DPO hyper-parameters (defaults as in the paper and TRL)."""

    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"dpo loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.beta <= 0:
            raise ValueError(f"dpo beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"dpo label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing > 0 and self.loss_type != "sigmoid":
            raise ValueError("dpo label_smoothing (cDPO) applies to loss_type 'sigmoid' only")


def _logratios(token_logps: torch.Tensor, batch: Batch, average: bool = False) -> torch.Tensor:
    """``[R]`` ``log pi - log pi_ref`` per row: summed, or length-averaged (the IPO loss)."""
    mask, ref = batch["response_mask"], batch["ref_token_logps"]
    if token_logps.shape != mask.shape or ref.shape != mask.shape:
        raise ValueError(
            f"dpo: token_logps {tuple(token_logps.shape)}, ref_token_logps {tuple(ref.shape)} and "
            f"response_mask {tuple(mask.shape)} must have the same shape"
        )
    policy = sequence_logps(token_logps.float(), mask, average=average)
    return policy - sequence_logps(ref.detach().float(), mask, average=average)


def loss(
    token_logps: torch.Tensor, batch: Batch, params: Params, counts: GlobalCounts
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss of one micro-batch of ``P`` pairs.

    Args:
        token_logps: ``[2P, T]`` policy per-token log-probs.
        batch: needs ``response_mask``, ``attention_mask`` and ``ref_token_logps``, ``[2P, T]``.
        params: ``Params``.
        counts: global counts; ``counts.examples`` is the number of pairs in the optimizer step.

    Returns:
        ``(loss, metrics)``: this micro-batch's share of the global mean over pairs.
    """
    rho = _logratios(token_logps, batch)
    if rho.shape[0] % 2:
        raise ValueError(f"dpo: pairs batch has an odd number of rows ({rho.shape[0]})")
    chosen, rejected = rho.chunk(2)
    if params.loss_type == "sigmoid":
        per_pair = smoothed_sigmoid_loss(params.beta * (chosen - rejected), params.label_smoothing)
    else:
        avg_chosen, avg_rejected = _logratios(token_logps, batch, average=True).chunk(2)
        per_pair = (avg_chosen - avg_rejected - 1 / (2 * params.beta)) ** 2

    total = share(per_pair, counts)
    metrics = {
        "loss": total.detach(),
        **preference_metrics(params.beta * chosen.detach(), params.beta * rejected.detach(), counts),
        **length_metrics(batch, counts),
    }
    return total, metrics


def implicit_reward(token_logps: torch.Tensor, batch: Batch, params: Params) -> torch.Tensor:
    """``[R]`` DPO implicit reward ``beta * (log pi - log pi_ref)`` of every row, summed log-probs (IPO too)."""
    return params.beta * _logratios(token_logps, batch)


register(
    Objective(
        name="dpo",
        mode="offline",
        data="pairs",
        params=Params,
        fields=PAIR_FIELDS,
        output="token_logps",
        needs_reference=lambda params: True,
        loss=loss,
        implicit_reward=implicit_reward,
        paper="Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    )
)
