"""Built-in verifiable rewards: plain functions ``fn(completion, **columns) -> float | None``.

``columns`` are the prompt row's dataset columns (``prompt``, ``answer``, ``metadata``, ...),
passed as keyword arguments; each function names the columns it reads and ignores the rest
(``**_``). Returning ``None`` skips the sample (it gets no reward and is left out of training).

Numbers are read with one rule everywhere (``NUMBER``): an optional minus sign (only where it
cannot be a subtraction, i.e. not right after a letter, digit or ``)``), digits with optional
thousands commas (``1,000``) and an optional decimal part (``2.50``). Fractions, percentages and
scientific notation are not numbers here.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

NUMBER = r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(NUMBER)
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# Default accepted by ``format_reward``: a bare number, or a number inside <answer></answer>.
DEFAULT_FORMAT = rf"(?:{NUMBER})|<answer>\s*(?:{NUMBER})\s*</answer>"
TOLERANCE = 1e-6


def parse_number(text: str) -> float:
    """``"1,000"`` -> 1000.0, ``"-3"`` -> -3.0, ``"2.50"`` -> 2.5; anything else raises ValueError."""
    cleaned = str(text).strip().replace(",", "")
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (as written, commas kept), or None when there is none."""
    matches = _NUMBER_RE.findall(text)
    return matches[-1] if matches else None


def tagged_answer(text: str) -> str | None:
    """The stripped content of the last ``<answer>...</answer>`` in ``text``, or None."""
    matches = _ANSWER_TAG_RE.findall(text)
    return matches[-1].strip() if matches else None


def numeric_match(completion: str, *, answer: Any, **_: Any) -> float:
    """1.0 when the last number in ``completion`` equals ``answer`` within 1e-6, else 0.0.

    ``answer`` may be a number or a numeric string (``"1,000"``); a non-numeric answer is a data
    error and raises. A completion without any number scores 0.0.
    """
    expected = float(answer) if isinstance(answer, int | float) else parse_number(answer)
    found = last_number(completion)
    if found is None:
        return 0.0
    return 1.0 if abs(parse_number(found) - expected) <= TOLERANCE else 0.0


def format_reward(completion: str, *, pattern: str | None = None, **_: Any) -> float:
    """1.0 when the whole stripped completion matches ``pattern`` (``re.fullmatch``), else 0.0.

    Default pattern (``DEFAULT_FORMAT``): the completion is just a number (``"42"``, ``"-1,000"``)
    or just a number in answer tags (``"<answer> 42 </answer>"``); any other text around it
    scores 0.0. Set another pattern in the reward spec:
    ``{"name": "format_reward", "weight": 0.1, "kwargs": {"pattern": "..."}}``.
    """
    regex = _compiled(pattern or DEFAULT_FORMAT)
    return 1.0 if regex.fullmatch(completion.strip()) else 0.0


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


def extract_answer(completion: str, oracle: Any) -> str:
    """The answer a completion gives, for a verifier.

    The last ``<answer>`` tag's content when there is one; otherwise, when the oracle answer is
    a number, the last number in the completion (commas removed; empty string when there is
    none); otherwise the whole stripped completion.
    """
    tagged = tagged_answer(completion)
    if tagged is not None:
        return tagged
    try:
        parse_number(oracle)
    except ValueError:
        return completion.strip()
    found = last_number(completion)
    return found.replace(",", "") if found is not None else ""


@functools.cache
def _scorer(task: str) -> Callable[[str | None, dict[str, Any]], float]:
    import reasoning_gym  # lazy: ~1.5 s to import

    try:
        return reasoning_gym.get_score_answer_fn(task)
    except ValueError:
        raise ValueError(f"unknown reasoning-gym task {task!r}") from None


def reasoning_gym(
    completion: str,
    *,
    task: str | None = None,
    entry: Mapping[str, Any] | None = None,
    answer: Any = None,
    metadata: Mapping[str, Any] | None = None,
    question: str | None = None,
    **_: Any,
) -> float:
    """Score with the reasoning-gym task's own verifier (``dataset.score_answer(answer, entry)``).

    The entry is ``entry`` when the row has one (reasoning-gym's item: ``question``, ``answer``,
    ``metadata``), else it is built from the row's ``answer``, ``metadata`` and ``question``.
    The task is ``task``, else ``metadata["source_dataset"]`` (set by every reasoning-gym item).
    The answer is taken from the completion by ``extract_answer``. Scores are in [0, 1]; some
    tasks give partial credit.
    """
    if entry is None:
        entry = {"question": question or "", "answer": answer, "metadata": dict(metadata or {})}
    meta = entry.get("metadata") or {}
    task = task or meta.get("source_dataset")
    if not task:
        raise ValueError("reasoning_gym reward needs a 'task' column or metadata['source_dataset']")
    if entry.get("answer") is None:
        raise ValueError("reasoning_gym reward needs an 'answer' column (or entry['answer'])")
    given = extract_answer(completion, entry["answer"])
    return float(_scorer(task)(given or None, dict(entry)))
