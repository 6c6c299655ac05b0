"""Loss reduction over global batch totals, and per-sequence log-prob sums.

Every loss in the project is reduced here, so that the value and the gradient of one optimizer
step do not depend on how the global batch is split over data-parallel ranks and
gradient-accumulation micro-batches: each micro-batch contributes ``sum / global_denominator``,
and the learner sums the contributions (undoing DeepSpeed's averaging, see
``actors.learner``).

Modes (names as in verl / OpenRLHF):

- ``token-mean``: sum of every masked token's value / global number of masked tokens.
- ``seq-mean-token-sum``: per sequence, the sum of its masked token values; mean over the
  global number of sequences.
- ``seq-mean-token-mean``: per sequence, the mean of its masked token values; mean over the
  global number of sequences. (A sequence with no masked token contributes 0.)
- ``seq-mean``: values are already per sequence ``[R]``; mean over the global number of
  sequences (or pairs).
"""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean"]
REDUCTIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor | None,
    mode: Reduction,
    global_sequences: int,
    global_tokens: int,
) -> torch.Tensor:
    """This micro-batch's share of the global mean of ``values``.

    Args:
        values: ``[R, T]`` per-token values (or ``[R]`` for ``seq-mean``).
        mask: ``[R, T]`` 0/1 mask of the tokens that count (ignored for ``seq-mean``).
        mode: one of ``REDUCTIONS``.
        global_sequences: sequences in the whole optimizer step (all ranks, all micro-batches).
        global_tokens: masked tokens in the whole optimizer step.

    Returns:
        A scalar; summing it over all micro-batches of the step gives the global mean.
    """
    if mode == "seq-mean":
        return values.sum() / max(global_sequences, 1)
    if mask is None:
        raise ValueError(f"reduction {mode!r} needs a token mask")
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / max(global_tokens, 1)
    if mode == "seq-mean-token-sum":
        return (values * mask).sum() / max(global_sequences, 1)
    if mode == "seq-mean-token-mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(global_sequences, 1)
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
