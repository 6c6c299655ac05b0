"""Rewards for online RL: plain functions of a completion and its prompt row's columns.

A reward is ``fn(completion: str, **columns) -> float | None``: ``columns`` are the prompt
row's dataset columns (``prompt``, ``answer``, ``metadata``, ...), and ``None`` skips the
sample. A batch reward (marked with ``@batched``) is ``fn(completions, rows) -> list``; the
reward-model client (``actors.reward_model.reward_model_reward``) is one.

| name          | reads (columns)                            | score                                   |
|---------------|--------------------------------------------|-----------------------------------------|
| numeric_match | ``answer``                                 | 1 if the last number equals the answer  |
| format_reward | none (spec ``kwargs: {pattern: ...}``)     | 1 if the completion is just a number    |
| reasoning_gym | ``answer``, ``metadata`` (or ``entry``)    | the task's own ``score_answer``         |

Combine them with weights: ``["numeric_match", {"name": "format_reward", "weight": 0.1}]``.

``score_samples`` runs per-sample rewards in worker processes (``pool.py``: created once per
run, reused, one message per worker per call) with a per-sample time limit
(``reward.timeout_s``); a sample that raises, times out, kills its worker, or returns NaN or a
non-number stops the run naming the function and the sample index, or is skipped and counted
with ``reward.on_error=skip``. A hung worker is killed and replaced.
Your own reward needs no registration: give its path, ``reward.functions=package.module:function``
(``examples/custom_reward.py`` shows one). To add a built-in: write the function in
``builtin.py`` and add a ``register(name, fn)`` line at the end of ``registry.py``.
"""

from rlhf.rewards.builtin import format_reward, numeric_match, reasoning_gym
from rlhf.rewards.registry import (
    WeightedReward,
    batched,
    load_rewards,
    names,
    register,
    resolve,
    score_samples,
)

__all__ = [
    "WeightedReward",
    "batched",
    "format_reward",
    "load_rewards",
    "names",
    "numeric_match",
    "reasoning_gym",
    "register",
    "resolve",
    "score_samples",
]
