"""The wire format shared by every backend: a flat byte buffer plus a layout of the tensors in it.

A layout is a list of entries ``[name, dtype, shape, offset, nbytes]`` (plain lists: they travel
as JSON in a broadcast header and by pickle through Ray). Each tensor starts at a multiple of
``ALIGN`` bytes, so a slice of the buffer can be viewed as any dtype. ``pack_into`` writes
tensors into a buffer (one ``copy_`` each, from any device); ``unpack`` yields views of it (no
copy). ``NumpyState`` is the object-store payload (numpy arrays are stored and read zero-copy).

Tied output head: a ``lm_head.weight`` that shares the memory of ``model.embed_tokens.weight`` is
not sent (``without_tied_head``); the generator rebuilds it from the embeddings.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from actors.weight_sync.base import WeightSyncError

ALIGN = 64  # bytes
TIED_EMBED, TIED_HEAD = "model.embed_tokens.weight", "lm_head.weight"
Entry = list  # [name: str, dtype: str, shape: list[int], offset: int, nbytes: int]

_TORCH_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool)
}


def dtype_from_name(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (names as ``str(dtype)`` without ``torch.``)."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise WeightSyncError(f"unsupported tensor dtype {name!r} in a weight payload") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def aligned(size: int) -> int:
    return (size + ALIGN - 1) // ALIGN * ALIGN


def memory_key(tensor: torch.Tensor) -> tuple:
    """Equal for two tensors that view the same memory the same way (tied weights)."""
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())


def without_tied_head(items: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``items`` less a ``lm_head.weight`` that shares the embeddings' memory (the generator rebuilds it)."""
    embed = None  # held until the end, so that its memory cannot be reused by a later tensor
    for name, tensor in items:
        if name == TIED_HEAD and embed is not None and memory_key(tensor) == memory_key(embed):
            continue
        if name == TIED_EMBED:
            embed = tensor
        yield name, tensor


def entry_for(name: str, tensor: torch.Tensor, offset: int) -> Entry:
    return [name, dtype_name(tensor.dtype), list(tensor.shape), offset, nbytes(tensor)]


def layout(items: Sequence[tuple[str, torch.Tensor]], start: int = 0) -> tuple[list[Entry], int]:
    """Entries of ``items`` packed from byte ``start``, and the end offset (aligned)."""
    entries, offset = [], start
    for name, tensor in items:
        entries.append(entry_for(name, tensor, offset))
        offset += aligned(nbytes(tensor))
    return entries, offset


def matches(entry: Entry, name: str, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` named ``name`` fits ``entry`` exactly (same name, dtype and shape)."""
    return entry[0] == name and entry[1] == dtype_name(tensor.dtype) and entry[2] == list(tensor.shape)


def write(buffer: torch.Tensor, entry: Entry, tensor: torch.Tensor) -> None:
    """Copy ``tensor`` into its slot of the flat uint8 ``buffer`` (one copy, across devices if need be)."""
    _, _, shape, offset, size = entry
    if size:
        buffer[offset:offset + size].view(tensor.dtype).view(shape).copy_(tensor.detach())


def pack_into(buffer: torch.Tensor, entries: Sequence[Entry], tensors: Sequence[torch.Tensor]) -> None:
    for entry, tensor in zip(entries, tensors):
        write(buffer, entry, tensor)


def unpack(buffer: torch.Tensor, entries: Sequence[Entry], base: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, view)`` for each entry of the flat uint8 ``buffer`` (offsets counted from ``base``)."""
    for name, dtype, shape, offset, size in entries:
        start = offset - base
        yield name, buffer[start:start + size].view(dtype_from_name(dtype)).view(shape)


@dataclass
class NumpyState:
    """A state dict as numpy arrays, for the Ray object store (numpy is stored and read zero-copy).

    ``arrays[i]`` holds tensor ``names[i]`` of torch dtype ``dtypes[i]``; dtypes numpy lacks
    (bfloat16) travel as a same-size integer view and are viewed back on arrival. Building it
    copies nothing for contiguous CPU tensors: Ray's serialisation is the one copy.
    """

    names: list[str]
    arrays: list[np.ndarray]
    dtypes: list[str]

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, torch.Tensor]]) -> NumpyState:
        names, arrays, dtypes = [], [], []
        seen: dict[tuple, np.ndarray] = {}  # tied tensors (same memory) are stored once
        for name, tensor in items:
            key = memory_key(tensor)
            if key not in seen:
                t = tensor.detach().cpu().contiguous()
                if t.dtype == torch.bfloat16:
                    t = t.view(torch.int16)
                seen[key] = t.numpy()
            names.append(name)
            arrays.append(seen[key])
            dtypes.append(dtype_name(tensor.dtype))
        return cls(names, arrays, dtypes)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` views of the arrays (read-only memory: the loader copies them)."""
        for name, array, name_of_dtype in zip(self.names, self.arrays, self.dtypes):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "non-writable" arrays from the object store
                tensor = torch.from_numpy(array)
            dtype = dtype_from_name(name_of_dtype)
            yield name, tensor.view(dtype) if tensor.dtype != dtype else tensor
