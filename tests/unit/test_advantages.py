"""Advantage estimators: hand-derived values, and vectorised code against slow loops."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.advantages import (
    discounted_returns,
    group_normalized,
    last_token_rewards,
    leave_one_out,
    reinforce_pp,
    reinforce_pp_baseline,
    reward_with_kl,
    to_tokens,
    whiten,
)


def close(actual: torch.Tensor, expected, tol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=0)


# ---------------------------------------------------------------- group normalisation (GRPO)


def test_group_normalized_with_std():
    # group 7: rewards 1, 2, 3 -> mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1
    # group 3: rewards 5, 5 -> std 0 -> advantages 0 (not nan)
    rewards = torch.tensor([1.0, 5.0, 2.0, 5.0, 3.0])
    group = torch.tensor([7, 3, 7, 3, 7])
    s = 1.0 + 1e-6
    close(group_normalized(rewards, group, norm_std=True), [-1 / s, 0.0, 0.0, 0.0, 1 / s])


def test_group_normalized_unbiased_std_value():
    # rewards 0, 0, 1, 1 -> mean 0.5, squared deviations sum to 1, unbiased var 1/3
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0])
    group = torch.zeros(4, dtype=torch.long)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    close(group_normalized(rewards, group), [-a, a, -a, a])


def test_group_normalized_without_std():
    rewards = torch.tensor([1.0, 4.0, 10.0, 20.0])
    group = torch.tensor([0, 0, 1, 1])
    close(group_normalized(rewards, group, norm_std=False), [-1.5, 1.5, -5.0, 5.0])


def test_group_of_one_gets_zero():
    rewards = torch.tensor([3.0, 1.0, 2.0])
    group = torch.tensor([0, 1, 1])
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # the pair: mean 1.5, unbiased std sqrt(0.5)
    close(group_normalized(rewards, group, norm_std=True), [0.0, -a, a])
    close(group_normalized(rewards, group, norm_std=False), [0.0, -0.5, 0.5])
    close(leave_one_out(rewards, group), [0.0, -1.0, 1.0])


# ---------------------------------------------------------------- leave-one-out (RLOO)


def test_leave_one_out():
    # baselines: (2 + 6) / 2 = 4, (1 + 6) / 2 = 3.5, (1 + 2) / 2 = 1.5; second group: 10 vs 0
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 10.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    close(leave_one_out(rewards, group), [-3.0, -1.5, 4.5, -10.0, 10.0])


def _slow_group_normalized(rewards, group, norm_std, eps=1e-6):
    out = []
    for i in range(len(rewards)):
        members = [float(rewards[j]) for j in range(len(rewards)) if int(group[j]) == int(group[i])]
        n = len(members)
        if n == 1:
            out.append(0.0)
            continue
        mean = sum(members) / n
        centred = float(rewards[i]) - mean
        if norm_std:
            std = math.sqrt(sum((m - mean) ** 2 for m in members) / (n - 1))
            centred /= std + eps
        out.append(centred)
    return out


def _slow_leave_one_out(rewards, group):
    out = []
    for i in range(len(rewards)):
        others = [float(rewards[j]) for j in range(len(rewards)) if j != i and int(group[j]) == int(group[i])]
        out.append(float(rewards[i]) - sum(others) / len(others) if others else 0.0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_matches_loops(seed):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(40, generator=gen)
    rewards[::5] = torch.round(rewards[::5])  # some ties
    group = torch.randint(0, 12, (40,), generator=gen) * 3 - 5  # arbitrary ids, some groups of one
    for norm_std in (True, False):
        close(group_normalized(rewards, group, norm_std), _slow_group_normalized(rewards, group, norm_std), 1e-5)
    close(leave_one_out(rewards, group), _slow_leave_one_out(rewards, group), 1e-5)


# ---------------------------------------------------------------- token-level helpers


def test_to_tokens_and_last_token():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    close(to_tokens(torch.tensor([2.0, -1.0, 5.0]), mask), [[0, 2, 2, 0], [0, 0, -1, -1], [0, 0, 0, 0]])
    close(last_token_rewards(torch.tensor([2.0, -1.0, 5.0]), mask), [[0, 0, 2, 0], [0, 0, 0, -1], [0, 0, 0, 0]])


def test_discounted_returns_gamma_half():
    # prompt at 0, response 1..3, padding at 4; values outside the mask are ignored
    token_rewards = torch.tensor([[9.0, 1.0, 2.0, 4.0, 7.0]])
    mask = torch.tensor([[0, 1, 1, 1, 0]])
    # G3 = 4; G2 = 2 + 0.5 * 4 = 4; G1 = 1 + 0.5 * 4 = 3
    close(discounted_returns(token_rewards, mask, 0.5), [[0.0, 3.0, 4.0, 4.0, 0.0]])


def test_discounted_returns_skip_masked_gap():
    # a masked-out position inside the response neither discounts nor resets: G0 = 1 + 0.5 * 2
    close(discounted_returns(torch.tensor([[1.0, 5.0, 2.0]]), torch.tensor([[1, 0, 1]]), 0.5), [[2.0, 0.0, 2.0]])


def test_whiten():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    s = 1 / math.sqrt(1 + 1e-8)
    close(whiten(values, mask), [[-s, 0.0, s, 0.0]])
    close(whiten(values, mask, shift_mean=False), [[2 - s, 2.0, 2 + s, 0.0]])


def test_whiten_across_rows():
    values = torch.tensor([[0.0, 4.0], [8.0, -3.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # entries 0, 4, 8: mean 4, unbiased var (16 + 0 + 16) / 2 = 16, std 4
    close(whiten(values, mask), [[-1.0, 0.0], [1.0, 0.0]])


# ---------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_with_kl_in_reward():
    # row 0: response at 2..4, reward 1, kl 0.5, -1, 2; row 1: response at 1..2, reward 0, kl 1, 1
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    kl = torch.tensor([[3.0, 3.0, 0.5, -1.0, 2.0], [3.0, 1.0, 1.0, 3.0, 3.0]])  # 3s are outside the mask
    rewards = torch.tensor([1.0, 0.0])
    # token rewards (coef 0.1): row 0 -0.05, 0.1, -0.2 + 1 = 0.8; row 1: -0.1, -0.1
    close(reward_with_kl(rewards, mask, kl, 0.1), [[0, 0, -0.05, 0.1, 0.8], [0, -0.1, -0.1, 0, 0]])
    advantages, returns = reinforce_pp(rewards, mask, kl, kl_coef=0.1, gamma=1.0)
    # returns: row 0 0.85, 0.9, 0.8; row 1 -0.2, -0.1
    close(returns, [[0, 0, 0.85, 0.9, 0.8], [0, -0.2, -0.1, 0, 0]])
    # mean 2.25 / 5 = 0.45; deviations 0.4, 0.45, 0.35, -0.65, -0.55; unbiased var 1.21 / 4, std 0.55
    close(advantages, [[0, 0, 0.4 / 0.55, 0.45 / 0.55, 0.35 / 0.55], [0, -0.65 / 0.55, -0.55 / 0.55, 0, 0]], 1e-5)


def test_reinforce_pp_baseline():
    # group 0: rewards 1, 3 -> centred -1, 1; a lone sample (group 1) centres to 0; no KL, gamma 1
    rewards = torch.tensor([1.0, 3.0, 5.0])
    group = torch.tensor([0, 0, 1])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [0, 1, 1]])
    advantages, returns = reinforce_pp_baseline(rewards, group, mask)
    close(returns, [[0, -1, -1], [0, 1, 1], [0, 0, 0]])
    # token values -1, -1, 1, 1, 0, 0: mean 0, unbiased var 4 / 5
    a = 1 / math.sqrt(0.8)
    close(advantages, [[0, -a, -a], [0, a, a], [0, 0, 0]], 1e-5)


def test_reinforce_pp_baseline_kl_after_centring():
    # the group mean is of the scalar rewards; the KL penalty is added per token afterwards
    rewards = torch.tensor([2.0, 0.0])
    group = torch.tensor([4, 4])
    mask = torch.tensor([[1, 1], [1, 1]])
    kl = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    _, returns = reinforce_pp_baseline(rewards, group, mask, kl, kl_coef=0.5)
    # row 0: centred 1 -> token rewards -0.5, 1 -> returns 0.5, 1; row 1: centred -1 -> -1, -1
    close(returns, [[0.5, 1.0], [-1.0, -1.0]])
