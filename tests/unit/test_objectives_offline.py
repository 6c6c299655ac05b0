"""Offline objectives (SimPO, DPO, KTO, reward modeling): hand-derived values, split invariance,
gradient flow, KTO batch shapes, length metrics, SimPO's margin schedule, and the registry's errors.

Expected values are worked out by hand from the small tensors below (``math`` only); position 0
of every row is the prompt (mask 0) and masked-out positions hold junk (-9 / -7) that must not
count.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlhf.objectives import GlobalCounts, get, names, register

J, K = -9.0, -7.0  # junk policy / reference values at masked-out positions


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(rows: list[list[float]], grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, requires_grad=grad)


def counts(examples: int, mask: torch.Tensor) -> GlobalCounts:
    return GlobalCounts(examples=examples, tokens=int(mask.sum()))


# Two pairs: rows 0, 1 chosen; rows 2, 3 rejected.
MASK = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 1, 1]])
ATTN = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
# By hand: lengths chosen 2, 3; rejected 1, 2; prompts (chosen rows: attended - response) 1, 1
LOGPS = [[J, -1.0, -2.0, J], [J, -2.0, -1.0, -3.0], [J, -3.0, J, J], [J, J, -1.0, -2.0]]
REF = [[K, -2.0, -2.0, K], [K, -1.0, -2.0, -2.0], [K, -2.0, K, K], [K, K, -1.0, -2.0]]
# By hand: sums      policy -3, -6, -3, -3   ref -4, -5, -2, -3   -> rho 1, -1, -1, 0
#          averages  policy -1.5, -2, -3, -1.5   ref -2, -5/3, -2, -1.5 -> rho 0.5, -1/3, -1, 0
AVG_C, AVG_R = [-1.5, -2.0], [-3.0, -1.5]


def pair_batch(ref: bool = True) -> dict[str, torch.Tensor]:
    batch = {"response_mask": MASK, "attention_mask": ATTN}
    if ref:
        batch["ref_token_logps"] = t(REF)
    return batch


def run(name: str, output: torch.Tensor, batch, params=None, examples: int = 2, **overrides):
    objective = get(name)
    params = params or objective.make_params(overrides)
    objective.check_batch(batch, params)
    return objective.loss(output, batch, params, counts(examples, batch.get("response_mask", torch.ones(1))))


def check_metrics(metrics: dict[str, torch.Tensor]) -> None:
    for key, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key


# ---------------------------------------------------------------------------------------- SimPO


@pytest.mark.parametrize(
    "overrides, per_pair",
    [
        # beta * (a_w - a_l - 0.5) with beta = 2: pair 0 -> 2 * 1.0 = 2, pair 1 -> 2 * (-1.0) = -2
        ({}, [-logsig(2.0), -logsig(-2.0)]),
        ({"label_smoothing": 0.1}, [-0.9 * logsig(2.0) - 0.1 * logsig(-2.0), -0.9 * logsig(-2.0) - 0.1 * logsig(2.0)]),
        ({"loss_type": "hinge"}, [max(0.0, 1 - 2.0), max(0.0, 1 + 2.0)]),
        ({"sft_weight": 0.5}, [-logsig(2.0) + 0.5 * 1.5, -logsig(-2.0) + 0.5 * 2.0]),
        ({"beta": 1.0, "gamma_beta_ratio": 0.0}, [-logsig(1.5), -logsig(-0.5)]),
    ],
)
def test_simpo_hand_values(overrides, per_pair):
    loss, metrics = run("simpo", t(LOGPS), pair_batch(ref=False), **overrides)
    assert loss.item() == pytest.approx(sum(per_pair) / 2, rel=1e-6)
    assert metrics["loss"].item() == pytest.approx(loss.item())
    beta = overrides.get("beta", 2.0)
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * (-1.5 - 2.0) / 2)
    assert metrics["rewards/rejected"].item() == pytest.approx(beta * (-3.0 - 1.5) / 2)
    assert metrics["rewards/accuracy"].item() == pytest.approx(0.5)
    assert metrics["rewards/margin"].item() == pytest.approx(beta * (1.5 - 0.5) / 2)
    assert ("sft_loss" in metrics) == ("sft_weight" in overrides)
    check_metrics(metrics)


def test_simpo_implicit_reward_and_gradient():
    logps = t(LOGPS, grad=True)
    reward = get("simpo").implicit_reward(logps, pair_batch(ref=False), get("simpo").make_params())
    assert reward.tolist() == pytest.approx([2 * a for a in AVG_C + AVG_R])
    loss, _ = run("simpo", logps, pair_batch(ref=False))
    loss.backward()
    assert torch.all((logps.grad != 0) == MASK.bool())  # every response token, nothing else
    # d/d token of -log sigmoid(z)/2 at pair 0 (z = 2): -(1 - sig(2)) * beta / len / 2 for a chosen token
    assert logps.grad[0, 1].item() == pytest.approx(-(1 - sig(2.0)) * 2 / 2 / 2, rel=1e-5)


# ------------------------------------------------------------------------------------------ DPO


@pytest.mark.parametrize(
    "overrides, per_pair",
    [
        # summed rho: chosen 1, -1; rejected -1, 0 -> h = 2, -1; beta = 0.1
        ({}, [-logsig(0.2), -logsig(-0.1)]),
        ({"beta": 0.5}, [-logsig(1.0), -logsig(-0.5)]),
        ({"label_smoothing": 0.2}, [-0.8 * logsig(0.2) - 0.2 * logsig(-0.2), -0.8 * logsig(-0.1) - 0.2 * logsig(0.1)]),
        # IPO on averaged rho: chosen 0.5, -1/3; rejected -1, 0 -> h = 1.5, -1/3; 1 / (2 beta) = 5
        ({"loss_type": "ipo"}, [(1.5 - 5) ** 2, (-1 / 3 - 5) ** 2]),
    ],
)
def test_dpo_hand_values(overrides, per_pair):
    loss, metrics = run("dpo", t(LOGPS), pair_batch(), **overrides)
    assert loss.item() == pytest.approx(sum(per_pair) / 2, rel=1e-6)
    beta = overrides.get("beta", 0.1)
    rho_c, rho_r = [1.0, -1.0], [-1.0, 0.0]  # summed for every loss type, IPO included
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * sum(rho_c) / 2, abs=1e-7)
    assert metrics["rewards/rejected"].item() == pytest.approx(beta * sum(rho_r) / 2)
    assert metrics["rewards/accuracy"].item() == pytest.approx(0.5)  # pair 0 right, pair 1 wrong
    assert metrics["rewards/margin"].item() == pytest.approx(beta * (sum(rho_c) - sum(rho_r)) / 2)
    check_metrics(metrics)


def test_dpo_implicit_reward_and_gradient():
    logps, batch = t(LOGPS, grad=True), pair_batch()
    batch["ref_token_logps"].requires_grad_(True)
    reward = get("dpo").implicit_reward(logps, batch, get("dpo").make_params())
    assert reward.tolist() == pytest.approx([0.1, -0.1, -0.1, 0.0])
    loss, _ = run("dpo", logps, batch)
    loss.backward()
    assert batch["ref_token_logps"].grad is None  # the reference is a constant
    assert torch.all((logps.grad != 0) == MASK.bool())
    # pair 0: d/d chosen token of -log sigmoid(0.1 h) / 2 = -(1 - sig(0.2)) * 0.1 / 2
    assert logps.grad[0, 1].item() == pytest.approx(-(1 - sig(0.2)) * 0.1 / 2, rel=1e-5)


def test_dpo_ipo_rewards_summed_loss_averaged():
    # one pair where sums and averages disagree: chosen rho per token 0.4, 0.4 (sum 0.8, mean 0.4);
    # rejected rho 0.6 on one token (sum 0.6, mean 0.6)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    batch = {"response_mask": mask, "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "ref_token_logps": t([[K, -1.4, -2.4], [K, -1.6, K]])}
    logps = t([[J, -1.0, -2.0], [J, -1.0, J]], grad=True)
    objective = get("dpo")
    params = objective.make_params({"loss_type": "ipo", "beta": 0.5})
    loss, metrics = objective.loss(logps, batch, params, counts(1, mask))
    # loss on averages: (0.4 - 0.6 - 1 / (2 * 0.5)) ** 2 = 1.44
    assert loss.item() == pytest.approx(1.44, rel=1e-5)
    # rewards on sums: 0.5 * 0.8 = 0.4 and 0.5 * 0.6 = 0.3 -> chosen wins (averages would say it loses)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.4, rel=1e-5)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.3, rel=1e-5)
    assert metrics["rewards/accuracy"].item() == 1.0
    assert metrics["rewards/margin"].item() == pytest.approx(0.1, rel=1e-4)
    assert objective.implicit_reward(logps, batch, params).tolist() == pytest.approx([0.4, 0.3], rel=1e-5)
    loss.backward()
    # d loss / d chosen token = 2 * (-1.2) * (1 / 2 tokens) = -1.2; d / d rejected token = 2 * (-1.2) * (-1) = 2.4
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, -1.2, -1.2, 0.0, 2.4, 0.0], rel=1e-5)


# ------------------------------------------------------------------------------------------ KTO

# Rows 0, 1 real (rho 1, -1 as above); rows 2, 3 mismatched with rho 0.5 and 1.5 -> z0 = 1.0.
KTO_LOGPS = [LOGPS[0], LOGPS[1], [J, -1.5, J, J], [J, J, -1.0, -0.5]]
KTO_REF = [REF[0], REF[1], [K, -2.0, K, K], [K, K, -1.5, -1.5]]


def kto_batch(label: list[float], logps=KTO_LOGPS, ref=KTO_REF, mask=MASK) -> dict[str, torch.Tensor]:
    return {"response_mask": mask, "ref_token_logps": t(ref), "label": torch.tensor(label)}


@pytest.mark.parametrize(
    "label, overrides, per_row",
    [
        ([1.0, 0.0], {}, [1 - sig(0.1 * (1 - 1)), 1 - sig(0.1 * (1 - -1))]),
        ([1.0, 1.0], {}, [1 - sig(0.0), 1 - sig(0.1 * (-1 - 1))]),  # a micro-batch with one label only
        ([0.0, 0.0], {}, [1 - sig(0.1 * (1 - 1)), 1 - sig(0.1 * (1 - -1))]),
        ([1.0, 0.0], {"desirable_weight": 2.0, "undesirable_weight": 0.5}, [2 * 0.5, 0.5 * (1 - sig(0.2))]),
        ([1.0, 0.0], {"beta": 1.0}, [1 - sig(0.0), 1 - sig(2.0)]),
    ],
)
def test_kto_hand_values(label, overrides, per_row):
    loss, metrics = run("kto", t(KTO_LOGPS), kto_batch(label), **overrides)
    assert loss.item() == pytest.approx(sum(per_row) / 2, rel=1e-6)
    beta = overrides.get("beta", 0.1)
    rewards = [beta * 1.0, beta * -1.0]  # real rows' rho: 1, -1
    assert metrics["kl"].item() == pytest.approx(1.0)
    assert metrics["rewards/chosen_sum"].item() == pytest.approx(sum(r for r, y in zip(rewards, label) if y) / 2)
    assert metrics["rewards/rejected_sum"].item() == pytest.approx(sum(r for r, y in zip(rewards, label) if not y) / 2)
    assert metrics["count/chosen"].item() == pytest.approx(sum(label) / 2)
    assert metrics["count/rejected"].item() == pytest.approx(1 - sum(label) / 2)
    check_metrics(metrics)


def test_kto_reference_point_clamped_at_zero():
    ref = [REF[0], REF[1], [K, -1.0, K, K], [K, K, 0.0, 0.0]]  # mismatched rho -0.5, -1.5 -> z0 = max(-1, 0)
    loss, metrics = run("kto", t(KTO_LOGPS), kto_batch([1.0, 0.0], ref=ref))
    assert metrics["kl"].item() == 0.0
    assert loss.item() == pytest.approx((1 - sig(0.1 * 1) + 1 - sig(0.1 * (0 + 1))) / 2, rel=1e-6)


def test_kto_gradient_skips_mismatched_rows():
    logps = t(KTO_LOGPS, grad=True)
    loss, _ = run("kto", logps, kto_batch([1.0, 0.0]))
    loss.backward()
    assert torch.all(logps.grad[2:] == 0)  # z0 is detached
    assert torch.all((logps.grad[:2] != 0) == MASK[:2].bool())
    # desirable row 0: d/d token of (1 - sig(0.1 (rho - 1))) / 2 at rho = 1 -> -0.1 * sig'(0) / 2
    assert logps.grad[0, 1].item() == pytest.approx(-0.1 * 0.25 / 2, rel=1e-5)


def test_kto_single_row():
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    logps = t([[J, -1.0, -1.0, J], [J, -2.0, J, J]])
    ref = [[K, -1.5, -1.5, K], [K, -2.5, K, K]]  # rho 1 (real), 0.5 (mismatched) -> z0 = 0.5
    loss, metrics = run("kto", logps, kto_batch([0.0], ref=ref, mask=mask), examples=1)
    assert loss.item() == pytest.approx(1 - sig(0.1 * (0.5 - 1.0)), rel=1e-6)
    assert metrics["kl"].item() == pytest.approx(0.5)


def test_kto_three_rows():
    mask = torch.tensor([[0, 1, 1, 1]] * 6)
    logps = t([[J, -1.0, -1.0, -1.0]] * 6)  # summed -3 on every row
    ref = [[K, -2.0, -2.0, -1.0], [K, -1.0, -1.0, -1.0], [K, -1.0, -1.0, 0.0],  # rho 2, 0, -1
           [K, -1.0, -1.0, -1.3], [K, -1.0, -1.0, -1.6], [K, -1.0, -1.0, -1.0]]  # rho 0.3, 0.6, 0 -> z0 0.3
    loss, metrics = run("kto", logps, kto_batch([1.0, 1.0, 0.0], ref=ref, mask=mask), examples=3,
                        desirable_weight=1.5)
    expected = (1.5 * (1 - sig(0.1 * 1.7)) + 1.5 * (1 - sig(0.1 * -0.3)) + (1 - sig(0.1 * 1.3))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["kl"].item() == pytest.approx(0.3, rel=1e-5)
    assert metrics["count/chosen"].item() == pytest.approx(2 / 3)


def test_kto_collated_odd_batch():
    from rlhf.batch import collate

    examples = [{"prompt_ids": [1, 2], "completion_ids": [3] * (i + 1), "label": i % 2} for i in range(3)]
    batch = collate("unpaired", examples)
    gen = torch.Generator().manual_seed(0)
    logps = -torch.rand(batch["response_mask"].shape, generator=gen) * batch["response_mask"]
    batch["ref_token_logps"] = logps - 0.1
    loss, metrics = run("kto", logps, batch, examples=3)
    assert torch.isfinite(loss)
    assert metrics["count/chosen"].item() + metrics["count/rejected"].item() == pytest.approx(1.0)


def test_kto_bad_labels_and_rows():
    with pytest.raises(ValueError, match="label of row 1 is 2.0"):
        run("kto", t(KTO_LOGPS), kto_batch([1.0, 2.0]))
    with pytest.raises(ValueError, match="4 rows for 3 labels"):
        run("kto", t(KTO_LOGPS), kto_batch([1.0, 0.0, 1.0]))


# ------------------------------------------------------------------------------- reward modeling

SCORES = [1.0, 0.5, 0.0, 1.5]  # chosen 1.0, 0.5; rejected 0.0, 1.5 -> s_w - s_l = 1, -1


@pytest.mark.parametrize(
    "overrides, per_pair",
    [
        ({}, [-logsig(1.0), -logsig(-1.0)]),
        ({"margin": 0.5}, [-logsig(0.5), -logsig(-1.5)]),
        ({"center_rewards_coefficient": 0.01}, [-logsig(1.0) + 0.01 * 1.0**2, -logsig(-1.0) + 0.01 * 2.0**2]),
    ],
)
def test_rm_hand_values(overrides, per_pair):
    score = torch.tensor(SCORES, requires_grad=True)
    loss, metrics = run("rm", score, pair_batch(ref=False), **overrides)
    assert loss.item() == pytest.approx(sum(per_pair) / 2, rel=1e-6)
    assert metrics["accuracy"].item() == pytest.approx(0.5)
    assert metrics["margin"].item() == pytest.approx(0.0)
    check_metrics(metrics)
    loss.backward()
    if not overrides:  # d/ds_w of -log sigmoid(s_w - s_l) / 2 = -(1 - sig(1)) / 2
        assert score.grad.tolist() == pytest.approx([-(1 - sig(1)) / 2, -(1 - sig(-1)) / 2,
                                                     (1 - sig(1)) / 2, (1 - sig(-1)) / 2], rel=1e-5)
    assert get("rm").implicit_reward(score, pair_batch(ref=False), get("rm").make_params()).tolist() == SCORES


# ------------------------------------------------------------------------------ length metrics


@pytest.mark.parametrize("name", ["simpo", "dpo", "rm"])
def test_pair_length_metrics(name):
    output = torch.tensor(SCORES) if name == "rm" else t(LOGPS)
    _, metrics = run(name, output, pair_batch())
    # chosen rows 2 and 3 tokens, rejected 1 and 2, prompts 1 and 1 (ATTN minus MASK on rows 0, 1)
    assert metrics["length/chosen"].item() == pytest.approx(2.5)
    assert metrics["length/rejected"].item() == pytest.approx(1.5)
    assert metrics["length/prompt"].item() == pytest.approx(1.0)
    # a share of the global mean: one micro-batch of the two pairs, 4 pairs in the step
    objective = get(name)
    part = {k: v[[0, 2]] for k, v in pair_batch().items()}
    _, half = objective.loss(output[[0, 2]], part, objective.make_params(), counts(4, MASK))
    assert (half["length/chosen"].item(), half["length/rejected"].item(), half["length/prompt"].item()) == (
        pytest.approx(2 / 4), pytest.approx(1 / 4), pytest.approx(1 / 4))


# -------------------------------------------------------------------------- SimPO margin schedule


def test_simpo_gamma_beta_ratio_schedule():
    simpo = get("simpo")
    params = simpo.make_params({"gamma_beta_ratio": 0.5, "gamma_beta_ratio_end": 1.5})
    assert simpo.at_progress is not None
    # linear: 0.5 + p * (1.5 - 0.5)
    for progress, ratio in [(0.0, 0.5), (0.25, 0.75), (1.0, 1.5)]:
        at = simpo.params_at(params, progress)
        assert at.gamma_beta_ratio == pytest.approx(ratio)
        assert at.gamma_beta_ratio_end is None and at.beta == params.beta
        assert simpo.params_at(at, 0.9) == at  # resolved params are constant
    assert params.gamma_beta_ratio == 0.5  # the stage's params are not modified
    # the loss follows: a_w - a_l = 1.5, -0.5; at p = 0.25 the margin is 0.75 -> beta * h = 1.5, -2.5
    loss, _ = run("simpo", t(LOGPS), pair_batch(ref=False), params=simpo.params_at(params, 0.25))
    assert loss.item() == pytest.approx((-logsig(1.5) - logsig(-2.5)) / 2, rel=1e-6)
    # without an end value, or for an objective without a schedule, params are unchanged
    constant = simpo.make_params()
    assert simpo.params_at(constant, 0.7) is constant
    dpo_params = get("dpo").make_params()
    assert get("dpo").at_progress is None and get("dpo").params_at(dpo_params, 0.3) is dpo_params
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        simpo.params_at(params, 1.5)


# ---------------------------------------------------------------------------- split invariance


def _random_pairs(n_pairs: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    rows, width = 2 * n_pairs, 6
    lengths = torch.randint(1, width, (rows,), generator=gen)
    mask = (torch.arange(width)[None, :] >= 1) & (torch.arange(width)[None, :] <= lengths[:, None])
    logps = -torch.rand(rows, width, generator=gen) * 3
    ref = logps - torch.randn(rows, width, generator=gen) * 0.5
    attention = torch.arange(width)[None, :] <= lengths[:, None]
    return logps, {"response_mask": mask.long(), "attention_mask": attention.long(), "ref_token_logps": ref}


def _rows(batch: dict[str, torch.Tensor], idx: list[int]) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in batch.items()}


@pytest.mark.parametrize("name, overrides", [
    ("simpo", {}), ("simpo", {"loss_type": "hinge"}), ("simpo", {"sft_weight": 1.0, "label_smoothing": 0.1}),
    ("dpo", {}), ("dpo", {"loss_type": "ipo"}), ("dpo", {"label_smoothing": 0.1}),
    ("rm", {"margin": 0.3, "center_rewards_coefficient": 0.05}),
])
def test_pairs_split_invariance(name, overrides):
    objective = get(name)
    params = objective.make_params(overrides)
    logps, batch = _random_pairs(4, seed=1)
    if name == "rm":
        logps = logps[:, 1]
    glob = counts(4, batch["response_mask"])
    whole = logps.clone().requires_grad_(True)
    loss, metrics = objective.loss(whole, batch, params, glob)
    loss.backward()
    parts = logps.clone().requires_grad_(True)
    total, summed = 0.0, {k: 0.0 for k in metrics}
    for idx in ([0, 1, 4, 5], [2, 3, 6, 7]):  # pairs {0, 1} and {2, 3}: chosen rows, then rejected rows
        part_loss, part_metrics = objective.loss(parts[idx], _rows(batch, idx), params, glob)
        part_loss.backward()
        total += part_loss.item()
        summed = {k: summed[k] + part_metrics[k].item() for k in summed}
    assert total == pytest.approx(loss.item(), rel=1e-6)
    assert summed == pytest.approx({k: v.item() for k, v in metrics.items()}, rel=1e-6, abs=1e-7)
    assert torch.allclose(whole.grad, parts.grad, atol=1e-7)


def test_kto_split_invariance_when_reference_points_agree():
    """z0 is estimated per micro-batch: with equal mismatched log-ratios every split gives the same loss."""
    logps, batch = _random_pairs(4, seed=2)  # 8 rows: 4 real, 4 mismatched
    batch["ref_token_logps"][4:] = logps[4:]
    batch["ref_token_logps"][4:, 1] -= 0.7  # every mismatched row: rho = 0.7
    batch["label"] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    objective, glob = get("kto"), GlobalCounts(examples=4, tokens=int(batch["response_mask"][:4].sum()))
    params = objective.make_params({"desirable_weight": 1.3})
    whole = logps.clone().requires_grad_(True)
    loss, metrics = objective.loss(whole, batch, params, glob)
    loss.backward()
    assert metrics["kl"].item() == pytest.approx(0.7, rel=1e-5)
    parts = logps.clone().requires_grad_(True)
    total = 0.0
    for idx in ([0, 1, 4, 5], [2, 3, 6, 7]):
        part = _rows({k: v for k, v in batch.items() if k != "label"}, idx)
        part["label"] = batch["label"][idx[:2]]
        part_loss, _ = objective.loss(parts[idx], part, params, glob)
        part_loss.backward()
        total += part_loss.item()
    assert total == pytest.approx(loss.item(), rel=1e-6)
    assert torch.allclose(whole.grad, parts.grad, atol=1e-7)


# ------------------------------------------------------------------------------------- registry


def test_registry_declarations():
    assert {"simpo", "dpo", "kto", "rm"} <= set(names())
    for name, data, output, ref in [("simpo", "pairs", "token_logps", False), ("dpo", "pairs", "token_logps", True),
                                    ("kto", "unpaired", "token_logps", True), ("rm", "pairs", "score", False)]:
        objective = get(name)
        assert (objective.mode, objective.data, objective.output) == ("offline", data, output)
        assert objective.needs_reference(objective.make_params()) is ref
        assert dataclasses.is_dataclass(objective.params) and objective.paper


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="'simpo' is already registered"):
        register(dataclasses.replace(get("simpo")))


def test_registry_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown algorithm 'simpoo'; valid: .*dpo.*kto.*rm.*simpo"):
        get("simpoo")


def test_unknown_and_invalid_params():
    with pytest.raises(ValueError, match="unknown dpo parameter.* betta; valid: beta, label_smoothing, loss_type"):
        get("dpo").make_params({"betta": 0.2})
    with pytest.raises(ValueError, match="loss_type 'hinge' is not one of sigmoid, ipo"):
        get("dpo").make_params({"loss_type": "hinge"})
    with pytest.raises(ValueError, match="beta must be > 0"):
        get("simpo").make_params({"beta": 0.0})
    with pytest.raises(ValueError, match="label_smoothing applies to loss_type 'sigmoid' only"):
        get("simpo").make_params({"loss_type": "hinge", "label_smoothing": 0.1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        get("kto").make_params().beta = 1.0


def test_check_batch_missing_fields():
    with pytest.raises(KeyError, match="'dpo' needs batch field.* ref_token_logps; batch has attention_mask, response"):
        get("dpo").check_batch(pair_batch(ref=False), get("dpo").make_params())
    for name in ("simpo", "dpo", "rm"):  # the length metrics read both masks
        with pytest.raises(KeyError, match="attention_mask"):
            get(name).check_batch({"response_mask": MASK, "ref_token_logps": t(REF)}, get(name).make_params())
    with pytest.raises(KeyError, match="'kto' needs batch field.* label, ref_token_logps"):
        get("kto").check_batch(pair_batch(ref=False), get("kto").make_params())
    get("simpo").check_batch(pair_batch(ref=False), get("simpo").make_params())  # no reference needed


def test_shape_errors_are_one_line():
    with pytest.raises(ValueError, match=r"simpo: token_logps \(4, 3\) != response_mask \(4, 4\)"):
        run("simpo", t(LOGPS)[:, :3], pair_batch(ref=False))
    with pytest.raises(ValueError, match="dpo: pairs batch has an odd number of rows"):
        run("dpo", t(LOGPS)[:3], _rows(pair_batch(), [0, 1, 2]))
    with pytest.raises(ValueError, match=r"rm: score must be \[2P\]"):
        run("rm", torch.zeros(3), pair_batch(ref=False))


def test_kto_step_statistic_makes_any_split_exact():
    """With the KL point computed over the whole step (``STEP_KL``: what the learner does), any
    split into micro-batches gives the one-piece loss and gradients, whatever the mismatched rows."""
    logps, batch = _random_pairs(4, seed=3)  # mismatched log-ratios all differ
    batch["label"] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    batch["input_ids"] = torch.zeros_like(batch["response_mask"])
    objective = get("kto")
    stat, params = objective.step_statistic, objective.make_params({"desirable_weight": 1.3})
    glob = GlobalCounts(examples=4, tokens=int(batch["response_mask"][:4].sum()))
    whole = logps.clone().requires_grad_(True)
    loss, metrics = objective.loss(whole, batch, params, glob)  # one piece: its own z0 is the step's
    loss.backward()

    parts = logps.clone().requires_grad_(True)
    micro = []
    for real in ([0], [1, 2], [3]):  # uneven micro-batches
        idx = real + [i + 4 for i in real]
        mb = _rows({k: v for k, v in batch.items() if k != "label"}, idx)
        micro.append({**mb, "label": batch["label"][real], "logps": parts[idx]})
    sums = [stat.partial(rows["logps"], rows, params) for rows, _ in map(stat.split, micro)]
    point = sum(s for s, _ in sums) / sum(c for _, c in sums)
    assert point.item() == pytest.approx(metrics["kl"].item(), rel=1e-6)  # kl > 0 here, unclamped
    total, own_estimates = 0.0, 0.0
    for mb in micro:
        _, rows = stat.split(mb)
        part_loss, _ = objective.loss(rows["logps"], {**rows, stat.field: point}, params, glob)
        part_loss.backward()
        total += part_loss.item()
        own_estimates += objective.loss(mb["logps"].detach(), mb, params, glob)[0].item()
    assert total == pytest.approx(loss.item(), rel=1e-6)
    assert torch.allclose(whole.grad, parts.grad, atol=1e-7)
    assert abs(own_estimates - loss.item()) > 1e-4  # per-micro-batch z0 would not have been exact
