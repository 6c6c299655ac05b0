"""Rows from files, the hub or the built-in tasks; a seeded train/eval split.

- ``load_rows(path_or_name, split)``: ``.jsonl`` / ``.json`` files are read with ``json``, row by
  row, so every value is exactly what the file says and an error names the line (``datasets``'
  JSON builder infers one Arrow type per column: it turned ``" 3"`` beside ``3`` into the
  integer 3, and moved errors to the wrong row); ``.parquet`` files with pyarrow (typed already).
  A hub name goes to
  ``datasets.load_dataset`` (fails in one line when offline). A folder, a missing or empty file,
  another file type, bytes that are not UTF-8: one line naming the file (``DataError``).
- ``check_data_spec(spec)``: the cheap part (nothing read), for config validation.
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


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file that does not exist."""


def _looks_like_path(spec: str) -> bool:
    path = Path(spec).expanduser()
    return bool(path.suffix) or spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.exists()


def check_data_spec(spec: str) -> None:
    """Fail in one line for a data spec that cannot load: a missing file, a folder, a file type
    other than .jsonl/.json/.parquet, ``rg:`` without a task. Reads nothing; a hub name passes."""
    if spec == "default" or spec.startswith("rg:"):
        if spec == "rg:":
            raise DataError(f"data spec {spec!r}: name a task after 'rg:', e.g. rg:{DEFAULT_TASK}")
        return
    if not _looks_like_path(spec):
        return  # a hub data set name: datasets says whether it can be reached
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataFileNotFoundError(f"data file {spec!r} does not exist")
    if path.is_dir():
        raise DataError(f"data {spec!r} is a folder; give a {', '.join(FILE_SUFFIXES)} file")
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataError(f"data file {spec!r}: unsupported file type {path.suffix or '(no suffix)'!r} "
                        f"(use {', '.join(FILE_SUFFIXES)})")


def load_rows(path_or_name: str | Path, split: str = "train", subset: str | None = None,
              columns: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """All rows of a local ``.jsonl`` / ``.json`` / ``.parquet`` file, or of a hub data set.

    A file holds one split: ``split`` and ``subset`` (the configuration name) apply to hub names
    only. A ``.json`` file is a list of rows, or an object with a list of rows under the key
    ``split``. A file without rows fails. ``columns`` maps the fields the project reads to the
    data set's own column names (``{"prompt": "question"}``: column ``question`` is read as
    ``prompt``); a row without a mapped column fails naming the row and the column.
    """
    rows = _load(path_or_name, split, subset)
    return rename_columns(rows, columns or {}, str(path_or_name))


def rename_columns(rows: list[dict[str, Any]], columns: dict[str, str], source: str) -> list[dict[str, Any]]:
    """``rows`` with column ``columns[field]`` read as ``field`` (see ``load_rows``)."""
    if not columns:
        return rows
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            return rows  # validation names the row that is not an object
        renamed = dict(row)
        for target, column in columns.items():
            if column not in row:
                raise DataError(f"{source}: row {i} (0-based) has no column {column!r} (data.columns maps it to "
                                f"{target!r}; columns present: {', '.join(sorted(map(str, row)))})")
            renamed.pop(column)
            renamed[target] = row[column]
        out.append(renamed)
    return out


def _load(path_or_name: str | Path, split: str, subset: str | None) -> list[dict[str, Any]]:
    check_data_spec(str(path_or_name))
    path = Path(path_or_name).expanduser()
    if not _looks_like_path(str(path_or_name)):
        return _load_with_datasets(str(path_or_name), split, subset)
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (no rows)")
    if suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix == ".json":
        rows = _read_json(path, split)
    else:
        rows = _read_parquet(path)
    if not rows:
        raise DataError(f"{path}: the file holds no rows")
    return rows


def _decode(raw: bytes, path: Path, first_line: int = 1) -> str:
    """``raw`` as UTF-8 (a leading BOM dropped); a bad byte fails naming its line and column."""
    try:
        return raw.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        line_no = first_line + raw[: exc.start].count(b"\n")
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}: line {line_no} (1-based) is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
            f"{column}); save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = _decode(raw, path, line_no)
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
        data = json.loads(_decode(path.read_bytes(), path))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} (1-based): {exc.msg}"
        ) from None
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


def _load_with_datasets(name: str, split: str, subset: str | None = None) -> list[dict[str, Any]]:
    import datasets

    verbosity = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    try:
        return datasets.load_dataset(name, subset, split=split).to_list()
    except Exception as exc:  # noqa: BLE001 - hub, network and format errors all end here
        raise DataError(
            f"data {name!r} is not a local {'/'.join(FILE_SUFFIXES)} file and could not be loaded with "
            f"datasets.load_dataset (split {split!r}): {_first_line(exc)}"
        ) from None
    finally:
        datasets.utils.logging.set_verbosity(verbosity)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_dataset_spec(
    spec: str, kind: Kind, seed: int = 0, n: int | None = None, split: str = "train", subset: str | None = None,
    columns: dict[str, str] | None = None, **task_kwargs: Any
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
            raise DataError(f"data spec {spec!r}: name a task after 'rg:', e.g. rg:{DEFAULT_TASK}")
        size = DEFAULT_SIZE if n is None else n
        if kind in ("pairs", "completions"):  # SFT on the built-in task: the verified (chosen) answers
            rows = verifier_pairs(task, size, seed, **task_kwargs)
        elif kind == "unpaired":
            rows = pairs_to_unpaired(verifier_pairs(task, (size + 1) // 2, seed, **task_kwargs))[:size]
        elif kind == "prompts":
            rows = task_prompts(task, size, seed, **task_kwargs)
        else:
            raise ValueError(f"unknown data kind {kind!r} (valid: pairs, unpaired, completions, prompts)")
        source = spec
    else:
        if task_kwargs:
            raise ValueError(f"data spec {spec!r}: task settings {sorted(task_kwargs)} apply to rg: tasks only")
        rows = load_rows(spec, split=split, subset=subset, columns=columns)
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
        raise DataError(
            f"eval_size {eval_size} leaves no training rows out of {n}; lower data.eval_size or give data.eval"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
