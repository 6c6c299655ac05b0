"""KTO: Kahneman-Tversky Optimization from unpaired binary feedback (Ethayarajh et al., 2024).

Paper: https://arxiv.org/abs/2402.01306. Each real row is a completion ``y`` labelled desirable
(1) or undesirable (0); with ``rho(y) = log pi(y|x) - log pi_ref(y|x)`` (summed log-probs, as the
paper, TRL and OpenRLHF use) and the reference point ``z0``::

    desirable:   loss = desirable_weight   * (1 - sigmoid(beta * (rho - z0)))
    undesirable: loss = undesirable_weight * (1 - sigmoid(beta * (z0 - rho)))

``z0`` estimates ``KL(pi || pi_ref)`` from the mismatched rows (prompt ``i`` with another row's
completion, rows ``[B:2B]``): the mean of their ``rho``, **detached** and clamped at 0 (TRL's
convention). In training it is the mean over the **whole optimizer step** (every micro-batch on
every rank: ``STEP_KL``, a ``StepStatistic``): the learner forwards the mismatched rows without
gradients first, all-reduces, and the loss gets ``batch["kl_point"]`` with the real rows only, so
the step is the same whatever the split over ranks and micro-batches (TRL and OpenRLHF average it
over the ranks of one micro-step only). Given a batch without ``kl_point`` (the pure function, as
in the hand-derived tests), the loss estimates ``z0`` from that micro-batch's own ``B``
mismatched rows. Any ``B >= 1`` works, as do micro-batches holding a single label.

Conventions: rows ``[0:B]`` real, ``[B:2B]`` mismatched (or ``[0:B]`` real only, with
``batch["kl_point"]`` a 0-dim tensor); ``batch["label"]`` ``[B]`` in {0, 1};
reference log-probs in ``batch["ref_token_logps"]``; computed in float32; no epsilons. The loss
is the mean over the global real rows (``counts.examples``); metrics are shares of that mean:
``rewards/chosen_sum / count/chosen`` is the mean reward ``beta * rho`` of desirable rows (and
likewise ``rejected`` for undesirable rows), ``kl`` is the row-weighted mean of ``z0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.objectives._pairs import share
from rlhf.objectives.base import Batch, GlobalCounts, Objective, StepStatistic, register
from rlhf.reduction import sequence_logps


@dataclass(frozen=True)
class Params:
    """KTO hyper-parameters (defaults as in the paper and TRL)."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"kto beta must be > 0, got {self.beta}")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ValueError("kto desirable_weight and undesirable_weight must be >= 0")


def _logratios(token_logps: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``[R]`` summed ``log pi - log pi_ref`` of every row."""
    mask, ref = batch["response_mask"], batch["ref_token_logps"]
    if token_logps.shape != mask.shape or ref.shape != mask.shape:
        raise ValueError(
            f"kto: token_logps {tuple(token_logps.shape)}, ref_token_logps {tuple(ref.shape)} and "
            f"response_mask {tuple(mask.shape)} must have the same shape"
        )
    return sequence_logps(token_logps.float(), mask) - sequence_logps(ref.detach().float(), mask)


def loss(
    token_logps: torch.Tensor, batch: Batch, params: Params, counts: GlobalCounts
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO loss of one micro-batch of ``B`` labelled rows.

    Args:
        token_logps: ``[2B, T]`` policy per-token log-probs (real rows, then mismatched rows), or
            ``[B, T]`` (real rows) when ``batch["kl_point"]`` holds the step's KL reference point.
        batch: needs ``response_mask`` and ``ref_token_logps`` shaped like ``token_logps`` and
            ``label`` ``[B]``; optional ``kl_point`` (0-dim, the step's mean mismatched ``rho``).
        params: ``Params``.
        counts: global counts; ``counts.examples`` is the number of real rows in the step.

    Returns:
        ``(loss, metrics)``: this micro-batch's share of the global mean over real rows.
    """
    label = batch["label"]
    rho = _logratios(token_logps, batch)
    n = label.shape[0]
    given = batch.get("kl_point")
    if given is None and (label.dim() != 1 or rho.shape[0] != 2 * n):
        raise ValueError(f"kto: {rho.shape[0]} rows for {n} labels; expected 2 rows (real, mismatched) per label")
    if given is not None and (label.dim() != 1 or rho.shape[0] != n):
        raise ValueError(f"kto: {rho.shape[0]} rows for {n} labels; with kl_point, one real row per label")
    bad = ((label != 0) & (label != 1)).nonzero()
    if bad.numel():
        row = int(bad[0, 0])
        raise ValueError(f"kto: label of row {row} is {label[row].item()}, expected 0 or 1")
    real = rho[:n]
    point = rho[n:].detach().mean() if given is None else given.detach().float().to(rho.device)
    z0 = point.clamp(min=0)
    desirable = label.to(torch.bool)
    per_row = torch.where(
        desirable,
        params.desirable_weight * (1 - torch.sigmoid(params.beta * (real - z0))),
        params.undesirable_weight * (1 - torch.sigmoid(params.beta * (z0 - real))),
    )
    total = share(per_row, counts)
    reward = params.beta * real.detach()
    zero = torch.zeros_like(reward)
    metrics = {
        "loss": total.detach(),
        "kl": share(z0.expand(n), counts),
        "rewards/chosen_sum": share(torch.where(desirable, reward, zero), counts),
        "rewards/rejected_sum": share(torch.where(desirable, zero, reward), counts),
        "count/chosen": share(desirable.float(), counts),
        "count/rejected": share((~desirable).float(), counts),
    }
    return total, metrics


def split_rows(batch: Batch) -> tuple[Batch, Batch]:
    """``(mismatched rows, real rows)`` of a ``2B``-row KTO micro-batch (``label`` goes with the real rows)."""
    from rlhf.batch import slice_rows

    n = batch["label"].shape[0]
    rows = {k: v for k, v in batch.items() if v.dim() > 0 and v.shape[0] == 2 * n}
    if "input_ids" not in rows:
        raise ValueError(f"kto: a micro-batch of {n} labels needs {2 * n} rows (real, then mismatched)")
    rest = {k: v for k, v in batch.items() if k not in rows}
    return slice_rows(rows, slice(n, 2 * n)), {**slice_rows(rows, slice(0, n)), **rest}


def kl_partial(token_logps: torch.Tensor, rows: Batch, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of rho, count)`` over mismatched ``rows`` (detached): summed over the step, the KL point."""
    rho = _logratios(token_logps, rows).detach()
    return rho.sum(), torch.tensor(float(rho.shape[0]), device=rho.device)


#: KTO's KL reference point over the whole optimizer step (see the module docstring).
STEP_KL = StepStatistic(field="kl_point", split=split_rows, partial=kl_partial)


def implicit_reward(token_logps: torch.Tensor, batch: Batch, params: Params) -> torch.Tensor:
    """``[R]`` ``beta * (log pi - log pi_ref)`` of whatever rows it is given (e.g. a pairs batch)."""
    return params.beta * _logratios(token_logps, batch)


register(
    Objective(
        name="kto",
        mode="offline",
        data="unpaired",
        params=Params,
        fields=("response_mask", "label"),
        output="token_logps",
        needs_reference=lambda params: True,
        loss=loss,
        implicit_reward=implicit_reward,
        step_statistic=STEP_KL,
        paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization",
    )
)
