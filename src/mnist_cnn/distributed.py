"""torchrun integration: process-group set-up, rank helpers, the DDP wrapper and failure handling.

Outside torchrun every helper degrades to a single process (rank 0 of 1), so the
training loop has one code path. Design choices (docs/distributed.md):

- The backend follows the device: NCCL for CUDA, gloo otherwise.
- Batch norm is per rank: each rank normalizes with its own shard's statistics
  (global batch / N images). SyncBatchNorm would make N processes compute exactly
  what one does, but PyTorch implements it for GPUs only, and training must mean
  the same thing on every device. Running statistics are averaged over the ranks
  after every epoch (`average_buffers`), so every rank evaluates and saves the
  same model.
- Every collective has a timeout, so a rank that dies or hangs makes the others
  fail with a clear error instead of waiting forever.

    torchrun --standalone --nproc-per-node=2 -m mnist_cnn train --recipe fast --limit-train 5000
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import UserError

DEFAULT_TIMEOUT_S = 600.0  # how long a collective waits for the slowest rank before the job fails


class DistributedError(UserError, RuntimeError):
    """Another rank died, hung or could not be reached; phrased for a person."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def pick_device(name: str = "auto") -> torch.device:
    """The device, chosen once at an entry point: "auto" is CUDA, then MPS, then CPU; under torchrun, this rank's GPU."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but this torch has no CUDA device (see README: GPU set-up)")
    if name == "mps" and not mps:
        raise UserError("--device mps, but this torch has no MPS device (Apple silicon with macOS 12.3 or later)")
    if name == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return torch.device(name)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def setup(device_name: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join torchrun's process group when launched by torchrun (WORLD_SIZE > 1), else do nothing."""
    if not launched_by_torchrun() or is_distributed():
        return
    use_nccl = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if use_nccl else "gloo", timeout=timedelta(seconds=timeout_s))


def teardown() -> None:
    """Leave the process group once every rank is done with it.

    The barrier matters: rank 0 spends seconds saving and drawing the report after
    the last collective, and a rank that destroyed its gloo group meanwhile was
    seen (rarely, in CI) to abort with "terminate called without an active exception".
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether an exception means another rank is gone (rather than a bug in this one)."""
    if isinstance(exc, dist.DistError):
        return True
    # gloo reports lost peers and timeouts as plain RuntimeErrors.
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Timed out", "timed out", "Connection closed", "Connection reset"))


@contextlib.contextmanager
def session(device_name: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S):
    """Join the process group for a block; turn a lost rank into a `DistributedError`.

    On failure the group is left alone and the error propagates, so this process
    exits non-zero; torchrun then stops the other ranks and exits non-zero too.
    """
    try:
        setup(device_name, timeout_s)
        yield
    except Exception as exc:
        if launched_by_torchrun() and is_peer_failure(exc):
            who = f"rank {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}"
            text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip())  # drop gloo's "[path/to/file.cc:123]"
            first_line = text.splitlines()[0] if text else type(exc).__name__
            raise DistributedError(
                f"{who}: lost contact with the other ranks ({first_line}). A rank died, hung for longer "
                f"than --dist-timeout ({timeout_s:g} s), or could not be reached. Every finished epoch is "
                f"saved in the run folder: rerun the same torchrun command with --resume RUN_DIR.") from None
        raise
    teardown()


def wrap(model: nn.Module) -> nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged over ranks); the model itself otherwise.

    Buffers are not broadcast from rank 0 at every step: BN statistics stay per
    rank and are averaged once per epoch by `average_buffers` instead.
    """
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # Newer torch renamed the flag; both spellings still sync buffers once, at construction.
    params = inspect.signature(ddp).parameters
    flag = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return ddp(model, device_ids=device_ids, **{flag: False})


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (identity in a single process)."""
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Replace every floating-point buffer (BN running mean/var) by its mean over the ranks, in place."""
    if not is_distributed():
        return
    for buf in model.buffers():
        if buf.dtype.is_floating_point:
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world_size())


def broadcast_object(obj):
    """Rank 0's value of a picklable object, on every rank (e.g. a timestamped run folder)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
