"""Shared-prefix packing: rows that start with the same prompt run that prompt through the model once.

A preference pair's chosen and rejected rows, a KTO row and its mismatched KL row, and the ``n``
samples of an online group all repeat one prompt. Packed, each distinct prompt is one model row::

    loss layout (R rows, right padded)        packed layout (B rows, right padded)
    r0: [prompt A | chosen A ]                b0: [prompt A | chosen A | rejected A]
    r1: [prompt A | rejected A]               b1: [prompt B | s1 | s2 | s3]
    r2..r4: [prompt B | s_j]

A continuation attends to the prompt and to itself only (never to a sibling), and its position
ids continue from the prompt's length, so every token sees exactly the context it has in its own
row: the log-probs are the same function of the weights as unpacked (equal up to float rounding
of differently shaped matmuls). The loss keeps the ``[R, T]`` layout; only the model input changes.

Conventions (``PackedInputs``):

- ``input_ids``, ``position_ids``, ``segments``: ``[B, L]``; ``segments`` is 0 on the shared
  prefix, ``j >= 1`` on the row's ``j``-th continuation and -1 on padding.
- ``row[r]``, ``start[r]``: the packed row of loss row ``r`` and the packed position of its first
  completion token; ``prompt_len[r]``: its prompt length (first ``response_mask`` position).
- ``predictor(rows, cols)``: for target tokens at loss positions ``(rows, cols)`` (completion
  tokens), the packed ``(row, position)`` whose output predicts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A group whose packed row would grow past this many tokens is split over several packed rows
# (the dense [L, L] attention mask grows with the square).
MAX_PACKED_LEN = 4096


@dataclass(frozen=True)
class PackedInputs:
    """Model inputs of the packed layout and the map back to the loss layout (module doc)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    row: torch.Tensor
    start: torch.Tensor
    prompt_len: torch.Tensor

    def attention_mask(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[B, 1, L, L]`` mask: True (or 0.0 when ``dtype`` is a float type) where query may attend key.

        Causal; a continuation sees the shared prefix and its own earlier tokens; a padding query
        sees only itself. (A fully masked query row gives NaN in SDPA; no real query attends to
        padding, but a zero attention weight times a NaN value is still NaN, so padding must stay
        finite.)
        """
        seg = self.segments
        length = seg.shape[1]
        q, k = seg[:, :, None], seg[:, None, :]
        causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
        allowed = causal & (k >= 0) & ((k == 0) | (k == q))
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=seg.device)
        allowed = allowed[:, None]
        if dtype is None or dtype == torch.bool:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)

    def predictor(self, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed ``(row, position)`` predicting the completion token at loss position ``(rows, cols)``."""
        offset = cols - self.prompt_len[rows]  # index of the token inside its completion
        pos = torch.where(offset > 0, self.start[rows] + offset - 1, self.prompt_len[rows] - 1)
        return self.row[rows], pos


def prompt_lengths(attention_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``[R]`` position of each row's first completion token (its length when it has none)."""
    has = response_mask.bool().any(-1)
    first = response_mask.float().argmax(-1)
    return torch.where(has, first, attention_mask.long().sum(-1))


def pack_shared_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                         pad_id: int = 0, max_len: int = MAX_PACKED_LEN) -> PackedInputs:
    """Pack ``[R, T]`` right-padded rows (prompt then completion) by identical prompt (module doc).

    Rows are grouped by their exact prompt token ids in first-seen order; a group is split when
    its packed row would exceed ``max_len`` tokens.
    """
    prompt_len = prompt_lengths(attention_mask, response_mask)
    lengths = attention_mask.long().sum(-1)
    ids_cpu, p_cpu, n_cpu = input_ids.cpu(), prompt_len.cpu().tolist(), lengths.cpu().tolist()
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    for r in range(input_ids.shape[0]):
        key = tuple(ids_cpu[r, : p_cpu[r]].tolist())
        packs = groups.setdefault(key, [[]])
        used = p_cpu[r] + sum(n_cpu[x] - p_cpu[x] for x in packs[-1])
        if packs[-1] and used + n_cpu[r] - p_cpu[r] > max_len:
            packs.append([])
        packs[-1].append(r)
    packs = [pack for group in groups.values() for pack in group]
    width = max(p_cpu[p[0]] + sum(n_cpu[r] - p_cpu[r] for r in p) for p in packs)
    rows_out = len(packs)
    packed_ids = torch.full((rows_out, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows_out, width), dtype=torch.long)
    segments = torch.full((rows_out, width), -1, dtype=torch.long)
    row = torch.zeros(input_ids.shape[0], dtype=torch.long)
    start = torch.zeros(input_ids.shape[0], dtype=torch.long)
    for b, pack in enumerate(packs):
        p = p_cpu[pack[0]]
        packed_ids[b, :p] = ids_cpu[pack[0], :p]
        positions[b, :p] = torch.arange(p)
        segments[b, :p] = 0
        at = p
        for j, r in enumerate(pack, start=1):
            c = n_cpu[r] - p
            packed_ids[b, at : at + c] = ids_cpu[r, p : p + c]
            positions[b, at : at + c] = torch.arange(p, p + c)
            segments[b, at : at + c] = j
            row[r], start[r] = b, at
            at += c
    device = input_ids.device
    return PackedInputs(packed_ids.to(device), positions.to(device), segments.to(device), row.to(device),
                        start.to(device), prompt_len.to(device))


def packed_share(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Tokens the packed layout runs, over the tokens of the unpacked rows (1.0: nothing shared)."""
    packed = pack_shared_prefixes(input_ids, attention_mask, response_mask)
    return float((packed.segments >= 0).sum()) / max(1, int(attention_mask.sum()))
