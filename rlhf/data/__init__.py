"""Data: rows (pairs, unpaired KTO labels, prompts) -> tokenized examples for ``rlhf.batch``.

=====================  ==============================================================
``schema.py``          row formats, validation, one-line errors (source, row, field)
``loaders.py``         ``load_rows`` (jsonl/json/parquet/hub), ``load_dataset_spec``,
                       ``train_eval_split``
``templates.py``       prompt / completion text from strings or chat messages
``tokenization.py``   ``tokenize_pairs`` / ``tokenize_unpaired`` / ``tokenize_prompts``
``tasks.py``           built-in reasoning-gym prompts, verified pairs, task scoring
=====================  ==============================================================

Typical use::

    rows = load_dataset_spec("default", "pairs", seed=0, n=64)
    examples, stats = tokenize_pairs(rows, tokenizer, max_length=256, max_prompt_length=128,
                                     policy="truncate", source="default")
"""

from rlhf.data.loaders import load_dataset_spec, load_rows, train_eval_split
from rlhf.data.schema import DataError, validate_rows
from rlhf.data.tasks import EASY_TASKS, pairs_to_unpaired, score_with_task, task_prompts, verifier_pairs
from rlhf.data.templates import render_completion, render_prompt
from rlhf.data.tokenization import (
    TokenizeStats,
    tokenize_completions,
    tokenize_pairs,
    tokenize_prompts,
    tokenize_unpaired,
)

__all__ = [
    "EASY_TASKS",
    "DataError",
    "TokenizeStats",
    "load_dataset_spec",
    "load_rows",
    "pairs_to_unpaired",
    "render_completion",
    "render_prompt",
    "score_with_task",
    "task_prompts",
    "tokenize_pairs",
    "tokenize_prompts",
    "tokenize_unpaired",
    "tokenize_completions",
    "train_eval_split",
    "validate_rows",
    "verifier_pairs",
]
