"""Per-token policy-gradient math for the online family: KL estimators and the PPO clipped loss.

Tensors are ``[R, T]`` and token aligned as ``token_logps`` (see ``rlhf.objectives.base``): the
value at ``t`` concerns token ``x_t``. Outputs are per token and unreduced; reduce them with
``rlhf.reduction.aggregate`` over the response mask and the step's global counts.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

KLEstimator = Literal["k1", "k2", "k3", "k1+", "k3+", "abs"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "k1+", "k3+", "abs")

# log-ratio bounds before exp(), as verl (keeps exp finite on wild tokens)
_LOG_RATIO_CLAMP = 20.0
# bound on a k3 value, as verl
_K3_CLAMP = 10.0


def kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from log-probs of tokens sampled from ``pi``.

    Schulman, "Approximating KL divergence" (2020), with ``d = logp - ref_logp``:

    - ``k1 = d`` (unbiased, high variance, can be negative);
    - ``k2 = d^2 / 2`` (biased, non-negative; its gradient is the KL's gradient in expectation);
    - ``k3 = exp(-d) + d - 1`` (unbiased, non-negative, low variance; GRPO's choice);
    - ``k1+``, ``k3+``: straight-through (verl's names): the forward value of k1 / k3 and the
      gradient of k2, ``k2 - k2.detach() + k.detach()``. k1 and k3 estimate the KL's value
      without bias but their gradients are not the KL's gradient; k2's is. The gradient is
      ``d`` even where k3's value is clamped;
    - ``abs = |d|`` (verl's ``abs``; gradient ``sign(d)``, 0 at ``d = 0``).

    As verl's ``low_var_kl``, k3 clamps ``-d`` to ``[-20, 20]`` before ``exp`` and the result to
    ``[-10, 10]`` (so a token the reference finds far likelier costs at most 10, and its gradient
    there is 0).

    Args:
        logp: ``[R, T]`` log-probs under the policy.
        ref_logp: ``[R, T]`` log-probs of the same tokens under the reference.
        estimator: one of ``KL_ESTIMATORS``.

    Returns:
        ``[R, T]`` per-token values (not masked).
    """
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        neg = torch.clamp(-d, min=-_LOG_RATIO_CLAMP, max=_LOG_RATIO_CLAMP)
        return torch.clamp(torch.exp(neg) - neg - 1.0, min=-_K3_CLAMP, max=_K3_CLAMP)
    if estimator in ("k1+", "k3+"):
        k2 = 0.5 * d.square()
        return k2 - k2.detach() + kl(logp, ref_logp, estimator[:-1]).detach()
    if estimator == "abs":
        return d.abs()
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


class ClipLoss(NamedTuple):
    """Result of ``ppo_clip_loss``, each ``[R, T]`` and 0 outside the mask.

    ``loss``: per-token loss (to be reduced). ``clipped``: 1.0 where a clip is active, i.e. the
    token's gradient is zero because of clipping. ``ratio``: ``pi / pi_old`` (detached).
    """

    loss: torch.Tensor
    clipped: torch.Tensor
    ratio: torch.Tensor


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> ClipLoss:
    """PPO clipped surrogate, per token (Schulman et al. 2017, arXiv:1707.06347).

    ``ratio = exp(logp - old_logp)`` (log-ratio clamped to ``[-20, 20]`` as verl);
    ``loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))``.

    ``clip_high > clip_low`` is DAPO's "clip-higher" (Yu et al. 2025, arXiv:2503.14476; 0.28 there).
    ``dual_clip = c > 1`` (Ye et al. 2020, arXiv:1912.09729; verl's ``clip_ratio_c``, 3.0 there)
    caps the loss of negative-advantage tokens at ``-A * c``, so a token whose ratio exploded
    cannot dominate the step; tokens with ``A >= 0`` are unaffected.

    Args:
        logp: ``[R, T]`` log-probs under the current policy (carries the gradient).
        old_logp: ``[R, T]`` log-probs under the behaviour policy that sampled the tokens.
        advantages: ``[R, T]`` per-token advantages.
        mask: ``[R, T]`` 0/1 response mask.
        clip_low, clip_high: clip range ``[1 - clip_low, 1 + clip_high]``.
        dual_clip: ``c > 1`` or None.

    Returns:
        ``ClipLoss(loss, clipped, ratio)``.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (got {dual_clip})")
    mask = mask.to(logp.dtype)
    log_ratio = torch.clamp(logp - old_logp, min=-_LOG_RATIO_CLAMP, max=_LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    if dual_clip is not None:
        cap = -advantages * dual_clip
        capped = (advantages < 0) & (loss > cap)
        loss = torch.where(capped, cap, loss)
        clipped = clipped | capped
    return ClipLoss(loss * mask, clipped.to(logp.dtype) * mask, ratio.detach() * mask)
