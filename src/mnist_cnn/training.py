"""The training loop: in-memory MNIST batched by index, a visible step, per-epoch checkpoints.

Randomness is a function of (seed, epoch): each epoch reseeds its shuffling,
augmentation and dropout generators, so resuming from an epoch's checkpoint
restores the RNG state exactly, and torchrun ranks agree on every permutation.
The caller's global generators are left as they were (`own_rng`). A step never
waits for the device: an epoch's indices and augmentation are moved there up
front, and its losses and accuracies are read back once, at its end.
Checkpoint files are `checkpoint.py`'s; the whole job (calibrate, test, report) is `pipeline.py`'s.

    mnist-cnn train --recipe fast --out runs/fast
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint, distributed, models, precision, recipes
from .augment import apply_augmentation, draw_augmentation, to_float
from .data import MNIST
from .errors import ConfigError
from .evaluation import evaluate
from .files import remove_partial_writes
from .recipes import TrainConfig, normalization

# Config fields that a resumed run may change (each resume records its changes in the history).
# Any other change would make the rest of the run a different run from the one it continues.
RESUMABLE = ("epochs", "lr", "compile", "precision", "log_every", "tta")


@dataclass
class History:
    steps: list[dict] = field(default_factory=list)  # {step, epoch, loss, acc, lr}
    epochs: list[dict] = field(default_factory=list)  # {epoch, val_acc, val_loss, seconds}
    seconds: float = 0.0  # wall time inside `train`, added up over every resumed segment
    resumes: list[dict] = field(default_factory=list)  # {epoch: where it resumed, changed: {field: [old, new]}}
    precision: dict = field(default_factory=dict)  # {precision, precision_reason}: what `auto` chose, and why


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


def ema_pairs(ema: nn.Module, model: nn.Module) -> tuple[list, list, list, list]:
    """(EMA floats, model floats, EMA counters, model counters): the tensors `update_ema` updates, listed once."""
    pairs = list(zip(ema.state_dict().values(), models.unwrap(model)[0].state_dict().values()))
    floats = [(e, p) for e, p in pairs if e.dtype.is_floating_point]
    counters = [(e, p) for e, p in pairs if not e.dtype.is_floating_point]  # such as BN's num_batches_tracked
    return ([e for e, _ in floats], [p for _, p in floats], [e for e, _ in counters], [p for _, p in counters])


@torch.no_grad()
def update_ema(pairs: tuple[list, list, list, list], decay: float, step: int) -> None:
    """Move the EMA weights toward the model's, in place: `pairs` is `ema_pairs(ema, model)`, listed once."""
    # Warm the decay up from 0: with a fixed 0.999 from step 0, the random initial
    # weights would still hold 0.999**2500 = 8% of the average after 2,500 steps.
    decay = min(decay, (1 + step) / (10 + step))
    ema_f, model_f, ema_c, model_c = pairs
    torch._foreach_lerp_(ema_f, model_f, 1 - decay)  # one fused pass over every tensor, no allocation
    if ema_c:
        torch._foreach_copy_(ema_c, model_c)


def train_one_epoch(model, optimizer, data: MNIST, cfg: TrainConfig, epoch: int, step: int, total_steps: int,
                    steps_per_epoch: int, ema=None, on_step: Callable[[dict], None] | None = None,
                    prec: precision.Precision | None = None, scaler=None) -> int:
    """One pass over this rank's shard of a shuffled permutation; returns the next global step.

    The forward pass and loss run under `prec`'s autocast (default: the config's, resolved here),
    and backward through `scaler` (fp16's GradScaler; it carries over epochs, so `train` passes one).

    `on_step(row)` sees every step's {step, epoch, loss, acc, lr}. During the epoch, loss and acc
    are 0-d tensors on the device (reading one waits for the device: do it at log points only);
    when the epoch ends, one read turns every row's into floats.
    """
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
    # The epoch's indices and augmentation, drawn on the CPU in the order the steps use them, go
    # to the device in one copy each; the steps' losses and accuracies stay there until the end.
    device = data.train_x.device
    indices = torch.stack(batches).to(device)  # (steps, this rank's batch)
    drawn = [draw_augmentation(len(idx), generator, cfg) for idx in batches]
    params = torch.stack(drawn).to(device) if drawn[0] is not None else [None] * len(batches)
    stats = torch.zeros(len(batches), 2, device=device)  # each step's loss and accuracy (%)
    global_batch = min(cfg.batch_size, len(data.train_x))
    prec = prec or precision.resolve(cfg.precision, device)
    scaler = scaler or prec.scaler(device)
    pairs = ema_pairs(ema, model) if ema is not None else None
    rows = []
    model.train()
    for i, idx in enumerate(indices):
        x = apply_augmentation(to_float(data.train_x[idx], mean, std), params[i], cfg)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.train_y[idx]
        lr = lr_at(step, total_steps, cfg, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with prec.autocast(device):  # weights stay fp32; autocast casts them for each op
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        # DDP averages gradients over ranks; weighting each rank's mean by its share
        # makes that the global batch's mean even when the batch splits unevenly.
        scaler.scale(loss * (len(idx) * world / global_batch)).backward()
        scaler.step(optimizer)  # optimizer.step(), unless fp16 gradients overflowed
        scaler.update()
        if pairs is not None:
            update_ema(pairs, cfg.ema_decay, step)
        with torch.no_grad():
            stats[i, 0] = loss.detach()
            stats[i, 1] = (logits.argmax(1) == y).float().mean() * 100
        rows.append({"step": step, "epoch": epoch, "loss": stats[i, 0], "acc": stats[i, 1], "lr": lr})
        if on_step is not None:
            on_step(rows[-1])
        step += 1
    for row, (loss, acc) in zip(rows, stats.tolist()):  # the epoch's one read from the device
        row["loss"], row["acc"] = loss, acc
    return step


def own_rng(device):
    """A context that restores the global generators (CPU, and the device's) on exit.

    Training seeds them (the initial weights, and dropout, draw from them); the caller's
    random state is not ours to change.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.random.fork_rng(devices=[device.index if device.index is not None
                                              else torch.cuda.current_device()])
    if device.type == "mps":
        return torch.random.fork_rng(devices=[0], device_type="mps")
    return torch.random.fork_rng(devices=[])


def resume_changes(saved: dict, cfg: TrainConfig, epochs_done: int = 0) -> dict:
    """{field: [saved value, new value]} for a resumed run, or ConfigError for a change it cannot take.

    `saved` is the config the run was trained with so far (JSON form); `epochs_done`, its epochs.
    """
    changed = recipes.resume_changes(saved, cfg, RESUMABLE)
    if cfg.epochs < epochs_done:
        raise ConfigError(f"this run has trained {epochs_done} epochs already; resume it with epochs "
                          f"{epochs_done} or more")
    return changed


def train(cfg: TrainConfig, data: MNIST, device, run_dir: Path | None = None, resume: bool = False,
          on_step: Callable[[dict], None] | None = None,
          on_epoch: Callable[[dict, nn.Module], None] | None = None) -> tuple[nn.Module, History]:
    """Train a recipe on in-memory data; return the final model (the EMA one when enabled) and history.

    `on_epoch(row, model)` sees each epoch's summary and the model being trained (the EMA one
    when enabled), e.g. to score it at fixed points. With `run_dir`, rank 0 writes
    model.safetensors, train_state.safetensors and history.json atomically after every
    epoch; `resume` continues from them.
    """
    with own_rng(device):
        return _train(cfg, data, device, run_dir, resume, on_step, on_epoch)


def _train(cfg, data, device, run_dir, resume, on_step, on_epoch):
    t_start = time.perf_counter()
    if run_dir is not None and distributed.is_main():
        remove_partial_writes(Path(run_dir))
    model = build(cfg, device)
    ema = copy.deepcopy(model).eval() if cfg.ema_decay else None
    optimizer = make_optimizer(model, cfg)
    history, start_epoch = History(), 0
    if resume:
        start_epoch, saved, saved_cfg = checkpoint.load_train_state(Path(run_dir), model, optimizer, ema)
        history = History(**saved)
        history.resumes.append({"epoch": start_epoch, "changed": resume_changes(saved_cfg, cfg, start_epoch)})
    seconds_before = history.seconds  # earlier segments' time, so train_seconds adds up over resumes
    if distributed.world_size() > 1 and cfg.batch_size < 2 * distributed.world_size():
        raise ConfigError(f"batch size {cfg.batch_size} leaves fewer than 2 images per rank on "
                          f"{distributed.world_size()} ranks (batch norm needs 2)")
    net = distributed.wrap(model)
    if cfg.compile:
        net = torch.compile(net)
    prec = distributed.broadcast_object(precision.resolve(cfg.precision, device))  # every rank runs rank 0's
    history.precision = prec.record()
    scaler = prec.scaler(device)
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
        train_one_epoch(net, optimizer, data, cfg, epoch, step, total_steps, steps_per_epoch, ema, record, prec, scaler)
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
            checkpoint.save_train_state(Path(run_dir), cfg, model, optimizer, ema, dataclasses.asdict(history),
                                        epoch + 1)
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
        resume = member_dir is not None and (member_dir / checkpoint.STATE_NAME).exists()
        model, history = train(member_cfg, data, device, member_dir, resume, on_step, on_epoch)
        members.append(model)
        histories.append(history)
    return ensemble_of(cfg, members, device), histories


def ensemble_of(cfg: TrainConfig, members: list[nn.Module], device) -> models.Ensemble:
    """One `models.Ensemble` holding copies of trained members of the recipe's architecture."""
    ensemble = models.Ensemble(checkpoint.member_specs(cfg, len(members))).to(device)
    for slot, member in zip(ensemble.members, members):
        slot.load_state_dict(models.unwrap(member)[0].state_dict())
    if cfg.channels_last:
        ensemble = ensemble.to(memory_format=torch.channels_last)
    return ensemble.eval()
