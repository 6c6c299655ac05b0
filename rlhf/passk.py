"""pass@k and the scoring of sampled completions, shared by ``python -m rlhf.eval`` and training.

The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code", https://arxiv.org/abs/2107.03374, Eq. 1 and its numerically stable form): for a prompt with
``n`` samples of which ``c`` are correct,

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)     (k <= n)

which is 1 exactly when ``n - c < k`` (every draw of ``k`` samples holds a correct one). It is
averaged over prompts. A sample is *correct* when its reward is ``>= threshold`` (default 1.0: a
verifier's full score); a sample whose reward is None (skipped by a reward function) counts as
not correct and is left out of the mean reward.

``score_generations`` is pure (no vLLM, no Ray): it takes samples that were already generated
(by ``actors.generator.GeneratorActor.generate`` or anything shaped like it) and scores them with
``rlhf.rewards.score_samples``, so the CLI and the training loop compute the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf.rewards.registry import OnError, WeightedReward, load_rewards, score_samples

Sample = Mapping[str, Any] | str


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one prompt with ``n`` samples, ``c`` of them correct.

    ``1 - C(n - c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (no big
    binomials). Needs ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass@k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over prompts; ``counts`` holds one ``(n, c)`` per prompt."""
    if not counts:
        raise ValueError("pass@k over no prompts")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def k_values(max_k: int) -> list[int]:
    """``1, 2, 4, ...`` below ``max_k``, then ``max_k`` itself: ``k_values(6) == [1, 2, 4, 6]``."""
    if max_k < 1:
        raise ValueError(f"max k must be >= 1, got {max_k}")
    ks, k = [], 1
    while k < max_k:
        ks.append(k)
        k *= 2
    return ks + [max_k]


def pass_at_k_table(counts: Sequence[tuple[int, int]], max_k: int) -> dict[str, float]:
    """``{"pass@1": ..., "pass@2": ..., ..., f"pass@{max_k}": ...}`` over ``counts`` (see ``k_values``)."""
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in k_values(max_k)}


def _text(sample: Sample) -> str:
    return sample if isinstance(sample, str) else str(sample["text"])


def score_generations(
    samples_per_prompt: Sequence[Sequence[Sample]],
    rows: Sequence[Mapping[str, Any]],
    rewards: Any,
    k: int | None = None,
    threshold: float = 1.0,
    on_error: OnError = "raise",
    details: bool = False,
) -> dict[str, Any]:
    """Score already generated samples; mean reward, pass@1 .. pass@k.

    Args:
        samples_per_prompt: one list per prompt of its samples: dicts as returned by
            ``GeneratorActor.generate`` (``text``; ``completion_ids`` and ``finish_reason`` are
            used when present) or plain completion strings.
        rows: the prompt rows (dataset columns for the rewards), one per prompt. A sample's row
            is ``{**row, "completion_ids": ...}`` as in online training.
        rewards: a list of ``WeightedReward`` (``rlhf.rewards.load_rewards``) or any reward spec
            ``load_rewards`` accepts (names, dicts, functions).
        k: the largest k reported (default: the fewest samples any prompt has); every prompt
            needs at least ``k`` samples.
        threshold: a sample is correct when its combined reward is ``>= threshold``.
        on_error: ``"raise"`` or ``"skip"``, as ``score_samples``.
        details: add ``per_prompt``: ``[{"n", "correct", "rewards"}]`` (not a float metric).

    Returns:
        Flat float metrics: ``prompts``, ``samples``, ``threshold``, ``reward/mean`` and
        ``reward/std`` (over scored samples; None-rewards left out; None when none was scored),
        ``reward/skipped``, ``correct/fraction`` (correct samples / samples), ``pass@1``,
        ``pass@2``, ``pass@4``, ..., ``pass@k``, and, when the samples carry them,
        ``response/length`` (mean completion tokens) and ``response/truncated`` (fraction with
        ``finish_reason == "length"``).
    """
    if len(samples_per_prompt) != len(rows):
        raise ValueError(f"{len(samples_per_prompt)} sample lists but {len(rows)} rows; give one row per prompt")
    if not rows:
        raise ValueError("score_generations: no prompts")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    sizes = [len(s) for s in samples_per_prompt]
    if min(sizes) < 1:
        raise ValueError(f"prompt {sizes.index(min(sizes))} has no samples")
    max_k = min(sizes) if k is None else int(k)
    if not 1 <= max_k <= min(sizes):
        raise ValueError(f"k={max_k} needs at least that many samples per prompt; the fewest is {min(sizes)}")
    loaded = list(rewards) if _all_loaded(rewards) else load_rewards(rewards)

    flat = [(p, s) for p, samples in enumerate(samples_per_prompt) for s in samples]
    flat_rows = [
        {**rows[p], "completion_ids": s["completion_ids"]} if not isinstance(s, str) and "completion_ids" in s
        else dict(rows[p])
        for p, s in flat
    ]
    values, stats = score_samples(loaded, [_text(s) for _, s in flat], flat_rows, on_error)

    per_prompt: list[dict[str, Any]] = [{"n": n, "correct": 0, "rewards": []} for n in sizes]
    for (p, _), value in zip(flat, values):
        per_prompt[p]["rewards"].append(value)
        if value is not None and value >= threshold:
            per_prompt[p]["correct"] += 1
    scored = [v for v in values if v is not None]
    mean = sum(scored) / len(scored) if scored else None
    std = math.sqrt(sum((v - mean) ** 2 for v in scored) / len(scored)) if mean is not None else None
    correct = sum(r["correct"] for r in per_prompt)
    metrics: dict[str, Any] = {
        "prompts": float(len(rows)),
        "samples": float(len(flat)),
        "threshold": float(threshold),
        "reward/mean": mean,
        "reward/std": std,
        "reward/skipped": float(stats["skipped"]),
        "correct/fraction": correct / len(flat),
        **pass_at_k_table([(r["n"], r["correct"]) for r in per_prompt], max_k),
    }
    dicts = [s for _, s in flat if not isinstance(s, str)]
    if dicts and all("completion_ids" in s for s in dicts) and len(dicts) == len(flat):
        metrics["response/length"] = sum(len(s["completion_ids"]) for s in dicts) / len(dicts)
    if dicts and all("finish_reason" in s for s in dicts) and len(dicts) == len(flat):
        metrics["response/truncated"] = sum(s["finish_reason"] == "length" for s in dicts) / len(dicts)
    if details:
        metrics["per_prompt"] = per_prompt
    return metrics


def _all_loaded(rewards: Any) -> bool:
    return isinstance(rewards, (list, tuple)) and bool(rewards) and all(isinstance(r, WeightedReward) for r in rewards)
