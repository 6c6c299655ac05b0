"""What the online objectives (GRPO, RLOO, REINFORCE++) share: params, the PPO-clip loss, KL handling.

Online batches (``rlhf.batch.collate_samples``): ``input_ids``, ``attention_mask``,
``response_mask`` ``[R, T]``; ``rewards`` ``[R]``; ``group`` ``[R]``; ``old_logps`` ``[R, T]``
(behaviour policy, token aligned as ``token_logps``, 0 outside the response); ``ref_token_logps``
``[R, T]`` when a KL term is on; ``advantages`` ``[R, T]``, written by the objective's ``prepare``.

Each objective differs only in how ``prepare`` turns rewards into ``advantages``; the loss is the
same: ``aggregate(ppo_clip_loss) + kl_coef * aggregate(kl(token_logps, ref))`` when the KL is in
the loss (``kl_in_reward=False``), or the clip loss alone when the KL is folded into the rewards.
``online_objective`` builds the registry entry from just those differences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from rlhf.advantages import to_tokens
from rlhf.objectives.base import GlobalCounts, Objective, PrepareFn
from rlhf.policy_loss import KL_ESTIMATORS, KLEstimator, kl, ppo_clip_loss
from rlhf.reduction import aggregate

LossAgg = Literal["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGGS: tuple[str, ...] = (
    "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
)
DR_GRPO_AGG = "seq-mean-token-sum-norm"

# fields the loss reads; `prepare` reads rewards / group (and, for a KL in the reward, the log-probs)
LOSS_FIELDS: tuple[str, ...] = ("response_mask", "old_logps", "advantages")


@dataclass(frozen=True)
class OnlineParams:
    """Hyper-parameters shared by the online objectives (each objective subclasses it for its defaults).

    Attributes:
        clip_low: PPO clip below, ratio >= ``1 - clip_low``.
        clip_high: PPO clip above, ratio <= ``1 + clip_high`` (DAPO's clip-higher uses 0.28).
        dual_clip: cap ``c > 1`` on the loss of negative-advantage tokens, or None.
        kl_coef: weight of the KL to the reference; 0 means no reference model is needed.
        kl_estimator: one of ``rlhf.policy_loss.KL_ESTIMATORS`` (``k1``, ``k2``, ``k3``, the
            straight-through ``k1+`` / ``k3+``, ``abs``; see ``rlhf.policy_loss.kl``).
        kl_in_reward: True: a penalty ``-kl_coef * kl(old_logps, ref)`` per token goes into the
            rewards before the advantages; False: ``kl_coef * kl(token_logps, ref)`` is a loss term.
        loss_agg: how per-token losses (and a KL term in the loss) are reduced
            (``rlhf.reduction``); the ``seq-mean-token-*`` modes average over the sequences
            with at least one response token.
        loss_agg_norm: the constant ``C`` of ``seq-mean-token-sum-norm`` (Dr. GRPO): each
            sequence's token sum is divided by ``C`` instead of its length. Set it to the
            generation budget (``generator.max_tokens``); required with that mode and refused
            with the others. A data-dependent ``C`` (the step's longest response, or verl's
            padded width) would make the loss depend on the micro-batch split.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    kl_in_reward: bool = False
    loss_agg: LossAgg = "token-mean"
    loss_agg_norm: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low must be in [0, 1) (got {self.clip_low}): the ratio's floor is 1 - clip_low")
        if self.clip_high < 0.0:
            raise ValueError(f"clip_high must be >= 0 (got {self.clip_high})")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be None or > 1 (got {self.dual_clip}): it caps the ratio from above")
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef must be >= 0 (got {self.kl_coef})")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator {self.kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"loss_agg {self.loss_agg!r} is not one of {', '.join(LOSS_AGGS)}")
        if self.loss_agg == DR_GRPO_AGG and (self.loss_agg_norm is None or self.loss_agg_norm <= 0):
            raise ValueError(
                f"loss_agg {DR_GRPO_AGG!r} divides each sequence's token sum by a constant: set loss_agg_norm "
                f"> 0 to the generation budget (generator.max_tokens); got {self.loss_agg_norm}"
            )
        if self.loss_agg != DR_GRPO_AGG and self.loss_agg_norm is not None:
            raise ValueError(
                f"loss_agg_norm applies to loss_agg {DR_GRPO_AGG!r} only (loss_agg is {self.loss_agg!r})"
            )


def needs_reference(params: OnlineParams) -> bool:
    """A reference model is needed only when the KL term is on."""
    return params.kl_coef > 0.0


def require(batch: Mapping[str, torch.Tensor], fields: tuple[str, ...], who: str) -> None:
    """Raise a one-line error naming the fields of ``fields`` missing from ``batch``."""
    missing = [f for f in fields if f not in batch]
    if missing:
        raise KeyError(f"{who} needs batch field(s) {', '.join(missing)}; batch has {', '.join(sorted(batch))}")


def checked_rewards(batch: Mapping[str, torch.Tensor], who: str) -> torch.Tensor:
    """``batch["rewards"]`` as ``[R]`` float; a non-finite reward fails naming its row."""
    require(batch, ("rewards", "group", "response_mask"), who)
    rewards = batch["rewards"].float()
    if rewards.dim() != 1 or rewards.shape[0] != batch["response_mask"].shape[0]:
        raise ValueError(f"{who}: rewards must be [R] with R = {batch['response_mask'].shape[0]} rows")
    bad = torch.nonzero(~torch.isfinite(rewards)).flatten()
    if bad.numel():
        raise ValueError(f"{who}: reward of row {int(bad[0])} is {float(rewards[bad[0]])}")
    return rewards


def reward_kl(batch: Mapping[str, torch.Tensor], params: OnlineParams, who: str) -> torch.Tensor | None:
    """Per-token KL of the behaviour policy to the reference ``[R, T]`` for a KL in the reward, else None."""
    if not (params.kl_in_reward and params.kl_coef > 0.0):
        return None
    require(batch, ("old_logps", "ref_token_logps"), who)
    return kl(batch["old_logps"].float(), batch["ref_token_logps"].float(), params.kl_estimator)


def outcome_rewards(batch: Mapping[str, torch.Tensor], params: OnlineParams, who: str) -> torch.Tensor:
    """``[R]`` scalar rewards for the outcome estimators (GRPO, RLOO).

    With a KL in the reward, each row's summed penalty ``kl_coef * sum_t kl_t`` is subtracted
    before the group statistics, as verl does for its outcome estimators.
    """
    rewards = checked_rewards(batch, who)
    penalty = reward_kl(batch, params, who)
    if penalty is not None:
        rewards = rewards - params.kl_coef * (penalty * batch["response_mask"].float()).sum(-1)
    return rewards


def outcome_prepare(
    batch: dict[str, torch.Tensor],
    params: OnlineParams,
    who: str,
    estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``prepare`` of the outcome estimators: ``batch`` plus ``advantages`` ``[R, T]``.

    ``estimator(rewards [R], group [R]) -> [R]`` turns ``outcome_rewards`` into per-row advantages,
    which are given to every response token (0 elsewhere).
    """
    advantages = estimator(outcome_rewards(batch, params, who), batch["group"])
    return {**batch, "advantages": to_tokens(advantages, batch["response_mask"].float())}


def online_loss(
    token_logps: torch.Tensor, batch: Mapping[str, torch.Tensor], params: OnlineParams, counts: GlobalCounts
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss of one micro-batch, its share of the global step mean (see ``base``).

    Args:
        token_logps: ``[R, T]`` policy log-probs.
        batch: needs ``response_mask``, ``old_logps``, ``advantages`` and, with a KL term in the
            loss, ``ref_token_logps``. Optional ``is_weights`` ``[R, T]`` (detached truncated
            importance weights ``min(pi_old / pi_behaviour, cap)`` of a stale rollout, see
            ``truncated_is_weights``) multiply the per-token policy-gradient loss.
        params: an ``OnlineParams``.
        counts: global counts of the optimizer step; the ``seq-mean-token-*`` modes divide by
            ``counts.nonempty_examples`` (samples with at least one response token).

    Returns:
        ``(loss, metrics)``; metrics are detached 0-dim shares of global means: ``loss``,
        ``pg_loss`` (``loss_agg``), ``clip_frac``, ``ratio_mean`` (token means) and, when
        ``ref_token_logps`` is in the batch, ``kl`` (token mean of ``kl_estimator``).
    """
    mask = batch["response_mask"]
    terms = ppo_clip_loss(
        token_logps, batch["old_logps"], batch["advantages"], mask, params.clip_low, params.clip_high, params.dual_clip
    )
    n_seq, n_tok, norm = counts.nonempty_examples, counts.tokens, params.loss_agg_norm
    per_token = terms.loss * batch["is_weights"] if "is_weights" in batch else terms.loss
    pg_loss = aggregate(per_token, mask, params.loss_agg, n_seq, n_tok, norm)
    loss = pg_loss
    metrics = {
        "pg_loss": pg_loss.detach(),
        "clip_frac": aggregate(terms.clipped, mask, "token-mean", n_seq, n_tok).detach(),
        "ratio_mean": aggregate(terms.ratio, mask, "token-mean", n_seq, n_tok).detach(),
    }
    kl_in_loss = params.kl_coef > 0.0 and not params.kl_in_reward
    if kl_in_loss:
        require(batch, ("ref_token_logps",), f"kl_coef={params.kl_coef} with the KL in the loss")
    if "ref_token_logps" in batch:
        kl_t = kl(token_logps, batch["ref_token_logps"], params.kl_estimator)
        if kl_in_loss:
            loss = loss + params.kl_coef * aggregate(kl_t, mask, params.loss_agg, n_seq, n_tok, norm)
        metrics["kl"] = aggregate(kl_t.detach(), mask, "token-mean", n_seq, n_tok)
    metrics["loss"] = loss.detach()
    return loss, metrics


def truncated_is_weights(old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """``[R, T]`` truncated importance weights ``min(exp(old - behaviour), cap)`` on ``mask``, 0 elsewhere.

    For a rollout sampled by a policy older than ``pi_old`` (asynchronous generation): the PPO
    ratio is taken against ``pi_old`` (the learner's log-probs before this update) and this weight
    corrects for the sampler (TIS, as in verl/"Your efficient RL framework secretly brings you
    off-policy RL training"). Both log-probs are of the sampled tokens under the untempered
    model, the sampler's own distribution when it samples at temperature 1 without top-k/top-p.
    Detached: a weight, not a path for gradients.
    """
    log_ratio = torch.clamp(old_logps.float() - behaviour_logps.float(), max=20.0)
    return (torch.exp(log_ratio).clamp(max=cap) * mask.float()).detach()


def prepare_reads(params: OnlineParams) -> tuple[str, ...]:
    """Log-prob fields ``prepare`` reads: the behaviour and reference log-probs for a KL in the reward."""
    return ("old_logps", "ref_token_logps") if params.kl_in_reward and params.kl_coef > 0.0 else ()


def online_objective(name: str, params: type[OnlineParams], prepare: PrepareFn, paper: str) -> Objective:
    """The registry entry of an online objective: what it shares with the others (data kind, loss,
    fields, reference rule) plus its own ``name``, ``params`` type, ``prepare`` and ``paper``."""
    return Objective(
        name=name,
        mode="online",
        data="prompts",
        params=params,
        fields=LOSS_FIELDS,
        output="token_logps",
        needs_reference=needs_reference,
        loss=online_loss,
        prepare=prepare,
        prepare_reads=prepare_reads,
        paper=paper,
    )
