"""Rows -> tokenized examples (the dicts documented in ``rlhf.batch``), with an over-length policy.

- ``tokenize_pairs``    -> ``{"prompt_ids", "chosen_ids", "rejected_ids"}``
- ``tokenize_unpaired`` -> ``{"prompt_ids", "completion_ids", "label"}`` (label 1 or 0)
- ``tokenize_prompts``  -> ``{"prompt_ids", "prompt_text", **the row's own columns}``

Prompt and completion texts come from ``rlhf.data.templates`` and are tokenized separately
without added special tokens (a chat template already holds them), so the completion tokens
decode back to exactly the completion text. A plain-string prompt gets whatever the tokenizer
adds by default (e.g. a BOS for Llama-style tokenizers).

Over-long rows (prompt longer than ``max_prompt_length`` tokens, or prompt + a completion longer
than ``max_length``): policy ``"drop"`` skips the row; ``"truncate"`` keeps the last
``max_prompt_length`` prompt tokens (left truncation) and cuts each completion to
``max_length - len(prompt)`` tokens. A pair whose two completions become identical after
truncation carries no signal and is dropped. Rows that are left out are counted
(``TokenizeStats``); when no prompt at all fits ``max_prompt_length``, or no row is left, the
limits are wrong for the data and a ``DataError`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rlhf.data.schema import COMPLETION_FIELDS, DataError, Kind, as_completion_row, label_value, validate_row
from rlhf.data.templates import render_completion, render_prompt

Policy = Literal["truncate", "drop"]


@dataclass
class TokenizeStats:
    """Counts over the input rows: ``kept`` rows were returned (``truncated`` of them were cut),
    ``dropped`` were not; ``kept + dropped == total``."""

    source: str
    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.source}: {self.kept}/{self.total} rows kept "
            f"({self.truncated} truncated), {self.dropped} dropped as over-long"
        )


def tokenize_pairs(
    rows: Sequence[dict],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int,
    policy: Policy = "truncate",
    source: str = "",
) -> tuple[list[dict], TokenizeStats]:
    """Preference rows ``{prompt, chosen, rejected}`` -> pair examples and counts."""
    return _tokenize(rows, tokenizer, "pairs", max_length, max_prompt_length, policy, source)


def tokenize_unpaired(
    rows: Sequence[dict],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int,
    policy: Policy = "truncate",
    source: str = "",
) -> tuple[list[dict], TokenizeStats]:
    """KTO rows ``{prompt, completion, label}`` -> unpaired examples (``label`` 1 or 0) and counts."""
    return _tokenize(rows, tokenizer, "unpaired", max_length, max_prompt_length, policy, source)


def tokenize_completions(
    rows: Sequence[dict],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int,
    policy: Policy = "truncate",
    source: str = "",
) -> tuple[list[dict], TokenizeStats]:
    """SFT rows ``{prompt, completion}`` (or pairs, read as their ``chosen``) -> ``{prompt_ids, completion_ids}``."""
    rows = [as_completion_row(r) for r in rows]
    return _tokenize(rows, tokenizer, "completions", max_length, max_prompt_length, policy, source)


def tokenize_prompts(
    rows: Sequence[dict],
    tokenizer: Any,
    max_prompt_length: int,
    policy: Policy = "drop",
    source: str = "",
) -> tuple[list[dict], TokenizeStats]:
    """Prompt rows -> ``{prompt_ids, prompt_text, **row}``: every original column is kept by name."""
    return _tokenize(rows, tokenizer, "prompts", None, max_prompt_length, policy, source)


def _tokenize(
    rows: Sequence[dict],
    tokenizer: Any,
    kind: Kind,
    max_length: int | None,
    max_prompt_length: int,
    policy: str,
    source: str,
) -> tuple[list[dict], TokenizeStats]:
    _check_limits(max_length, max_prompt_length, policy)
    stats = TokenizeStats(source=source or "<rows>", total=len(rows))
    examples = []
    shortest_prompt: int | None = None
    for i, row in enumerate(rows):
        validate_row(row, kind, source, i)
        prompt = row["prompt"]
        prompt_text = render_prompt(prompt, tokenizer, source, i)
        prompt_ids = _encode(tokenizer, prompt_text, add_special_tokens=isinstance(prompt, str))
        shortest_prompt = len(prompt_ids) if shortest_prompt is None else min(shortest_prompt, len(prompt_ids))
        completions = {
            name: _encode(tokenizer, render_completion(prompt, row[name], tokenizer, source, i, name))
            for name in COMPLETION_FIELDS[kind]
        }
        over = len(prompt_ids) > max_prompt_length or (
            max_length is not None and any(len(prompt_ids) + len(c) > max_length for c in completions.values())
        )
        if over and policy == "drop":
            stats.dropped += 1
            continue
        if over:
            prompt_ids = prompt_ids[-max_prompt_length:]
            if max_length is not None:
                budget = max_length - len(prompt_ids)
                completions = {name: ids[:budget] for name, ids in completions.items()}
            if kind == "pairs" and completions["chosen"] == completions["rejected"]:
                stats.dropped += 1
                continue
            stats.truncated += 1
        stats.kept += 1
        examples.append(_example(kind, row, prompt_text, prompt_ids, completions, source, i))
    if shortest_prompt is not None and shortest_prompt > max_prompt_length:
        raise DataError(
            f"{stats.source}: none of the {stats.total} prompts fits max_prompt_length={max_prompt_length} tokens "
            f"(the shortest has {shortest_prompt}); raise model.max_prompt_length (and model.max_length)"
        )
    if stats.total and not stats.kept:
        limits = f"max_prompt_length={max_prompt_length}" + (f", max_length={max_length}" if max_length else "")
        advice = " or use model.truncation=truncate" if policy == "drop" else ""
        raise DataError(
            f"{stats.source}: all {stats.total} rows were dropped as over-long ({limits} tokens, policy {policy!r}); "
            f"raise model.max_length / model.max_prompt_length{advice}"
        )
    return examples, stats


def _example(kind: Kind, row: dict, prompt_text: str, prompt_ids: list[int], completions: dict,
             source: str, i: int) -> dict:
    if kind == "pairs":
        return {"prompt_ids": prompt_ids, "chosen_ids": completions["chosen"], "rejected_ids": completions["rejected"]}
    if kind == "completions":
        return {"prompt_ids": prompt_ids, "completion_ids": completions["completion"]}
    if kind == "unpaired":
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completions["completion"],
            "label": label_value(row["label"], source, i),
        }
    return {**row, "prompt_ids": prompt_ids, "prompt_text": prompt_text}


def _encode(tokenizer: Any, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _check_limits(max_length: int | None, max_prompt_length: int, policy: str) -> None:
    if policy not in ("truncate", "drop"):
        raise DataError(f"over-length policy must be 'truncate' or 'drop', got {policy!r}")
    if max_prompt_length < 1:
        raise DataError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    if max_length is not None and max_length <= max_prompt_length:
        raise DataError(
            f"max_length ({max_length}) must exceed max_prompt_length ({max_prompt_length}) "
            "to leave room for a completion"
        )
