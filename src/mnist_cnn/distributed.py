"""torchrun integration: process-group set-up, rank helpers and the DDP wrapper.

Outside torchrun every helper degrades to a single process (rank 0 of 1).

    torchrun --nproc-per-node=2 -m mnist_cnn train --recipe fast --limit-train 5000
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def wrap(model: nn.Module) -> nn.Module:
    if not is_distributed():
        return model
    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (identity in a single process)."""
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", 0))


def setup(device_name: str = "auto") -> None:
    """Join torchrun's process group when launched by torchrun (WORLD_SIZE set), else do nothing."""
    import os

    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or is_distributed():
        return
    use_nccl = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if use_nccl else "gloo")


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()
