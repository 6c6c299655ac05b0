"""Process set-up shared by the learner and reference actors: device, backend, dtype, DeepSpeed.

Everything that differs between a CPU box and a GPU cluster is decided here and nowhere else:

| device | backend | accelerator (``DS_ACCELERATOR``) | dtypes               |
|--------|---------|----------------------------------|----------------------|
| cpu    | gloo    | cpu                              | float32, bfloat16    |
| cuda   | nccl    | cuda                             | float32, bfloat16    |

DeepSpeed is imported lazily (``import_deepspeed``) because the accelerator must be chosen
through the environment *before* its first import, and because on CPU its communication
backend would otherwise JIT-compile a shared-memory all-reduce op (~150 s, needs g++) that only
inference uses.
"""

from __future__ import annotations

import importlib
import math
import os
import socket
import sys
from datetime import timedelta
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BACKENDS: dict[str, str] = {"cpu": "gloo", "cuda": "nccl"}


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` -> the torch dtype; anything else fails listing the valid names."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not supported; valid: {', '.join(DTYPES)}") from None


def backend_for(device: str) -> str:
    """The torch.distributed backend of ``device`` (``cpu`` -> gloo, ``cuda`` -> nccl)."""
    try:
        return BACKENDS[device]
    except KeyError:
        raise ValueError(f"device {device!r} is not supported; valid: {', '.join(BACKENDS)}") from None


def local_device(device: str) -> torch.device:
    """The torch device this process computes on.

    On GPU each actor is given one GPU by Ray (``CUDA_VISIBLE_DEVICES`` holds just that one), so
    the device is always ``cuda:0`` as the process sees it.
    """
    backend_for(device)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but this process sees no GPU (CUDA_VISIBLE_DEVICES?)")
        torch.cuda.set_device(0)
        return torch.device("cuda", 0)
    return torch.device("cpu")


def set_threads() -> int:
    """Use as many torch threads as the CPUs Ray gave this actor (``OMP_NUM_THREADS``, default 1)."""
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    torch.set_num_threads(threads)
    return threads


def import_deepspeed(device: str):
    """Import deepspeed for ``device``: set ``DS_ACCELERATOR`` first, never build the CPU shm op.

    The shared-memory comm op of ``deepspeed.comm.torch`` serves inference all-reduce only; the
    training path works without it, so its builder is replaced by one that returns None (the
    module is reached through importlib because ``deepspeed.comm.torch`` as an attribute is
    shadowed by the ``torch`` name it imports).
    """
    backend_for(device)
    accelerator = device  # DeepSpeed's accelerator names match ours: "cpu", "cuda"
    current = os.environ.get("DS_ACCELERATOR")
    if current and current != accelerator and "deepspeed" in sys.modules:
        raise RuntimeError(f"deepspeed was already imported with DS_ACCELERATOR={current}, not {accelerator}")
    os.environ["DS_ACCELERATOR"] = accelerator
    import deepspeed

    if device == "cpu":
        comm_torch = importlib.import_module("deepspeed.comm.torch")
        comm_torch.build_shm_op = _no_shm_op
    return deepspeed


def _no_shm_op() -> None:
    return None


def free_address() -> tuple[str, int]:
    """This node's IP (as Ray sees it) and a TCP port that was free a moment ago."""
    try:
        import ray

        host = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (a plain test process) the loopback address works
        host = "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return host, port


def init_process_group(
    rank: int, world_size: int, master_addr: str, master_port: int, device: str, timeout_s: float
) -> None:
    """Join the learners' process group through DeepSpeed, with an explicit collective timeout.

    Sets the usual launcher variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` = 0 since every
    actor owns at most one GPU, ``MASTER_ADDR``, ``MASTER_PORT``) so that DeepSpeed and torch
    agree, then initialises with the backend of ``device``. Every collective afterwards (gradient
    reduction, ZeRO-3 gathers) fails after ``timeout_s`` instead of hanging.
    """
    deepspeed = import_deepspeed(device)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
        MASTER_ADDR=str(master_addr),
        MASTER_PORT=str(master_port),
    )
    deepspeed.init_distributed(
        dist_backend=backend_for(device),
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=float(timeout_s)),
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        verbose=False,
    )


def adamw_kernel(device: str) -> dict[str, Any]:
    """Keyword arguments that pick torch AdamW's fused kernel (one kernel over all tensors, CPU and CUDA)
    instead of its per-parameter loop; the update is the same AdamW."""
    backend_for(device)
    return {"fused": True}


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` steps that starts at ``1 / warmup_steps`` (never 0, so
    the first step already learns) and reaches 1 at step ``warmup_steps - 1``; then a cosine
    from 1 down to ``min_lr_ratio`` at step ``total_steps``, flat afterwards. With
    ``total_steps <= warmup_steps`` the rate stays at its peak after warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = total_steps - warmup_steps
    if span <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of ``batch`` to ``device`` (other values pass through)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
