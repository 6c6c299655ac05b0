"""A custom objective registered from outside the package: the SLiC-HF calibration loss.

SLiC-HF (Zhao et al. 2023), rank-calibration part: ``max(0, delta - logp(chosen) + logp(rejected))``
on summed log-probs, no reference model. One file, one ``register`` call; the learner and the
driver need no edit. Use it with::

    python -m rlhf.run --import examples.custom_objective --algo slic --max-steps 2

(``--import`` loads the module, and so registers the objective, before the config is built.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.objectives import GlobalCounts, Objective, register
from rlhf.reduction import aggregate, sequence_logps


@dataclass(frozen=True)
class Params:
    delta: float = 1.0  # the margin the chosen log-prob must beat the rejected one by


def loss(token_logps: torch.Tensor, batch, params: Params, counts: GlobalCounts):
    """token_logps ``[2P, T]`` (chosen rows then rejected rows) -> this micro-batch's share of the mean hinge."""
    seq = sequence_logps(token_logps, batch["response_mask"])
    chosen, rejected = seq.chunk(2)
    per_pair = torch.relu(params.delta - chosen + rejected)
    value = aggregate(per_pair, None, "seq-mean", counts.examples, counts.tokens)
    accuracy = aggregate((chosen > rejected).float(), None, "seq-mean", counts.examples, counts.tokens)
    return value, {"loss": value.detach(), "rewards/accuracy": accuracy.detach()}


def implicit_reward(token_logps: torch.Tensor, batch, params: Params) -> torch.Tensor:
    return sequence_logps(token_logps, batch["response_mask"])


SLIC = register(Objective(
    name="slic", mode="offline", data="pairs", params=Params, fields=("response_mask",), output="token_logps",
    needs_reference=lambda p: False, loss=loss, implicit_reward=implicit_reward,
    paper="Zhao et al. 2023, SLiC-HF",
))
