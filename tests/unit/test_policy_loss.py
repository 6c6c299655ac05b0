"""KL estimators, the PPO clip loss in each regime, and the online objectives built on them."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.objectives import GlobalCounts, get
from rlhf.policy_loss import kl, ppo_clip_loss

ONLINE = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")


def close(actual: torch.Tensor, expected, tol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=0)


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators():
    # p = 0.5 under the policy, 0.25 under the reference: d = log 2
    logp = torch.tensor([[math.log(0.5), 0.0]])
    ref = torch.tensor([[math.log(0.25), 0.0]])
    ln2 = math.log(2)
    close(kl(logp, ref, "k1"), [[ln2, 0.0]])
    close(kl(logp, ref, "k2"), [[0.5 * ln2**2, 0.0]])
    # k3 = exp(ref - logp) - (ref - logp) - 1 = 0.5 + ln 2 - 1
    close(kl(logp, ref, "k3"), [[0.5 + ln2 - 1.0, 0.0]])
    # the other direction: ratio 2 -> 2 - ln 2 - 1
    close(kl(ref, logp, "k3"), [[2.0 - ln2 - 1.0, 0.0]])


def test_k3_is_clamped_as_verl():
    # ref - logp = 30 -> clamped to 20 -> exp(20) - 21 -> clamped to 10; = -30 -> -20 -> e^-20 + 19 -> 10
    close(kl(torch.tensor([[0.0, 30.0]]), torch.tensor([[30.0, 0.0]]), "k3"), [[10.0, 10.0]])


def _kl_value_and_grad(logp_values, ref_values, estimator):
    logp = torch.tensor([logp_values], dtype=torch.float64, requires_grad=True)
    value = kl(logp, torch.tensor([ref_values], dtype=torch.float64), estimator)
    value.sum().backward()
    return value.detach(), logp.grad


def test_straight_through_and_abs_estimators():
    # d = logp - ref = ln 2, -ln 2, 0
    ln2 = math.log(2)
    logp, ref = [math.log(0.5), math.log(0.25), -1.0], [math.log(0.25), math.log(0.5), -1.0]
    # plain k3's gradient is d/dlogp (exp(-d) + d - 1) = 1 - exp(-d): 0.5, -1, 0
    _, grad = _kl_value_and_grad(logp, ref, "k3")
    close(grad, [[0.5, -1.0, 0.0]])
    # k3+: the value of k3, the gradient of k2 (= d)
    value, grad = _kl_value_and_grad(logp, ref, "k3+")
    close(value, [[0.5 + ln2 - 1.0, 2.0 - ln2 - 1.0, 0.0]])
    close(grad, [[ln2, -ln2, 0.0]])
    # k1+: the value of k1 (= d), the gradient of k2 (= d)
    value, grad = _kl_value_and_grad(logp, ref, "k1+")
    close(value, [[ln2, -ln2, 0.0]])
    close(grad, [[ln2, -ln2, 0.0]])
    # abs: |d|, gradient sign(d) (0 at d = 0)
    value, grad = _kl_value_and_grad(logp, ref, "abs")
    close(value, [[ln2, ln2, 0.0]])
    close(grad, [[1.0, -1.0, 0.0]])


def test_k3_plus_keeps_the_gradient_where_k3_is_clamped():
    # d = -30: k3 is clamped to 10 with gradient 0; k3+ keeps the value 10 and k2's gradient d = -30
    _, grad = _kl_value_and_grad([0.0], [30.0], "k3")
    close(grad, [[0.0]])
    value, grad = _kl_value_and_grad([0.0], [30.0], "k3+")
    close(value, [[10.0]])
    close(grad, [[-30.0]])


def test_unknown_estimator():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# ---------------------------------------------------------------- PPO clip loss, one regime per token


def _clip(ratios, advantages, **kw):
    logp = torch.log(torch.tensor([ratios], dtype=torch.float64)).requires_grad_(True)
    old = torch.zeros_like(logp)
    adv = torch.tensor([advantages], dtype=torch.float64)
    out = ppo_clip_loss(logp, old, adv, torch.ones_like(adv), **kw)
    out.loss.sum().backward()
    return out, logp.grad


def test_clip_loss_regimes():
    # tokens: inside the range; above 1 + 0.2 with A > 0; above with A < 0 (not clipped);
    # below 1 - 0.2 with A < 0; below with A > 0 (not clipped); A = 0
    ratios = [1.1, 1.5, 1.5, 0.5, 0.5, 2.0]
    adv = [2.0, 1.0, -1.0, -1.0, 3.0, 0.0]
    out, grad = _clip(ratios, adv)
    close(out.loss, [[-2.2, -1.2, 1.5, 0.8, -1.5, 0.0]])
    close(out.clipped, [[0, 1, 0, 1, 0, 0]])
    close(out.ratio, [ratios])
    # d loss / d logp = -A * ratio where unclipped, 0 where clipped
    close(grad, [[-2.2, 0.0, 1.5, 0.0, -1.5, 0.0]])


def test_clip_higher_is_asymmetric():
    out, _ = _clip([1.5, 0.5], [1.0, -1.0], clip_low=0.2, clip_high=0.28)
    close(out.loss, [[-1.28, 0.8]])


def test_dual_clip_caps_negative_advantages():
    # A = -1, ratio 10: max(10, 1.2) = 10, capped at -A * 3 = 3; A = +1 with ratio 10 is untouched (-1.2)
    out, grad = _clip([10.0, 10.0, 2.0], [-1.0, 1.0, -1.0], dual_clip=3.0)
    close(out.loss, [[3.0, -1.2, 2.0]])
    close(out.clipped, [[1, 1, 0]])
    close(grad, [[0.0, 0.0, 2.0]])
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), dual_clip=1.0)


def test_clip_loss_zero_outside_mask():
    out = ppo_clip_loss(torch.tensor([[5.0, 0.1]]), torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[0, 1]]))
    assert out.loss[0, 0] == 0 and out.clipped[0, 0] == 0 and out.ratio[0, 0] == 0


# ---------------------------------------------------------------- the objectives' loss


def _batch(advantages_per_row, mask, **extra):
    mask = torch.tensor(mask)
    adv = torch.tensor(advantages_per_row).unsqueeze(-1) * mask
    return {"response_mask": mask, "advantages": adv.float(), **extra}


MASK = [[0, 1, 1, 1], [0, 1, 1, 0]]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # on-policy, per-token loss -A: row 0 (A = 1) -1, -1, -1; row 1 (A = -3) 3, 3
        ({"loss_agg": "token-mean"}, (-3 + 6) / 5),
        ({"loss_agg": "token-sum"}, -3 + 6),
        ({"loss_agg": "seq-mean-token-sum"}, (-3 + 6) / 2),
        ({"loss_agg": "seq-mean-token-mean"}, (-1 + 3) / 2),
        # Dr. GRPO: token sums over the constant 4, mean over the 2 sequences
        ({"loss_agg": "seq-mean-token-sum-norm", "loss_agg_norm": 4}, (-3 / 4 + 6 / 4) / 2),
    ],
)
def test_loss_aggregation_modes(overrides, expected):
    obj = get("grpo")
    params = obj.make_params(overrides)
    logp = torch.full((2, 4), -0.7)
    batch = _batch([1.0, -3.0], MASK, old_logps=logp.clone())
    counts = GlobalCounts(examples=2, tokens=5)
    loss, metrics = obj.loss(logp, batch, params, counts)
    close(loss, expected)
    close(metrics["pg_loss"], expected)
    close(metrics["clip_frac"], 0.0)
    close(metrics["ratio_mean"], 1.0)
    assert "kl" not in metrics and all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    # the same step split in two micro-batches gives the same total
    parts = [obj.loss(logp[i : i + 1], {k: v[i : i + 1] for k, v in batch.items()}, params, counts)[0] for i in (0, 1)]
    close(parts[0] + parts[1], expected)


def test_kl_term_in_loss():
    obj = get("grpo")
    params = obj.make_params({"kl_coef": 0.5, "kl_estimator": "k1"})
    assert obj.needs_reference(params) and not obj.needs_reference(obj.make_params())
    logp = torch.full((2, 4), -1.0)
    ref = logp - torch.tensor([[0.0, 0.2, 0.4, 0.6], [0.0, 1.0, 1.0, 9.0]])  # k1 = those offsets
    batch = _batch([1.0, -3.0], MASK, old_logps=logp.clone(), ref_token_logps=ref)
    with pytest.raises(KeyError, match="ref_token_logps"):
        obj.check_batch({k: v for k, v in batch.items() if k != "ref_token_logps"}, params)
    loss, metrics = obj.loss(logp, batch, params, GlobalCounts(examples=2, tokens=5))
    kl_mean = (0.2 + 0.4 + 0.6 + 1.0 + 1.0) / 5
    close(metrics["kl"], kl_mean)
    close(loss, 3 / 5 + 0.5 * kl_mean)
    close(metrics["loss"], 3 / 5 + 0.5 * kl_mean)


MASK_EMPTY = [[0, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0]]  # row 1 has no response token


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # per-token loss -A: row 0 (A = 1) -1, -1, -1; row 1 nothing; row 2 (A = -3) 3, 3;
        # the seq-mean modes divide by the 2 non-empty rows, not the 3 rows
        ({"loss_agg": "token-mean"}, (-3 + 6) / 5),
        ({"loss_agg": "token-sum"}, -3 + 6),
        ({"loss_agg": "seq-mean-token-sum"}, (-3 + 6) / 2),
        ({"loss_agg": "seq-mean-token-mean"}, (-1 + 3) / 2),
        ({"loss_agg": "seq-mean-token-sum-norm", "loss_agg_norm": 8}, (-3 + 6) / 8 / 2),
    ],
)
def test_loss_aggregation_with_an_empty_row(overrides, expected):
    obj = get("grpo")
    params = obj.make_params(overrides)
    logp = torch.full((3, 4), -0.7)
    batch = _batch([1.0, 5.0, -3.0], MASK_EMPTY, old_logps=logp.clone())
    counts = GlobalCounts(examples=3, tokens=5, nonempty=2)
    loss, _ = obj.loss(logp, batch, params, counts)
    close(loss, expected)
    # split [rows 0, 1] + [row 2]: the empty row sits in the first micro-batch; same total
    parts = [obj.loss(logp[i], {k: v[i] for k, v in batch.items()}, params, counts)[0] for i in ([0, 1], [2])]
    close(parts[0] + parts[1], expected)


def test_counts_without_nonempty_divide_by_every_row():
    # nonempty=None means "same as examples": the 3 rows, as before the count existed
    obj = get("grpo")
    logp = torch.full((3, 4), -0.7)
    batch = _batch([1.0, 5.0, -3.0], MASK_EMPTY, old_logps=logp.clone())
    loss, _ = obj.loss(logp, batch, obj.make_params({"loss_agg": "seq-mean-token-sum"}), GlobalCounts(3, 5))
    close(loss, (-3 + 6) / 3)


def test_kl_straight_through_in_loss():
    # advantages 0, so only the KL term moves the policy; k3+ gives k3's value and k2's gradient
    obj = get("grpo")
    params = obj.make_params({"kl_coef": 0.5, "kl_estimator": "k3+"})
    logp = torch.full((2, 4), -1.0, requires_grad=True)
    d = torch.tensor([[0.0, 0.2, 0.4, 0.6], [0.0, 1.0, 1.0, 9.0]])
    batch = _batch([0.0, 0.0], MASK, old_logps=logp.detach().clone(), ref_token_logps=logp.detach() - d)
    loss, metrics = obj.loss(logp, batch, params, GlobalCounts(examples=2, tokens=5))
    k3 = [math.exp(-x) + x - 1 for x in (0.2, 0.4, 0.6, 1.0, 1.0)]
    close(metrics["kl"], sum(k3) / 5)
    close(loss, 0.5 * sum(k3) / 5)
    loss.backward()
    # d loss / d logp = kl_coef * d / tokens on response tokens
    close(logp.grad, [[0.0, 0.1 * 0.2, 0.1 * 0.4, 0.1 * 0.6], [0.0, 0.1, 0.1, 0.0]])


def test_kl_in_reward_is_not_in_loss():
    obj = get("reinforce_pp")
    params = obj.make_params()
    logp = torch.full((2, 4), -1.0)
    batch = _batch([1.0, -3.0], MASK, old_logps=logp.clone(), ref_token_logps=logp - 1.0)
    loss, metrics = obj.loss(logp, batch, params, GlobalCounts(examples=2, tokens=5))
    close(loss, 3 / 5)
    close(metrics["kl"], 1.0)  # still reported


def test_on_policy_gradient_is_advantage_weighted_score():
    # a tiny tabular policy: logits [R, T, V]; tokens fixed; on-policy ratio is 1, so the clip
    # loss's gradient is the REINFORCE gradient -sum(A * grad logp) / tokens
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 4, (3, 5), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 0, 0, 0]])
    adv = torch.randn(3, 5, generator=gen, dtype=torch.float64) * mask

    def logps():
        return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    obj = get("rloo")
    batch = {"response_mask": mask, "advantages": adv, "old_logps": logps().detach()}
    loss, _ = obj.loss(logps(), batch, obj.make_params(), GlobalCounts(examples=3, tokens=int(mask.sum())))
    (grad,) = torch.autograd.grad(loss, logits)
    reference = -(adv * logps() * mask).sum() / mask.sum()
    (expected,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(grad, expected)


# ---------------------------------------------------------------- registration and prepare


def test_online_objectives_registered():
    for name in ONLINE:
        obj = get(name)
        assert (obj.mode, obj.data, obj.output) == ("online", "prompts", "token_logps")
        assert obj.prepare is not None and obj.implicit_reward is None
    assert not get("grpo").needs_reference(get("grpo").make_params())
    assert get("reinforce_pp").needs_reference(get("reinforce_pp").make_params())
    assert not get("reinforce_pp").needs_reference(get("reinforce_pp").make_params({"kl_coef": 0.0}))


@pytest.mark.parametrize(
    "name, overrides, match",
    [
        ("grpo", {"dual_clip": 1.0}, "dual_clip"),
        ("grpo", {"kl_estimator": "k4"}, "kl_estimator"),
        ("grpo", {"loss_agg": "seq-mean"}, "loss_agg"),
        ("grpo", {"loss_agg": "seq-mean-token-sum-norm"}, "set loss_agg_norm"),
        ("grpo", {"loss_agg": "seq-mean-token-sum-norm", "loss_agg_norm": 0}, "set loss_agg_norm"),
        ("grpo", {"loss_agg_norm": 512}, "loss_agg_norm applies to loss_agg 'seq-mean-token-sum-norm' only"),
        ("grpo", {"clip_low": 1.0}, "clip_low"),
        ("rloo", {"norm_std": False}, "unknown rloo parameter"),
        ("reinforce_pp", {"gamma": 0.0}, "gamma"),
    ],
)
def test_bad_params(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        get(name).make_params(overrides)


def _rollout(rewards, group, mask, **extra):
    return {
        "rewards": torch.tensor(rewards),
        "group": torch.tensor(group),
        "response_mask": torch.tensor(mask),
        **extra,
    }


def test_grpo_and_rloo_prepare():
    mask = [[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 0, 1]]
    batch = _rollout([1.0, 0.0, 2.0, 2.0], [0, 0, 1, 1], mask)
    grpo = get("grpo")
    out = grpo.prepare(batch, grpo.make_params())
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # group 0: mean 0.5, unbiased std sqrt(0.5); group 1: all equal
    close(out["advantages"], [[0, a, a], [0, -a, 0], [0, 0, 0], [0, 0, 0]])
    assert "advantages" not in batch  # the input is not modified
    rloo = get("rloo")
    close(rloo.prepare(batch, rloo.make_params())["advantages"], [[0, 1, 1], [0, -1, 0], [0, 0, 0], [0, 0, 0]])


def test_outcome_kl_in_reward_subtracts_summed_penalty():
    # rewards 1, 1; row 0's summed k1 is 2 + 2 = 4, row 1's 0; coef 0.25 -> rewards 0, 1 -> -0.5, 0.5
    logps = torch.zeros(2, 3)
    ref = torch.tensor([[0.0, -2.0, -2.0], [0.0, 0.0, 0.0]])
    batch = _rollout([1.0, 1.0], [0, 0], [[0, 1, 1], [0, 1, 1]], old_logps=logps, ref_token_logps=ref)
    grpo = get("grpo")
    params = grpo.make_params({"kl_coef": 0.25, "kl_estimator": "k1", "kl_in_reward": True, "norm_std": False})
    close(grpo.prepare(batch, params)["advantages"], [[0, -0.5, -0.5], [0, 0.5, 0.5]])


def test_reinforce_pp_prepare_reads_logps():
    # same numbers as test_advantages.test_reinforce_pp_with_kl_in_reward, through the objective
    mask = [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    old = torch.tensor([[0.0, 0.0, -1.0, -2.0, 0.0], [0.0, -1.0, -1.0, 0.0, 0.0]])
    ref = old - torch.tensor([[0.0, 0.0, 0.5, -1.0, 2.0], [0.0, 1.0, 1.0, 0.0, 0.0]])
    batch = _rollout([1.0, 0.0], [0, 1], mask, old_logps=old, ref_token_logps=ref)
    obj = get("reinforce_pp")
    out = obj.prepare(batch, obj.make_params({"kl_coef": 0.1}))
    d = 0.55
    close(out["advantages"], [[0, 0, 0.4 / d, 0.45 / d, 0.35 / d], [0, -0.65 / d, -0.55 / d, 0, 0]], 1e-5)
    with pytest.raises(KeyError, match="ref_token_logps"):
        obj.prepare({k: v for k, v in batch.items() if k != "ref_token_logps"}, obj.make_params())
    # without a KL no reference is read
    base = get("reinforce_pp_baseline")
    plain = {k: v for k, v in batch.items() if k not in ("old_logps", "ref_token_logps")}
    assert base.prepare(plain, base.make_params({"kl_coef": 0.0}))["advantages"].shape == (2, 5)


def test_prepare_rejects_bad_rewards():
    obj = get("grpo")
    with pytest.raises(ValueError, match="row 1"):
        obj.prepare(_rollout([1.0, float("nan")], [0, 0], [[0, 1], [0, 1]]), obj.make_params())
    with pytest.raises(KeyError, match="rewards"):
        obj.prepare({"group": torch.tensor([0]), "response_mask": torch.tensor([[0, 1]])}, obj.make_params())


def test_truncated_is_weights_by_hand_and_in_the_loss():
    from rlhf.objectives import GlobalCounts, get
    from rlhf.objectives._online import truncated_is_weights

    old = torch.log(torch.tensor([[1.0, 0.5, 0.2, 0.9]]))
    behaviour = torch.log(torch.tensor([[1.0, 0.25, 0.4, 0.1]]))
    mask = torch.tensor([[0, 1, 1, 1]])
    w = truncated_is_weights(old, behaviour, mask, cap=2.0)
    # ratios 0.5/0.25 = 2, 0.2/0.4 = 0.5, 0.9/0.1 = 9 -> capped at 2; 0 outside the mask
    assert w[0].tolist() == pytest.approx([0.0, 2.0, 0.5, 2.0])
    assert not w.requires_grad

    grpo = get("grpo")
    params = grpo.make_params()
    logp = old.clone().requires_grad_(True)
    batch = {"response_mask": mask, "old_logps": old, "advantages": torch.tensor([[0.0, 1.0, 1.0, 1.0]])}
    counts = GlobalCounts(examples=1, tokens=3)
    plain, _ = grpo.loss(logp, batch, params, counts)
    weighted, _ = grpo.loss(logp, {**batch, "is_weights": w}, params, counts)
    # ratio 1 everywhere, A = 1: per-token loss -1; token mean -1 plain, -(2 + 0.5 + 2) / 3 weighted
    assert plain.item() == pytest.approx(-1.0)
    assert weighted.item() == pytest.approx(-4.5 / 3)
    ones, _ = grpo.loss(logp, {**batch, "is_weights": mask.float()}, params, counts)
    assert ones.item() == plain.item()  # weights of 1 (staleness 0) change nothing
