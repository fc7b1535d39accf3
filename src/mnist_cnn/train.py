"""The training loop: in-memory MNIST batched by index, a visible step, per-epoch checkpoints.

Randomness is a function of (seed, epoch): each epoch reseeds its shuffling,
augmentation and dropout generators, so resuming from an epoch's checkpoint
restores the RNG state exactly, and torchrun ranks agree on every permutation.

    mnist-cnn train --recipe fast --out runs/fast
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint, distributed, models
from .augment import augment_batch, to_float
from .data import MNIST, MNIST_MEAN, MNIST_STD, atomic_write
from .evaluate import evaluate
from .recipes import TrainConfig

STATE_NAME = "train_state.safetensors"
HISTORY_NAME = "history.json"


@dataclass
class History:
    steps: list[dict] = field(default_factory=list)  # {step, epoch, loss, acc, lr}
    epochs: list[dict] = field(default_factory=list)  # {epoch, val_acc, val_loss, seconds}
    seconds: float = 0.0  # wall time inside `train`, added up over every resumed segment


def normalization(cfg: TrainConfig) -> tuple[float, float]:
    return (MNIST_MEAN, MNIST_STD) if cfg.normalize else (0.0, 1.0)


def lr_at(step: int, total_steps: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """The learning rate for a step (0-based) under the recipe's schedule."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":  # StepLR: multiply by gamma after every epoch
        return cfg.lr * cfg.step_gamma ** (step // steps_per_epoch)
    warmup = max(1, round(cfg.warmup * total_steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if cfg.schedule == "onecycle":  # linear ramp down to zero after the warm-up
        return cfg.lr * (1 - progress)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def build(cfg: TrainConfig, device) -> nn.Module:
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
    model = models.build_model(cfg.model, **cfg.model_args).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def epoch_generator(cfg: TrainConfig, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """This rank's index batches for one epoch (CPU permutation, same on every device and rank).

    Each global batch of `batch_size` is split across the torchrun ranks; a last
    partial batch is dropped unless it is the only one, since a batch of one
    breaks batch norm.
    """
    perm = torch.randperm(n, generator=generator)
    full = max(1, n // batch_size)
    rank, world = distributed.rank(), distributed.world_size()
    return [perm[i * batch_size:(i + 1) * batch_size][rank::world] for i in range(full)]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    # Warm the decay up from 0: with a fixed 0.999 from step 0, the random initial
    # weights would still hold 0.999**2500 = 8% of the average after 2,500 steps.
    decay = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(p, 1 - decay)
        else:  # counters such as BN's num_batches_tracked
            e.copy_(p)


def train_one_epoch(model, optimizer, data: MNIST, cfg: TrainConfig, epoch: int, step: int, total_steps: int,
                    steps_per_epoch: int, ema=None, on_step: Callable[[dict], None] | None = None) -> int:
    """One pass over this rank's shard of a shuffled permutation; returns the next global step."""
    mean, std = normalization(cfg)
    generator = epoch_generator(cfg, epoch)
    batches = epoch_batches(len(data.train_x), cfg.batch_size, generator)
    # torchrun ranks share the permutation but not the augmentation and dropout
    # draws (the same draws on every shard would correlate them); rank 0 keeps
    # the single-process stream.
    rank, world = distributed.rank(), distributed.world_size()
    seed = cfg.seed * 100_003 + epoch + 1_000_003 * rank
    if rank:
        generator.manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator
    global_batch = min(cfg.batch_size, len(data.train_x))
    model.train()
    for idx in batches:
        idx = idx.to(data.train_x.device)
        x = augment_batch(to_float(data.train_x[idx], mean, std), generator, cfg)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.train_y[idx]
        lr = lr_at(step, total_steps, cfg, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        # DDP averages gradients over ranks; weighting each rank's mean by its share
        # makes that the global batch's mean even when the batch splits unevenly.
        (loss * (len(idx) * world / global_batch)).backward()
        optimizer.step()
        if ema is not None:
            update_ema(ema, model, cfg.ema_decay, step)
        if on_step is not None:
            acc = (logits.argmax(1) == y).float().mean()
            on_step({"step": step, "epoch": epoch, "loss": loss.item(), "acc": 100 * acc.item(), "lr": lr})
        step += 1
    return step


def _unwrapped(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def train(cfg: TrainConfig, data: MNIST, device, run_dir: Path | None = None, resume: bool = False,
          on_step: Callable[[dict], None] | None = None,
          on_epoch: Callable[[dict, nn.Module], None] | None = None) -> tuple[nn.Module, History]:
    """Train a recipe on in-memory data; return the final model (the EMA one when enabled) and history.

    `on_epoch(row, model)` sees each epoch's summary and the model being trained (the EMA one
    when enabled), e.g. to score it at fixed points. With `run_dir`, rank 0 writes
    model.safetensors, train_state.safetensors and history.json atomically after every
    epoch; `resume` continues from them.
    """
    t_start = time.perf_counter()
    if run_dir is not None and distributed.is_main():
        remove_partial_writes(Path(run_dir))
    model = build(cfg, device)
    ema = copy.deepcopy(model).eval() if cfg.ema_decay else None
    optimizer = make_optimizer(model, cfg)
    history, start_epoch = History(), 0
    if resume:
        start_epoch, history = load_train_state(Path(run_dir), model, optimizer, ema)
    seconds_before = history.seconds  # earlier segments' time, so train_seconds adds up over resumes
    if distributed.world_size() > 1 and cfg.batch_size < 2 * distributed.world_size():
        raise ValueError(f"batch size {cfg.batch_size} leaves fewer than 2 images per rank on "
                         f"{distributed.world_size()} ranks (batch norm needs 2)")
    net = distributed.wrap(model)
    if cfg.compile:
        net = torch.compile(net)
    steps_per_epoch = max(1, len(data.train_x) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    mean, std = normalization(cfg)

    def record(row):
        history.steps.append(row)
        if on_step is not None:
            on_step(row)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        step = epoch * steps_per_epoch
        train_one_epoch(net, optimizer, data, cfg, epoch, step, total_steps, steps_per_epoch, ema, record)
        for m in (model, ema):  # per-rank BN statistics -> the same model on every rank
            if m is not None:
                distributed.average_buffers(m)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "seconds": seconds}
        if len(data.val_x):
            val = evaluate(ema or model, data.val_x, data.val_y, mean, std, channels_last=cfg.channels_last)
            row.update(val_acc=val.accuracy, val_loss=val.loss)
        history.epochs.append(row)
        if on_epoch is not None:
            on_epoch(row, ema or model)
        history.seconds = seconds_before + time.perf_counter() - t_start
        if run_dir is not None and distributed.is_main():
            save_train_state(Path(run_dir), cfg, model, optimizer, ema, history, epoch + 1)
    return (ema or model).eval(), history


def train_ensemble(cfg: TrainConfig, data: MNIST, device, run_dir: Path | None = None, on_step=None,
                   on_epoch=None) -> tuple[nn.Module, list[History]]:
    """Train `cfg.ensemble` members (seeds seed, seed+1, ...) and return their `models.Ensemble`.

    Each member lives in `run_dir/member-K` and resumes from its own checkpoint, so a
    crash costs at most one member's epoch; finished members are simply reloaded.
    """
    members, histories = [], []
    for k in range(cfg.ensemble):
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + k, ensemble=1)
        member_dir = Path(run_dir) / f"member-{k}" if run_dir is not None else None
        resume = member_dir is not None and (member_dir / STATE_NAME).exists()
        model, history = train(member_cfg, data, device, member_dir, resume, on_step, on_epoch)
        members.append(model)
        histories.append(history)
    return ensemble_of(cfg, members, device), histories


def ensemble_of(cfg: TrainConfig, members: list[nn.Module], device) -> models.Ensemble:
    """One `models.Ensemble` holding copies of trained members of the recipe's architecture."""
    ensemble = models.Ensemble(member_specs(cfg, len(members))).to(device)
    for slot, member in zip(ensemble.members, members):
        slot.load_state_dict(_unwrapped(member).state_dict())
    if cfg.channels_last:
        ensemble = ensemble.to(memory_format=torch.channels_last)
    return ensemble.eval()


# ------------------------------------------------------------- checkpointing


def member_specs(cfg: TrainConfig, n: int) -> list[dict]:
    """`models.Ensemble`'s description of n members of the recipe's architecture."""
    return [{"arch": cfg.model, "arch_args": cfg.model_args}] * n


def model_metadata(cfg: TrainConfig, metrics: dict | None = None, temperature: float = 1.0) -> dict:
    mean, std = normalization(cfg)
    arch, args = cfg.model, cfg.model_args
    if cfg.ensemble > 1:
        arch, args = "ensemble", {"members": member_specs(cfg, cfg.ensemble)}
    return checkpoint.make_metadata(arch, args, mean, std, dataclasses.asdict(cfg), metrics, temperature)


def save_train_state(run_dir: Path, cfg, model, optimizer, ema, history: History, epochs_done: int) -> None:
    """Everything a resume needs, in one atomic file: weights, EMA, optimizer state and history.

    The history travels inside train_state (history.json is a readable copy written after it):
    a kill between two separate files would otherwise leave a state one epoch ahead of its history.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    final = ema or model
    checkpoint.save_model(run_dir / checkpoint.WEIGHTS_NAME, final, model_metadata(cfg))
    tensors = {f"model.{k}": v for k, v in _unwrapped(model).state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            if value is not None:  # SGD without momentum keeps a None buffer
                tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
    meta = {"epochs_done": epochs_done, "param_groups": opt["param_groups"], "config": dataclasses.asdict(cfg),
            "history": dataclasses.asdict(history)}
    checkpoint.save_tensors(run_dir / STATE_NAME, tensors, meta)
    write_json(run_dir / HISTORY_NAME, dataclasses.asdict(history))


def remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files of writes that a kill interrupted (`atomic_write` names them .NAME.*.tmp)."""
    if run_dir.is_dir():
        for tmp in run_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def load_train_state(run_dir: Path, model, optimizer, ema) -> tuple[int, History]:
    tensors, meta = checkpoint.load_tensors(run_dir / STATE_NAME)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    done = meta["epochs_done"]
    if "history" in meta:
        return done, History(**meta["history"])
    # A state written before the history moved inside it: keep only the epochs the state has.
    old = json.loads((run_dir / HISTORY_NAME).read_text())
    return done, History(steps=[s for s in old["steps"] if s["epoch"] < done],
                         epochs=[e for e in old["epochs"] if e["epoch"] <= done])


def write_json(path: Path, obj) -> None:
    atomic_write(Path(path), (json.dumps(obj, indent=2) + "\n").encode())
