"""A learner's training state out of device memory while a vLLM engine on the same GPU generates.

When one GPU holds a learner and a vLLM engine (``generator.sleep``, see ``rlhf.driver.fit``),
they take turns: the engine sleeps while the learner trains, and the learner moves what only an
optimizer step needs to host memory while the engine generates. What moves:

- ZeRO 1-2 (DeepSpeed's optimizers): ``engine.offload_states`` with the optimizer state (Adam's
  moments), the fp32 master weights and the gradient partitions / buffers. The model's own
  (bf16) weights stay: the weight sync and the log-prob forwards between two steps read them.
- ZeRO-3: DeepSpeed moves Adam's state and the fp32 partitions only for its own FusedAdam, so it
  moves the gradient partitions and buckets, and Adam's moments are moved here (as at ZeRO-0); the
  fp32 partitions (4 bytes per parameter over the ranks) stay.
- ZeRO-0 (the torch optimizer itself): every tensor in the optimizer's state (Adam's moments and
  fused AdamW's step counters).

``reload`` moves it all back before the next optimizer step. Both are exact moves (no value
changes): a step after ``offload`` + ``reload`` equals a step without them, bit for bit
(``tests/integration/test_learner.py``, on CPU where both ends are host memory).
"""

from __future__ import annotations

from typing import Any

import torch


def torch_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The innermost torch optimizer of a DeepSpeed engine (ZeRO wrappers hold it as ``.optimizer``)."""
    inner = engine.optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    return inner


def offload(engine: Any, zero_stage: int, device: torch.device) -> None:
    """Move the optimizer-only training state of ``engine`` (on ``device``) to host memory."""
    if int(zero_stage) >= 1:
        from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum

        states = [OffloadStateTypeEnum.lp_grads, OffloadStateTypeEnum.contiguous_grad_buffer]
        if int(zero_stage) < 3:
            states += [OffloadStateTypeEnum.optim_states, OffloadStateTypeEnum.hp_params]
        engine.offload_states(include=states, device=OffloadDeviceEnum.cpu, pin_memory=device.type == "cuda")
    if int(zero_stage) in (0, 3):
        _move_state(torch_optimizer(engine), torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reload(engine: Any, zero_stage: int, device: torch.device) -> None:
    """Undo ``offload``: the state back on ``device``."""
    if int(zero_stage) >= 1:
        engine.reload_states()
    if int(zero_stage) in (0, 3):
        _move_state(torch_optimizer(engine), device)


def _move_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.device != device:
                state[key] = value.to(device)
