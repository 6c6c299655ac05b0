"""Rows from files, the hub or the built-in tasks; a seeded train/eval split.

- ``load_rows(path_or_name, split)``: ``.jsonl`` / ``.json`` / ``.parquet`` files are loaded with
  ``datasets`` (its ``json`` / ``parquet`` builders, cached in a temporary folder, nothing left in
  the user's cache). Where ``datasets`` cannot build a table (bad JSON, a field whose type varies
  between rows) the file is read again row by row with ``json`` / pyarrow, so the error names the
  line or the row and field instead of an Arrow schema. A local folder or a hub name goes to
  ``datasets.load_dataset`` (fails in one line when offline).
- ``load_dataset_spec(spec, kind, seed, n)``: ``default`` -> the built-in reasoning-gym data of
  that kind (chain_sum), ``rg:TASK`` -> that task, anything else -> ``load_rows``; the rows are
  validated for ``kind`` before they are returned.
- ``train_eval_split(rows, eval_size, seed)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf.data.schema import DataError, Kind, validate_rows
from rlhf.data.tasks import pairs_to_unpaired, task_prompts, verifier_pairs

DEFAULT_TASK = "chain_sum"
DEFAULT_SIZE = 256
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def load_rows(path_or_name: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """All rows of a local ``.jsonl`` / ``.json`` / ``.parquet`` file, a data folder, or a hub data set.

    A file holds one split: ``split`` applies to folders and hub names only. A ``.json`` file is
    a list of rows, or an object with a list of rows under the key ``split``.
    """
    path = Path(path_or_name).expanduser()
    suffix = path.suffix.lower()
    if suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        rows = _datasets_file(path, suffix, split)
        if rows is not None:
            return rows
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path, split)
        return _read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt", ".arrow", ".yaml", ".yml") or (path.exists() and not path.is_dir()):
        raise ValueError(f"data file {str(path)!r}: unsupported format (use {', '.join(FILE_SUFFIXES)})")
    return _load_with_datasets(str(path_or_name), split)


def _datasets_file(path: Path, suffix: str, split: str) -> list[dict[str, Any]] | None:
    """Rows through ``datasets``' file builders, or None when it cannot build a table.

    ``datasets`` gives every row the union of all fields (absent ones as None); a None in a
    required field is reported by the row validator like a missing one. A ``.json`` object with
    the rows under ``split`` is left to the plain reader.
    """
    import tempfile

    import datasets

    if suffix == ".json" and path.read_text(encoding="utf-8", errors="replace").lstrip()[:1] != "[":
        return None  # an object with the rows under a split name, or not JSON at all: the plain reader says which
    builder = "parquet" if suffix == ".parquet" else "json"
    with tempfile.TemporaryDirectory(prefix="rlhf-datasets-") as cache:
        try:
            progress = datasets.utils.logging.is_progress_bar_enabled()
            datasets.utils.logging.disable_progress_bar()
            try:
                ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                           keep_in_memory=True)
            finally:
                if progress:
                    datasets.utils.logging.enable_progress_bar()
            return ds.to_list()
        except Exception:  # noqa: BLE001 - any failure: the row-by-row reader says where
            return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {line_no} (1-based) is not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}: row {len(rows)} (0-based, line {line_no}) is a {type(row).__name__}, not an object"
                )
            rows.append(row)
    return rows


def _read_json(path: Path, split: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON at line {exc.lineno} (1-based): {exc.msg}") from None
    if isinstance(data, dict):
        if not isinstance(data.get(split), list):
            raise DataError(f"{path}: expected a list of rows, or an object with a list under {split!r}")
        data = data[split]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} (0-based) is a {type(row).__name__}, not an object")
    return data


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{path}: cannot read as parquet: {_first_line(exc)}") from None


def _load_with_datasets(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()
    except Exception as exc:  # noqa: BLE001 - hub, network and format errors all end here
        raise ValueError(
            f"data {name!r} is not a local {'/'.join(FILE_SUFFIXES)} file and could not be loaded with "
            f"datasets.load_dataset (split {split!r}): {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_dataset_spec(
    spec: str, kind: Kind, seed: int = 0, n: int | None = None, **task_kwargs: Any
) -> list[dict[str, Any]]:
    """Rows of ``kind`` (``pairs`` / ``unpaired`` / ``prompts``) named by ``spec``, validated.

    ``default`` and ``rg:TASK`` build ``n`` rows (default 256) of a reasoning-gym task from
    ``seed``: verified pairs, their unpaired split (chosen -> label 1, rejected -> label 0,
    alternating) or prompts with answers. A file or hub name gives its rows (the first ``n``
    when ``n`` is set).
    """
    if spec == "default" or spec.startswith("rg:"):
        task = DEFAULT_TASK if spec == "default" else spec[3:]
        if not task:
            raise ValueError(f"data spec {spec!r}: name a task after 'rg:', e.g. rg:{DEFAULT_TASK}")
        size = DEFAULT_SIZE if n is None else n
        if kind == "pairs":
            rows = verifier_pairs(task, size, seed, **task_kwargs)
        elif kind == "unpaired":
            rows = pairs_to_unpaired(verifier_pairs(task, (size + 1) // 2, seed, **task_kwargs))[:size]
        elif kind == "prompts":
            rows = task_prompts(task, size, seed, **task_kwargs)
        else:
            raise ValueError(f"unknown data kind {kind!r} (valid: pairs, unpaired, prompts)")
        source = spec
    else:
        if task_kwargs:
            raise ValueError(f"data spec {spec!r}: task settings {sorted(task_kwargs)} apply to rg: tasks only")
        rows = load_rows(spec)
        if n is not None:
            rows = rows[:n]
        source = spec
    validate_rows(rows, kind, source)
    return rows


def train_eval_split(
    rows: Sequence[Any], eval_size: int | float, seed: int = 0
) -> tuple[list[Any], list[Any]]:
    """Split rows into ``(train, eval)``; a seeded random choice of eval rows, both in input order.

    ``eval_size``: a count (``int`` >= 0) or a fraction in ``(0, 1)`` (rounded, at least 1 row).
    The train part must not be empty.
    """
    n = len(rows)
    if isinstance(eval_size, float) and not isinstance(eval_size, bool):
        if not 0.0 < eval_size < 1.0:
            raise ValueError(f"eval_size as a fraction must be in (0, 1), got {eval_size}")
        k = max(1, round(eval_size * n))
    else:
        k = int(eval_size)
    if k < 0 or k >= n:
        raise ValueError(f"eval_size {eval_size} leaves no training rows out of {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
