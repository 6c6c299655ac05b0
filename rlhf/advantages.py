"""Advantage estimators for the online family (GRPO, RLOO, REINFORCE++), as pure torch functions.

Shapes: ``R`` sampled completions (rows), ``T`` positions. ``rewards`` is ``[R]`` (one scalar per
completion, from the verifier or reward model); ``group`` is ``[R]`` long, equal for the samples of
one prompt (any integer ids, in any order); ``mask`` is the ``[R, T]`` 0/1 response mask. Nothing
here needs gradients; callers run it once per rollout batch (see ``Objective.prepare``).

Reference behaviour: verl ``trainer/ppo/core_algos.py`` and OpenRLHF ``experience_maker.py``.
Where they differ, each docstring says which one is followed and why.
"""

from __future__ import annotations

import torch


def _group_stats(rewards: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row ``(n, sum, sum of squared deviations)`` of the row's group, each ``[R]`` float."""
    if rewards.dim() != 1 or group.shape != rewards.shape:
        raise ValueError(f"rewards and group must both be [R]; got {tuple(rewards.shape)} and {tuple(group.shape)}")
    values = rewards.double()
    _, index = torch.unique(group, return_inverse=True)
    n_groups = int(index.max()) + 1 if index.numel() else 0
    count = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, index, torch.ones_like(values))
    total = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, index, values)
    mean = total / count
    sq_dev = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, index, (values - mean[index]) ** 2)
    return count[index], total[index], sq_dev[index]


def group_normalized(
    rewards: torch.Tensor, group: torch.Tensor, norm_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO advantage: ``(r_i - mean_g) / (std_g + eps)``, or ``r_i - mean_g`` without ``norm_std``.

    Shao et al. 2024, DeepSeekMath (arXiv:2402.03300); ``norm_std=False`` is Dr. GRPO
    (Liu et al. 2025, arXiv:2503.20783).

    Args:
        rewards: ``[R]`` scalar rewards.
        group: ``[R]`` group ids (samples of the same prompt share one).
        norm_std: divide by the group's standard deviation.
        eps: added to the standard deviation.

    Returns:
        ``[R]`` float advantages, in ``rewards``' dtype.

    The standard deviation is the unbiased one (``n - 1``), as verl's ``torch.std``; OpenRLHF also
    uses ``torch.std`` but adds ``1e-9``. A group whose rewards are all equal gets 0. A group of one
    sample gets 0 (no baseline exists); verl instead leaves such a sample's raw reward
    (mean 0, std 1), which mixes scales with the normalised rows.
    """
    n, total, sq_dev = _group_stats(rewards, group)
    centred = rewards.double() - total / n
    if norm_std:
        std = torch.sqrt(sq_dev / (n - 1).clamp(min=1.0))
        centred = centred / (std + eps)
    return torch.where(n > 1, centred, torch.zeros_like(centred)).to(rewards.dtype)


def leave_one_out(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """RLOO advantage: ``r_i - mean_{j != i in g} r_j`` (Ahmadian et al. 2024, arXiv:2402.14740).

    Args:
        rewards: ``[R]`` scalar rewards.
        group: ``[R]`` group ids.

    Returns:
        ``[R]`` advantages, in ``rewards``' dtype. Equal to ``n / (n - 1) * (r_i - mean_g)``, as in
        verl and OpenRLHF. A group of one sample gets 0 (verl keeps its raw reward; OpenRLHF
        divides by zero).
    """
    n, total, _ = _group_stats(rewards, group)
    values = rewards.double()
    advantage = values - (total - values) / (n - 1).clamp(min=1.0)
    return torch.where(n > 1, advantage, torch.zeros_like(advantage)).to(rewards.dtype)


def to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-row ``[R]`` advantage to every response token: ``[R, T]``, 0 outside ``mask``."""
    return advantages.unsqueeze(-1) * mask.to(advantages.dtype)


def last_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[R, T]``: each row's scalar reward placed on its last response token, 0 elsewhere.

    A row with no response token gets no reward.
    """
    mask = mask.to(torch.bool)
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=-1).values
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    out[rows, last[rows]] = rewards[rows]
    return out


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Reward-to-go ``G_t = sum_{s >= t} gamma^(k(t, s)) r_s`` over the response tokens.

    Args:
        token_rewards: ``[R, T]`` per-token rewards (values outside ``mask`` are ignored).
        mask: ``[R, T]`` 0/1 response mask.
        gamma: discount per response token, in ``(0, 1]``.

    Returns:
        ``[R, T]`` returns, 0 outside ``mask``. ``k(t, s)`` counts the response tokens from ``t`` up
        to ``s`` (excluded), so masked-out positions inside a row (e.g. tool output in a multi-turn
        rollout) neither discount nor reset the return; with one contiguous response per row this
        is the usual ``G_t = r_t + gamma * G_{t+1}`` (verl / OpenRLHF REINFORCE++).
    """
    mask = mask.to(token_rewards.dtype)
    rewards = token_rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[-1])):
        running = torch.where(mask[:, t] > 0, rewards[:, t] + gamma * running, running)
        returns[:, t] = running * mask[:, t]
    return returns


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Masked whitening over the whole batch: ``(v - mean) / sqrt(var + eps)``.

    Args:
        values: ``[R, T]``.
        mask: ``[R, T]`` 0/1; statistics are over the masked entries of all rows together.
        shift_mean: when False the mean is added back (only the scale changes).
        eps: added to the variance.

    Returns:
        ``[R, T]``, 0 outside ``mask``. The variance is unbiased (Bessel's ``n / (n - 1)``) as in
        verl's ``masked_whiten``; OpenRLHF uses the biased variance and ``max(var, eps)``. A batch with
        a single masked entry has variance 0 (no correction).
    """
    mask = mask.to(values.dtype)
    n = mask.sum()
    mean = (values * mask).sum() / n.clamp(min=1.0)
    var = (((values - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1.0)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def reward_with_kl(
    rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """REINFORCE++ token rewards ``[R, T]``: ``-kl_coef * kl_t`` on every response token, plus the
    scalar reward on the last response token.

    Args:
        rewards: ``[R]`` scalar rewards.
        mask: ``[R, T]`` response mask.
        kl: ``[R, T]`` per-token KL estimate of the behaviour policy against the reference (e.g.
            ``policy_loss.kl(old_logps, ref_token_logps, "k1")``), or None for no penalty.
        kl_coef: penalty weight.
    """
    out = last_token_rewards(rewards, mask)
    if kl is not None and kl_coef:
        out = out - kl_coef * kl * mask.to(kl.dtype)
    return out


def reinforce_pp(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262): whitened reward-to-go of the KL-penalised token rewards.

    Returns ``(advantages, returns)``, both ``[R, T]`` and 0 outside ``mask``: the returns are
    ``discounted_returns(reward_with_kl(...))`` and the advantages their whitening over the batch.
    Same as verl ``reinforce_plus_plus`` and OpenRLHF ``reinforce``.
    """
    returns = discounted_returns(reward_with_kl(rewards, mask, kl, kl_coef), mask, gamma)
    return whiten(returns, mask), returns


def reinforce_pp_baseline(
    rewards: torch.Tensor,
    group: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline: subtract the group mean of the scalar reward, then ``reinforce_pp``.

    Follows OpenRLHF ``reinforce_baseline`` (the paper's authors' code): the group mean is taken of
    the scalar rewards only, the KL penalty is then added per token, returns are accumulated and
    whitened over the batch. verl ``reinforce_plus_plus_baseline`` differs: it subtracts the group
    mean of each row's *summed* token rewards (KL included) and broadcasts that scalar to every
    token without accumulating. With no KL and ``gamma = 1`` the two agree. A group of one sample
    has a centred reward of 0 (as OpenRLHF; verl uses a baseline of 0 there).
    """
    centred = group_normalized(rewards, group, norm_std=False)
    return reinforce_pp(centred, mask, kl, kl_coef, gamma)
