"""SimPO: Simple Preference Optimization with a reference-free reward (Meng, Xia & Chen, 2024).

Paper: https://arxiv.org/abs/2405.14734. Per pair ``(y_w, y_l)`` with length-averaged log-probs
``a_w = log pi(y_w|x) / |y_w|`` and ``a_l = log pi(y_l|x) / |y_l|`` (``sequence_logps(average=True)``)::

    h = a_w - a_l - gamma_beta_ratio          # gamma = gamma_beta_ratio * beta
    sigmoid: loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    hinge:   loss = relu(1 - beta * h)

so ``beta * h = beta * (a_w - a_l) - gamma`` (Eq. 6 of the paper). The margin enters as a ratio
before the ``beta`` scaling, as in princeton-nlp/SimPO's ``simpo_trainer.py``; TRL's
``CPOTrainer(loss_type="simpo")`` takes the absolute ``gamma`` instead — here it is the ratio,
so the official configs (``beta: 2.0, gamma_beta_ratio: 0.5``) carry over unchanged.

Margin schedule: with ``gamma_beta_ratio_end`` set, the ratio moves linearly from
``gamma_beta_ratio`` (first step, progress 0) to ``gamma_beta_ratio_end`` (last step, progress 1);
``at_progress`` (the objective's ``at_progress`` hook) gives each step's params.

``sft_weight > 0`` adds ``sft_weight * (-a_w)`` per pair (NLL of the chosen completion). The
official trainer uses a token-mean cross-entropy over the micro-batch's chosen tokens; here it is
the per-pair length-averaged NLL, mean over the global pairs, so that it does not depend on the
micro-batch split (``GlobalCounts`` has no chosen-only token count).

Conventions: rows ``[0:P]`` chosen, ``[P:2P]`` rejected; computed in float32; no epsilons
(``logsigmoid`` is stable, lengths clamp at 1). Rewards ``beta * a`` are detached metrics, as
are the pairs' mean lengths (``_pairs.length_metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from rlhf.objectives._pairs import PAIR_FIELDS, length_metrics, preference_metrics, share, smoothed_sigmoid_loss
from rlhf.objectives.base import Batch, GlobalCounts, Objective, register
from rlhf.reduction import sequence_logps

LOSS_TYPES = ("sigmoid", "hinge")


@dataclass(frozen=True)
class Params:
    """SimPO hyper-parameters (defaults: the paper's / official configs' Mistral-Base values).

    ``gamma_beta_ratio_end``: None keeps ``gamma_beta_ratio`` constant; a value makes it the
    ratio at the end of the stage (linear schedule, see ``at_progress``).
    """

    beta: float = 2.0
    gamma_beta_ratio: float = 0.5
    loss_type: Literal["sigmoid", "hinge"] = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    gamma_beta_ratio_end: float | None = None

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"simpo loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.beta <= 0:
            raise ValueError(f"simpo beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"simpo label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing > 0 and self.loss_type != "sigmoid":
            raise ValueError("simpo label_smoothing applies to loss_type 'sigmoid' only")
        if self.sft_weight < 0:
            raise ValueError(f"simpo sft_weight must be >= 0, got {self.sft_weight}")


def _avg_logps(token_logps: torch.Tensor, batch: Batch) -> torch.Tensor:
    mask = batch["response_mask"]
    if token_logps.shape != mask.shape:
        raise ValueError(f"simpo: token_logps {tuple(token_logps.shape)} != response_mask {tuple(mask.shape)}")
    return sequence_logps(token_logps.float(), mask, average=True)


def loss(
    token_logps: torch.Tensor, batch: Batch, params: Params, counts: GlobalCounts
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimPO loss of one micro-batch of ``P`` pairs.

    Args:
        token_logps: ``[2P, T]`` policy per-token log-probs.
        batch: needs ``response_mask`` and ``attention_mask`` ``[2P, T]``.
        params: ``Params``.
        counts: global counts; ``counts.examples`` is the number of pairs in the optimizer step.

    Returns:
        ``(loss, metrics)``: this micro-batch's share of the global mean over pairs.
    """
    avg = _avg_logps(token_logps, batch)
    if avg.shape[0] % 2:
        raise ValueError(f"simpo: pairs batch has an odd number of rows ({avg.shape[0]})")
    chosen, rejected = avg.chunk(2)
    logits = params.beta * (chosen - rejected - params.gamma_beta_ratio)
    if params.loss_type == "sigmoid":
        per_pair = smoothed_sigmoid_loss(logits, params.label_smoothing)
    else:
        per_pair = torch.relu(1 - logits)
    sft = -chosen
    if params.sft_weight > 0:
        per_pair = per_pair + params.sft_weight * sft

    total = share(per_pair, counts)
    metrics = {
        "loss": total.detach(),
        **preference_metrics(params.beta * chosen.detach(), params.beta * rejected.detach(), counts),
        **length_metrics(batch, counts),
    }
    if params.sft_weight > 0:
        metrics["sft_loss"] = share(sft.detach(), counts)
    return total, metrics


def implicit_reward(token_logps: torch.Tensor, batch: Batch, params: Params) -> torch.Tensor:
    """``[R]`` SimPO reward ``beta * mean log pi(y|x)`` of every row (no reference)."""
    return params.beta * _avg_logps(token_logps, batch)


def at_progress(params: Params, progress: float) -> Params:
    """The params of the step at fraction ``progress`` in ``[0, 1]`` of the stage.

    Unchanged without a schedule; else ``gamma_beta_ratio`` interpolated linearly towards
    ``gamma_beta_ratio_end``, returned as constant params (``gamma_beta_ratio_end=None``), so that
    applying it again changes nothing.
    """
    end = params.gamma_beta_ratio_end
    if end is None:
        return params
    ratio = params.gamma_beta_ratio + progress * (end - params.gamma_beta_ratio)
    return replace(params, gamma_beta_ratio=ratio, gamma_beta_ratio_end=None)


register(
    Objective(
        name="simpo",
        mode="offline",
        data="pairs",
        params=Params,
        fields=PAIR_FIELDS,
        output="token_logps",
        needs_reference=lambda params: False,
        loss=loss,
        implicit_reward=implicit_reward,
        at_progress=at_progress,
        paper="Meng, Xia & Chen 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward",
    )
)
