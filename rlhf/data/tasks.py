"""Built-in task data from reasoning-gym (procedural, seeded, offline) and its verifiers.

- ``task_prompts(task, n, seed)``: prompt rows ``{prompt, answer, task, entry}`` for online RL;
  ``prompt`` is a one-message chat (the task's question + "Answer with only the final number."),
  ``entry`` the task's own record (question, answer, metadata) that its verifier needs.
- ``verifier_pairs(task, n, seed)``: preference rows; chosen = the correct answer, rejected = a
  plausible wrong one (a numeric perturbation, or another question's answer for non-numeric
  tasks) that the task's ``score_answer`` scores below 1.0 (0.0 whenever one is found).
- ``pairs_to_unpaired(pairs)``: KTO rows, chosen -> label 1, rejected -> label 0.
- ``score_with_task(task, entry, text)``: the task's own ``score_answer``.

``EASY_TASKS`` holds the settings used unless overridden: the easiest configurations, suited to a
135M model on CPU (2-term sums of 1-2 digit numbers). The reasoning-gym item seed is derived from
``(task, seed)`` by hashing, because its item ``i`` of seed ``s`` equals item ``i - 1`` of seed
``s + 1``: distinct seeds here give practically disjoint streams.
"""

from __future__ import annotations

import random
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from rlhf.config import did_you_mean
from rlhf.data.schema import DataError

EASY_TASKS: dict[str, dict[str, Any]] = {
    "chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
    "basic_arithmetic": {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": 1,
        "operators": ("+", "-", "*"),
        "allow_parentheses": False,
        "allow_negation": False,
    },
}

NUMBER_INSTRUCTION = "Answer with only the final number."
TEXT_INSTRUCTION = "Answer with only the final answer."


def _dataset(task: str, n: int, seed: int, task_kwargs: dict[str, Any]):
    import reasoning_gym

    kwargs = {**EASY_TASKS.get(task, {}), **task_kwargs}
    try:
        return reasoning_gym.create_dataset(task, seed=_item_seed(task, seed), size=max(n, 1), **kwargs)
    except ValueError as exc:
        if "not registered" in str(exc):
            valid = sorted(reasoning_gym.factory.DATASETS)
            raise DataError(
                f"unknown reasoning-gym task {task!r}{did_you_mean(task, valid)}; valid tasks: {', '.join(valid)}"
            ) from None
        raise DataError(f"reasoning-gym task {task!r}: bad settings {kwargs}: {exc}") from None
    except (TypeError, AssertionError) as exc:
        raise DataError(f"reasoning-gym task {task!r}: bad settings {kwargs}: {exc}") from None


def _item_seed(task: str, seed: int) -> int:
    return random.Random(f"rlhf:{task}:{seed}").getrandbits(31)


def _is_number(text: str) -> bool:
    try:
        Decimal(text.replace(",", ""))
    except InvalidOperation:
        return False
    return True


def _prompt(question: str, answer: str) -> list[dict[str, str]]:
    instruction = NUMBER_INSTRUCTION if _is_number(answer) else TEXT_INSTRUCTION
    return [{"role": "user", "content": f"{question.strip()}\n{instruction}"}]


def task_prompts(task: str = "chain_sum", n: int = 64, seed: int = 0, **task_kwargs: Any) -> list[dict[str, Any]]:
    """``n`` prompt rows ``{prompt, answer, task, entry}`` of a reasoning-gym task; same seed, same rows."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    dataset = _dataset(task, n, seed, task_kwargs)
    rows = []
    for i in range(n):
        entry = dataset[i]
        answer = str(entry["answer"])
        rows.append({"prompt": _prompt(entry["question"], answer), "answer": answer, "task": task, "entry": entry})
    return rows


@cache
def _scorer(task: str):
    return _dataset(task, 1, 0, {})


def score_with_task(task: str, entry: dict[str, Any], answer_text: str | None) -> float:
    """The task's ``score_answer`` on ``answer_text`` (surrounding whitespace removed): 1.0 = correct."""
    text = None if answer_text is None else answer_text.strip()
    return float(_scorer(task).score_answer(text, entry))


def _numeric_candidates(answer: str, rng: random.Random) -> list[str]:
    """Wrong-looking numbers near ``answer``: off by one or a few, off by ten, sign flip, digits swapped."""
    value = int(Decimal(answer.replace(",", "")))
    deltas = [1, -1, 2, -2, 3, -3, 10, -10, 5, -5]
    rng.shuffle(deltas)
    candidates = [str(value + d) for d in deltas[:4]]
    if value != 0:
        candidates.append(str(-value))
    digits = str(abs(value))
    if len(digits) > 1 and digits[::-1] != digits:
        candidates.append(("-" if value < 0 else "") + str(int(digits[::-1])))
    rng.shuffle(candidates)
    return candidates + [str(value + d) for d in deltas[4:]] + [str(value + 100), str(value - 100)]


def _wrong_answer(task: str, entry: dict, others: list[str], rng: random.Random) -> str:
    answer = str(entry["answer"])
    if _is_number(answer) and Decimal(answer.replace(",", "")) == int(Decimal(answer.replace(",", ""))):
        candidates = _numeric_candidates(answer, rng)
    else:
        candidates = [o for o in others if o != answer]
        rng.shuffle(candidates)
    scored = [(score_with_task(task, entry, c), c) for c in candidates[:32]]
    for score, candidate in scored:
        if score == 0.0:
            return candidate
    partial = [(s, c) for s, c in scored if s < 1.0]
    if not partial:
        raise ValueError(f"task {task!r}: found no wrong answer for {entry['question']!r} (answer {answer!r})")
    return min(partial)[1]


def verifier_pairs(task: str = "chain_sum", n: int = 64, seed: int = 0, **task_kwargs: Any) -> list[dict[str, Any]]:
    """``n`` verified preference rows ``{prompt, chosen, rejected, answer, task, entry}``.

    ``chosen`` / ``rejected`` are one assistant message each; the task's verifier scores chosen
    1.0 and rejected < 1.0 (checked here). Deterministic for ``(task, n, seed, task_kwargs)``.
    """
    rows = task_prompts(task, n, seed, **task_kwargs)
    rng = random.Random(f"rlhf-pairs:{task}:{seed}")
    answers = [r["answer"] for r in rows]
    pairs = []
    for row in rows:
        if score_with_task(task, row["entry"], row["answer"]) != 1.0:
            raise ValueError(f"task {task!r}: the verifier rejects its own answer {row['answer']!r}")
        wrong = _wrong_answer(task, row["entry"], answers, rng)
        pairs.append({
            **row,
            "chosen": [{"role": "assistant", "content": row["answer"]}],
            "rejected": [{"role": "assistant", "content": wrong}],
        })
    return pairs


def pairs_to_unpaired(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Preference rows -> KTO rows, alternating ``chosen`` (label 1) and ``rejected`` (label 0)."""
    rows = []
    for pair in pairs:
        extra = {k: v for k, v in pair.items() if k not in ("chosen", "rejected")}
        rows.append({**extra, "completion": pair["chosen"], "label": 1})
        rows.append({**extra, "completion": pair["rejected"], "label": 0})
    return rows
