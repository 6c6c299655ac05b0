"""Prompt and completion text from strings or chat messages, with the tokenizer's chat template.

Conventions (the same for every kind of row):

- plain-string prompt: used as is; a string completion becomes ``text + eos``;
- chat-message prompt: rendered with ``add_generation_prompt=True`` (so it ends where the
  assistant's answer starts); the completion (a string = the assistant's content, or the
  assistant message list) is the difference between the rendered full conversation and the
  rendered prompt, which must be a prefix of it. It is the assistant text followed by the
  template's end marker (``<|im_end|>`` for ChatML); whitespace after a final eos is dropped so
  that the completion ends with eos, as a sampled one does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhf.data.schema import DataError, where


def render_prompt(prompt: str | Sequence[dict], tokenizer: Any, source: str = "", row: int = 0) -> str:
    """Prompt text: a string as is, a message list through the chat template (generation prompt on)."""
    if isinstance(prompt, str):
        return prompt
    _require_template(tokenizer, source, row)
    return tokenizer.apply_chat_template(_plain(prompt), add_generation_prompt=True, tokenize=False)


def render_completion(
    prompt: str | Sequence[dict],
    completion: str | Sequence[dict],
    tokenizer: Any,
    source: str = "",
    row: int = 0,
    field: str = "completion",
) -> str:
    """Completion text that follows ``render_prompt(prompt)``; ends with the eos / end-of-turn marker."""
    eos = tokenizer.eos_token or ""
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise DataError(f"{where(source, row, field)} is a message list but the prompt is a plain string")
        return completion if eos and completion.endswith(eos) else completion + eos
    _require_template(tokenizer, source, row)
    turn = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else _plain(completion)
    prompt_text = tokenizer.apply_chat_template(_plain(prompt), add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(_plain(prompt) + turn, tokenize=False)
    if not full.startswith(prompt_text):
        raise DataError(
            f"{where(source, row, field)}: the chat template does not render prompt + completion as an extension "
            "of the prompt with a generation prompt, so the completion cannot be cut out"
        )
    text = full[len(prompt_text):]
    stripped = text.rstrip()
    if eos and stripped.endswith(eos):
        text = stripped
    if not text.strip():
        raise DataError(f"{where(source, row, field)} renders to an empty completion")
    return text


def _require_template(tokenizer: Any, source: str, row: int) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where(source, row, 'prompt')} is a chat-message list but the tokenizer has no chat template"
        )


def _plain(messages: Sequence[dict]) -> list[dict]:
    """Only role and content go to the template (parquet rows may carry null extra keys)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]
