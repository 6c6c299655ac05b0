"""Row formats and their validation, with one-line errors naming source, row and field.

Three kinds of rows (plain dicts, as read from a file or built in memory):

- ``pairs``: ``{"prompt", "chosen", "rejected"}``
- ``unpaired`` (KTO): ``{"prompt", "completion", "label"}``, label ``True``/``False`` or ``1``/``0``
- ``completions`` (SFT): ``{"prompt", "completion"}``; a row of a pairs file is read as its
  ``chosen`` completion (supervised fine-tuning on the preferred answers)
- ``prompts`` (online RL): ``{"prompt", ...}``; every other column (``answer``, ``metadata``, ...)
  is kept as is for the reward functions.

A prompt is a non-empty string or a non-empty chat-message list ``[{"role", "content"}, ...]``.
A completion is a non-empty string, or (after a message-list prompt) a message list holding the
assistant turn(s). Row numbers in errors are 0-based positions in the row list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

Kind = Literal["pairs", "unpaired", "completions", "prompts"]

COMPLETION_FIELDS: dict[str, tuple[str, ...]] = {
    "pairs": ("chosen", "rejected"),
    "unpaired": ("completion",),
    "completions": ("completion",),
    "prompts": (),
}


class DataError(ValueError):
    """A malformed row: the message names the source, the 0-based row and the field."""


def where(source: str, row: int, field: str | None = None) -> str:
    """``"file.jsonl: row 3 (0-based), field 'chosen'"`` — the start of every row error."""
    text = f"{source or '<rows>'}: row {row} (0-based)"
    return f"{text}, field {field!r}" if field else text


def validate_rows(rows: Sequence[Any], kind: Kind, source: str) -> None:
    """Check every row of ``kind``; raise :class:`DataError` at the first malformed one."""
    if kind not in COMPLETION_FIELDS:
        raise ValueError(f"unknown data kind {kind!r} (valid: {', '.join(COMPLETION_FIELDS)})")
    for i, row in enumerate(rows):
        validate_row(row, kind, source, i)


def as_completion_row(row: Any) -> Any:
    """A ``completions`` (SFT) row: a preference pair is read as its chosen answer; anything else as is."""
    if isinstance(row, Mapping) and "completion" not in row and "chosen" in row:
        return {**row, "completion": row["chosen"]}
    return row


def validate_row(row: Any, kind: Kind, source: str, i: int) -> None:
    """Check one row of ``kind`` (see the module docstring for the formats)."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where(source, i)}: expected an object with fields, got {type(row).__name__}")
    if kind == "completions":
        row = as_completion_row(row)
    prompt = _field(row, "prompt", source, i)
    check_prompt(prompt, source, i)
    for name in COMPLETION_FIELDS[kind]:
        check_completion(_field(row, name, source, i), prompt, source, i, name)
    if kind == "unpaired":
        label_value(_field(row, "label", source, i), source, i)


def _field(row: Mapping, name: str, source: str, i: int) -> Any:
    if name not in row:
        raise DataError(f"{where(source, i, name)} is missing (fields present: {', '.join(map(str, row)) or 'none'})")
    if row[name] is None:
        raise DataError(f"{where(source, i, name)} is missing or null")  # datasets fills absent fields with None
    return row[name]


def check_prompt(prompt: Any, source: str, i: int) -> None:
    """A prompt is a non-empty string or a non-empty list of chat messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where(source, i, 'prompt')} is an empty string")
        return
    check_messages(prompt, source, i, "prompt")


def check_completion(completion: Any, prompt: Any, source: str, i: int, name: str) -> None:
    """A completion is a non-empty string, or assistant message(s) after a message-list prompt."""
    if isinstance(completion, str):
        if not completion.strip():
            raise DataError(f"{where(source, i, name)} is an empty string")
        return
    if not isinstance(completion, Sequence) or isinstance(completion, bytes):
        raise DataError(
            f"{where(source, i, name)} must be a string (or chat messages after a message-list prompt), "
            f"got {type(completion).__name__}"
        )
    if isinstance(prompt, str):
        raise DataError(
            f"{where(source, i, name)} is a {type(completion).__name__} but the prompt is a plain string "
            "(use a string, or make the prompt a chat-message list)"
        )
    check_messages(completion, source, i, name)


def check_messages(messages: Any, source: str, i: int, name: str) -> None:
    """A non-empty list of ``{"role": str, "content": str}``; only system content may be empty."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise DataError(
            f"{where(source, i, name)} must be a string or a list of chat messages, got {type(messages).__name__}"
        )
    if len(messages) == 0:
        raise DataError(f"{where(source, i, name)} is an empty message list")
    for m, message in enumerate(messages):
        at = f"{where(source, i, name)}, message {m}"
        if not isinstance(message, Mapping):
            raise DataError(f"{at} must be an object with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message or message[key] is None:
                raise DataError(f"{at} has no {key!r}")
            if not isinstance(message[key], str):
                raise DataError(f"{at}: {key!r} must be a string, got {type(message[key]).__name__}")
        if not message["role"]:
            raise DataError(f"{at} has an empty 'role'")
        if message["role"] != "system" and not message["content"].strip():
            raise DataError(f"{at} ({message['role']}) has empty 'content'")


def label_value(label: Any, source: str, i: int) -> int:
    """KTO label -> 1 (desirable) or 0 (undesirable); accepts booleans and the numbers 0 and 1."""
    if isinstance(label, bool):
        return int(label)
    if isinstance(label, (int, float)) and label in (0, 1):
        return int(label)
    raise DataError(f"{where(source, i, 'label')} must be boolean (true/false or 1/0), got {label!r}")
