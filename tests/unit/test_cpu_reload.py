"""``actors.cpu_reload.stack``: a fused layer's weight is a view when its parts lie back to back."""

from __future__ import annotations

import torch

from actors.cpu_reload import stack


def test_adjacent_parts_are_viewed_not_copied():
    flat = torch.arange(5 * 3 * 4, dtype=torch.float32)
    q, k, v = flat[:24].view(8, 3), flat[24:36].view(4, 3), flat[36:48].view(4, 3)
    fused = stack([q, k, v], torch.float32)
    assert torch.equal(fused, torch.cat([q, k, v]))
    assert fused.data_ptr() == q.data_ptr() and fused.shape == (16, 3)
    flat[0] = -1.0
    assert fused[0, 0] == -1.0  # the same memory


def test_parts_that_are_not_adjacent_are_concatenated():
    flat = torch.arange(60, dtype=torch.float32)
    q, v = flat[:24].view(8, 3), flat[36:48].view(4, 3)  # a gap between them
    gap = stack([q, v], torch.float32)
    assert torch.equal(gap, torch.cat([q, v])) and gap.data_ptr() != q.data_ptr()
    swapped = stack([flat[24:36].view(4, 3), q], torch.float32)  # adjacent in memory, not in this order
    assert torch.equal(swapped, torch.cat([flat[24:36].view(4, 3), q]))
    other = stack([q.double(), flat[24:36].view(4, 3).double()], torch.float32)  # another dtype: converted
    assert other.dtype == torch.float32 and torch.equal(other, flat[:36].view(12, 3))
    single = stack([q], torch.float32)
    assert single is q
