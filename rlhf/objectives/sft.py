"""SFT: supervised fine-tuning, the token-level negative log-likelihood of the completion.

Per row ``(x, y)``: ``loss = -sum_t log pi(y_t | x, y_<t)`` over the completion tokens only
(``response_mask``; prompt tokens are context, never targets), reduced as a **token mean over the
global batch** (every completion token of the optimizer step weighs the same, as TRL's
``SFTTrainer`` with ``completion_only_loss`` and the usual causal-LM loss do). Rows that share a
prompt share its forward through the learner's packing, like any other objective.

Data kind ``completions``: ``{prompt, completion}`` rows (a pairs file is read as its chosen
answers), collated as ``R`` right-padded rows. The held-out implicit reward is the
length-averaged log-prob of a completion (as SimPO's, without beta), so SFT stages report
held-out preference accuracy like the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.objectives.base import Batch, GlobalCounts, Objective, register
from rlhf.reduction import aggregate, sequence_logps


@dataclass(frozen=True)
class Params:
    """SFT has no hyper-parameters of its own (learning rate etc. are train settings)."""


def loss(token_logps: torch.Tensor, batch: Batch, params: Params,
         counts: GlobalCounts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NLL of one micro-batch: ``token_logps`` ``[R, T]``, ``batch["response_mask"]`` ``[R, T]``.

    Returns this micro-batch's share of the global token mean (``counts.tokens`` completion
    tokens in the step) and the detached metrics ``loss`` and ``length/completion``.
    """
    mask = batch["response_mask"]
    nll = aggregate(-token_logps.float(), mask, "token-mean", counts.examples, counts.tokens)
    length = mask.float().sum() / max(counts.examples, 1)
    return nll, {"loss": nll.detach(), "length/completion": length.detach()}


def implicit_reward(token_logps: torch.Tensor, batch: Batch, params: Params) -> torch.Tensor:
    """``[R]`` length-averaged completion log-prob (held-out preference accuracy)."""
    return sequence_logps(token_logps.float(), batch["response_mask"], average=True)


register(
    Objective(
        name="sft",
        mode="offline",
        data="completions",
        params=Params,
        fields=("response_mask",),
        output="token_logps",
        needs_reference=lambda params: False,
        loss=loss,
        implicit_reward=implicit_reward,
        paper="supervised fine-tuning (completion-only causal-LM loss)",
    )
)
