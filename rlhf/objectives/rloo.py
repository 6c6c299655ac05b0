"""RLOO: REINFORCE with a leave-one-out baseline, optimised with the PPO-clip loss.

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
Human Feedback in LLMs" (arXiv:2402.14740). Each completion's baseline is the mean reward of the
other completions of its prompt, and the advantage is given to every one of its tokens:

    A_i = r_i - mean_{j != i in g} r_j
    loss = aggregate(max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high)))  [+ KL term]

With one optimisation epoch on fresh samples the ratio is 1 and the clip never binds: this is
the paper's plain REINFORCE estimator. Defaults: no KL (no reference model), clip 0.2,
``token-mean``. The paper puts the KL in the reward (``kl_in_reward=True``: each row's summed
penalty is subtracted from its reward before the baseline); the default keeps it in the loss,
like GRPO, so the two differ only in their advantages.

Batch: see ``rlhf.objectives._online``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.advantages import leave_one_out
from rlhf.objectives._online import OnlineParams, online_objective, outcome_prepare
from rlhf.objectives.base import register


@dataclass(frozen=True)
class RLOOParams(OnlineParams):
    """``OnlineParams`` with RLOO's defaults (no KL; k3 when one is added to the loss)."""


@torch.no_grad()
def prepare(batch: dict[str, torch.Tensor], params: RLOOParams) -> dict[str, torch.Tensor]:
    """Write ``advantages`` ``[R, T]``: the leave-one-out advantage on every response token."""
    return outcome_prepare(batch, params, "rloo.prepare", leave_one_out)


RLOO = register(
    online_objective("rloo", RLOOParams, prepare, "Ahmadian et al. 2024, Back to Basics (RLOO), arXiv:2402.14740")
)
