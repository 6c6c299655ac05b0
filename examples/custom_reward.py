"""A custom reward: a length penalty, used beside a built-in correctness reward.

A reward is a plain function ``fn(completion, **columns) -> float | None``; ``columns`` are the
prompt row's dataset columns (``prompt``, ``answer``, ``metadata``, ...). Name the ones you
read, swallow the rest with ``**_``, and return ``None`` to leave a sample out of training.

Use it by its ``module:function`` path (run from the repository root, so ``examples`` imports):

    python -m rlhf.run --algo grpo reward.functions=examples.custom_reward:brevity

or weighted beside a built-in, in a YAML config:

    reward:
      functions:
        - numeric_match
        - {name: "examples.custom_reward:brevity", weight: 0.2, kwargs: {max_words: 10}}
"""

from __future__ import annotations

from typing import Any


def brevity(completion: str, *, max_words: int = 20, **_: Any) -> float:
    """0.0 for at most ``max_words`` words, then -0.05 per extra word, floored at -1.0."""
    extra = max(0, len(completion.split()) - max_words)
    return max(-1.0, -0.05 * extra)
