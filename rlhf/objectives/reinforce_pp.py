"""REINFORCE++ and REINFORCE++-baseline: token-level KL-penalised returns, whitened over the batch.

Hu 2025, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and Reward
Models" (arXiv:2501.03262). No critic: each response token's reward is a KL penalty to the
reference, the scalar reward is added on the last token, and the advantage is the reward-to-go
whitened over the whole rollout batch:

    r_t = -kl_coef * k1(old_logps_t, ref_token_logps_t)  (+ reward on the last response token)
    G_t = r_t + gamma * G_{t+1};   A = whiten(G)
    loss = aggregate(max(-A ratio, -A clip(ratio, 1 - clip_low, 1 + clip_high)))

``reinforce_pp_baseline`` first subtracts the group mean of the scalar rewards (the paper's variant
for outcome rewards with several samples per prompt; OpenRLHF ``reinforce_baseline``).

Defaults: ``kl_in_reward=True`` with the ``k1`` estimator and ``kl_coef=0.01`` (the paper's and
OpenRLHF's REINFORCE++ recipe: the per-token KL in the reward is what separates REINFORCE++ from a
plain whitened outcome reward). That needs a reference model; ``kl_coef=0`` runs without one.
``gamma=1`` (outcome rewards). With ``kl_in_reward=False`` the KL becomes a loss term as in GRPO.

Batch: see ``rlhf.objectives._online``; ``prepare`` also reads ``old_logps`` and
``ref_token_logps`` when the KL is in the reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.advantages import reinforce_pp, reinforce_pp_baseline
from rlhf.objectives._online import OnlineParams, checked_rewards, online_objective, reward_kl
from rlhf.objectives.base import register
from rlhf.policy_loss import KLEstimator

PAPER = "Hu 2025, REINFORCE++, arXiv:2501.03262"


@dataclass(frozen=True)
class ReinforcePPParams(OnlineParams):
    """``OnlineParams`` with REINFORCE++ defaults, plus ``gamma`` (discount per response token)."""

    kl_coef: float = 0.01
    kl_estimator: KLEstimator = "k1"
    kl_in_reward: bool = True
    gamma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1] (got {self.gamma})")


def _with_advantages(
    batch: dict[str, torch.Tensor], params: ReinforcePPParams, baseline: bool
) -> dict[str, torch.Tensor]:
    """``batch`` plus ``advantages`` ``[R, T]`` from ``reinforce_pp`` (or its group-mean baseline variant)."""
    who = "reinforce_pp_baseline.prepare" if baseline else "reinforce_pp.prepare"
    rewards = checked_rewards(batch, who)
    mask = batch["response_mask"].float()
    penalty = reward_kl(batch, params, who)
    if baseline:
        advantages, _ = reinforce_pp_baseline(rewards, batch["group"], mask, penalty, params.kl_coef, params.gamma)
    else:
        advantages, _ = reinforce_pp(rewards, mask, penalty, params.kl_coef, params.gamma)
    return {**batch, "advantages": advantages}


@torch.no_grad()
def prepare(batch: dict[str, torch.Tensor], params: ReinforcePPParams) -> dict[str, torch.Tensor]:
    """Write ``advantages`` ``[R, T]``: whitened returns of the KL-penalised token rewards."""
    return _with_advantages(batch, params, baseline=False)


@torch.no_grad()
def prepare_baseline(batch: dict[str, torch.Tensor], params: ReinforcePPParams) -> dict[str, torch.Tensor]:
    """As ``prepare``, after subtracting each group's mean scalar reward."""
    return _with_advantages(batch, params, baseline=True)


REINFORCE_PP = register(online_objective("reinforce_pp", ReinforcePPParams, prepare, PAPER))
REINFORCE_PP_BASELINE = register(
    online_objective("reinforce_pp_baseline", ReinforcePPParams, prepare_baseline, PAPER + " (baseline variant)")
)
