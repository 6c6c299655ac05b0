"""GRPO: group-normalised outcome advantages with the PPO-clip loss.

Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
Models" (arXiv:2402.03300). For each prompt a group of completions is sampled; a completion's
advantage is its reward standardised within its group, given to every one of its tokens:

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)        (norm_std=False: Dr. GRPO, no division)
    loss = aggregate(max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high)))
           + kl_coef * aggregate(k3(token_logps, ref_token_logps))

Defaults: no KL (``kl_coef=0``: DAPO and Dr. GRPO drop it for verifiable rewards, and no reference
model is started), symmetric clip 0.2 (set ``clip_high=0.28`` for DAPO's clip-higher),
``token-mean`` reduction (verl's default and DAPO's choice; the paper's per-sequence mean is
``seq-mean-token-mean``).

Batch: see ``rlhf.objectives._online``. Shapes: ``token_logps`` ``[R, T]``; ``rewards``, ``group``
``[R]``; ``advantages`` ``[R, T]`` written by ``prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from rlhf.advantages import group_normalized
from rlhf.objectives._online import OnlineParams, online_objective, outcome_prepare
from rlhf.objectives.base import register


@dataclass(frozen=True)
class GRPOParams(OnlineParams):
    """``OnlineParams`` plus ``norm_std`` (divide by the group's std) and ``eps`` (added to it)."""

    norm_std: bool = True
    eps: float = 1e-6


@torch.no_grad()
def prepare(batch: dict[str, torch.Tensor], params: GRPOParams) -> dict[str, torch.Tensor]:
    """Write ``advantages`` ``[R, T]``: the group-normalised reward on every response token."""
    estimator = partial(group_normalized, norm_std=params.norm_std, eps=params.eps)
    return outcome_prepare(batch, params, "grpo.prepare", estimator)


GRPO = register(
    online_objective("grpo", GRPOParams, prepare, "Shao et al. 2024, DeepSeekMath (GRPO), arXiv:2402.03300")
)
