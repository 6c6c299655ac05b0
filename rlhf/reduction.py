"""Loss reduction over global batch totals, and per-sequence log-prob sums.

Every loss in the project is reduced here, so that the value and the gradient of one optimizer
step do not depend on how the global batch is split over data-parallel ranks and
gradient-accumulation micro-batches: each micro-batch contributes ``sum / global_denominator``,
and the learner sums the contributions (undoing DeepSpeed's averaging, see
``actors.learner``). Every denominator is a global count or a constant, never a property of the
micro-batch (its row count, its padded width or its longest row).

Modes (names as in verl / OpenRLHF), with ``m`` the mask, ``N`` = ``global_sequences`` and
``C`` = ``norm``:

- ``token-mean``: sum of every masked token's value / global number of masked tokens.
- ``token-sum``: sum of every masked token's value, not divided (the loss grows with the batch).
- ``seq-mean-token-sum``: per sequence, the sum of its masked token values; summed and divided by
  ``N``.
- ``seq-mean-token-mean``: per sequence, the mean of its masked token values; summed and divided
  by ``N``.
- ``seq-mean-token-sum-norm``: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training",
  arXiv:2503.20783): per sequence, the sum of its masked token values divided by the constant
  ``C`` (the generation budget, max new tokens) instead of the sequence's length; summed and
  divided by ``N``, i.e. ``sum(v * m) / (C * N)`` (the paper drops GRPO's ``1 / |o_i|`` and
  keeps its ``1 / G``). verl's default ``C`` is the micro-batch's padded width, which changes
  with the split, and some verl versions also drop the ``1 / N``; here ``C`` must be given.
- ``seq-mean``: values are already per sequence ``[R]``; summed and divided by ``N`` (sequences or
  pairs).

For the ``seq-mean-token-*`` modes a sequence with no masked token contributes 0 to the sum, and
``N`` counts only the sequences with at least one masked token (as verl and OpenRLHF): the caller
passes that global count (``GlobalCounts.nonempty_examples``).
"""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal[
    "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean"
]
REDUCTIONS: tuple[str, ...] = (
    "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean"
)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor | None,
    mode: Reduction,
    global_sequences: int,
    global_tokens: int,
    norm: float | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the global reduction of ``values``.

    Args:
        values: ``[R, T]`` per-token values (or ``[R]`` for ``seq-mean``).
        mask: ``[R, T]`` 0/1 mask of the tokens that count (ignored for ``seq-mean``).
        mode: one of ``REDUCTIONS``.
        global_sequences: sequences in the whole optimizer step (all ranks, all micro-batches);
            for the ``seq-mean-token-*`` modes, only those with at least one masked token.
        global_tokens: masked tokens in the whole optimizer step.
        norm: the constant ``C > 0`` of ``seq-mean-token-sum-norm`` (required there, ignored
            elsewhere).

    Returns:
        A scalar; summing it over all micro-batches of the step gives the global value.
    """
    if mode == "seq-mean":
        return values.sum() / max(global_sequences, 1)
    if mask is None:
        raise ValueError(f"reduction {mode!r} needs a token mask")
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / max(global_tokens, 1)
    if mode == "token-sum":
        return (values * mask).sum()
    if mode == "seq-mean-token-sum":
        return (values * mask).sum() / max(global_sequences, 1)
    if mode == "seq-mean-token-mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(global_sequences, 1)
    if mode == "seq-mean-token-sum-norm":
        if norm is None or norm <= 0:
            raise ValueError(f"reduction 'seq-mean-token-sum-norm' needs a constant norm > 0 (got {norm})")
        return (values * mask).sum() / (norm * max(global_sequences, 1))
    raise ValueError(f"unknown reduction {mode!r}; valid: {', '.join(REDUCTIONS)}")


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-row log-probability of the masked tokens.

    Args:
        token_logps: ``[R, T]`` per-token log-probs.
        mask: ``[R, T]`` 0/1 response mask.
        average: divide by the number of masked tokens (length-normalised, as SimPO).

    Returns:
        ``[R]``: summed (or averaged) log-probs. A row with no masked token gives 0.
    """
    mask = mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1.0)
    return total
