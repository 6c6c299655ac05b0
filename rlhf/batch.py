"""Turn tokenized examples into padded tensor batches, and split global batches.

Examples are plain dicts of Python lists and numbers (picklable, cheap to ship to actors):

- pair: ``{"prompt_ids", "chosen_ids", "rejected_ids"}``
- unpaired (KTO): ``{"prompt_ids", "completion_ids", "label"}`` (label: 1 desirable, 0 not)
- sample (online): ``{"prompt_ids", "completion_ids", "reward", "group"}`` and optionally
  ``"behaviour_logps"`` (one float per completion token), ``"version"``, plus any float field.

Every batch is right padded; see ``rlhf.objectives.base`` for the row layout of each kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

Example = Mapping[str, Any]


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Concatenate ``(prompt_ids, completion_ids)`` rows into right-padded tensors.

    Returns ``input_ids``, ``attention_mask`` and ``response_mask``, each ``[R, T]`` with ``T``
    the longest row. ``response_mask`` is 1 on completion tokens only.
    """
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (prompt, completion) in enumerate(rows):
        n_p, n_c = len(prompt), len(completion)
        if n_p == 0:
            raise ValueError(f"row {r} has an empty prompt: the first completion token needs a context")
        input_ids[r, : n_p + n_c] = torch.tensor(list(prompt) + list(completion), dtype=torch.long)
        attention[r, : n_p + n_c] = 1
        response[r, n_p : n_p + n_c] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response}


def collate_pairs(examples: Sequence[Example], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pairs -> one batch of ``2P`` rows: the ``P`` chosen rows, then the ``P`` rejected rows."""
    rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
    rows += [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
    return pad_rows(rows, pad_id)


def collate_unpaired(
    examples: Sequence[Example], kl_completions: Sequence[Sequence[int]], pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """KTO rows -> ``2B`` rows: the ``B`` real rows, then ``B`` mismatched rows.

    Mismatched row ``i`` is prompt ``i`` followed by ``kl_completions[i]`` (a completion that
    belongs to another prompt; see ``mismatched_completions``). ``label`` is ``[B]`` float.
    """
    if len(kl_completions) != len(examples):
        raise ValueError("one mismatched completion is needed per KTO row")
    rows = [(e["prompt_ids"], e["completion_ids"]) for e in examples]
    rows += [(e["prompt_ids"], c) for e, c in zip(examples, kl_completions)]
    batch = pad_rows(rows, pad_id)
    batch["label"] = torch.tensor([float(e["label"]) for e in examples])
    return batch


def mismatched_completions(examples: Sequence[Example]) -> list[list[int]]:
    """For KTO's KL reference point: row ``i`` gets the completion of row ``(i + 1) % B``.

    The driver calls it on the whole global batch and stores the result on each example as
    ``kl_completion_ids`` before sharding, so any batch size works, odd ones included; with
    ``B = 1`` the only completion available is the row's own (the estimate then degenerates to
    that row's KL).
    """
    n = len(examples)
    return [list(examples[(i + 1) % n]["completion_ids"]) for i in range(n)]


def collate_samples(examples: Sequence[Example], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Online samples -> ``R`` rows with per-sample and per-token fields.

    Adds ``rewards`` ``[R]``, ``group`` ``[R]`` long, and, when present on every example,
    ``behaviour_logps`` ``[R, T]`` and ``advantages`` / ``returns`` / ``old_logps`` ``[R, T]``
    (per-token lists aligned with the completion tokens) and ``version`` ``[R]``.
    """
    batch = pad_rows([(e["prompt_ids"], e["completion_ids"]) for e in examples], pad_id)
    batch["rewards"] = torch.tensor([float(e["reward"]) for e in examples])
    batch["group"] = torch.tensor([int(e["group"]) for e in examples], dtype=torch.long)
    if all("version" in e for e in examples):
        batch["version"] = torch.tensor([int(e["version"]) for e in examples], dtype=torch.long)
    for key in ("behaviour_logps", "advantages", "returns", "old_logps", "ref_token_logps"):
        if examples and all(key in e for e in examples):
            batch[key] = _per_token(examples, key, batch["response_mask"])
    return batch


def _per_token(examples: Sequence[Example], key: str, response_mask: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(response_mask.shape, dtype=torch.float32)
    for r, e in enumerate(examples):
        values = e[key]
        start = len(e["prompt_ids"])
        if len(values) != len(e["completion_ids"]):
            raise ValueError(f"sample {r}: {key} has {len(values)} values for {len(e['completion_ids'])} tokens")
        out[r, start : start + len(values)] = torch.as_tensor(values, dtype=torch.float32)
    return out


def shard(examples: Sequence[Example], world_size: int, grad_accum: int) -> list[list[list[Example]]]:
    """Split a global batch into ``world_size`` ranks x ``grad_accum`` micro-batches.

    The global batch size must divide evenly (DeepSpeed needs the same number of micro-batches
    on every rank); the error says so. Returns ``out[rank][micro]`` lists of examples.
    """
    n = len(examples)
    parts = world_size * grad_accum
    if n == 0 or n % parts:
        raise ValueError(
            f"global batch of {n} examples does not split into {world_size} rank(s) x {grad_accum} micro-batch(es)"
        )
    size = n // parts
    chunks = [list(examples[i * size : (i + 1) * size]) for i in range(parts)]
    return [chunks[r * grad_accum : (r + 1) * grad_accum] for r in range(world_size)]


def global_counts(kind: str, examples: Sequence[Example]):
    """``GlobalCounts`` of a global batch of ``kind`` (``pairs``, ``unpaired`` or ``prompts``).

    ``nonempty`` counts the examples with at least one response token: for ``prompts`` and
    ``unpaired``, the rows whose completion is non-empty; for ``pairs``, the pairs whose chosen
    and rejected completions are both non-empty (the data schema requires it, so it equals
    ``examples``; the pair objectives average over ``examples`` anyway).
    """
    from rlhf.objectives.base import GlobalCounts

    if kind == "pairs":
        tokens = sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
        nonempty = sum(1 for e in examples if len(e["chosen_ids"]) and len(e["rejected_ids"]))
    elif kind in ("unpaired", "completions", "prompts"):
        tokens = sum(len(e["completion_ids"]) for e in examples)
        nonempty = sum(1 for e in examples if len(e["completion_ids"]))
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    return GlobalCounts(examples=len(examples), tokens=tokens, nonempty=nonempty)


def collate(kind: str, examples: Sequence[Example], pad_id: int = 0,
            kl_completions: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """Collate ``examples`` of data kind ``kind`` (dispatch over the three collators)."""
    if kind == "pairs":
        return collate_pairs(examples, pad_id)
    if kind == "unpaired":
        if kl_completions is None and all("kl_completion_ids" in e for e in examples):
            kl_completions = [e["kl_completion_ids"] for e in examples]
        return collate_unpaired(examples, kl_completions or mismatched_completions(examples), pad_id)
    if kind == "prompts":
        return collate_samples(examples, pad_id)
    if kind == "completions":
        return pad_rows([(e["prompt_ids"], e["completion_ids"]) for e in examples], pad_id)
    raise ValueError(f"unknown data kind {kind!r}")


def slice_rows(batch: Mapping[str, torch.Tensor], index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    """Rows ``index`` of every ``[R, ...]`` tensor in ``batch``, with trailing all-padding columns cut."""
    out = {k: v[index] for k, v in batch.items()}
    return trim_padding(out)


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the columns after the longest row from every ``[R, T]`` tensor (same ``T`` as input_ids)."""
    mask = batch["attention_mask"]
    if mask.numel() == 0:
        return batch
    width = int(mask.sum(-1).max().item())
    full = mask.shape[1]
    return {k: (v[:, :width] if v.dim() == 2 and v.shape[1] == full else v) for k, v in batch.items()}
