"""Fine-tuning: adapt a trained model to one person's digits in seconds, without forgetting MNIST.

The job starts from a checkpoint (the shipped model by default) and takes a few hundred SGD steps
at a low learning rate. Each batch is part the person's samples and part MNIST replay, so nothing
else is forgotten, and both are augmented as the default recipe augments. A stratified part of
the samples is held out. The held-out samples and the MNIST test set are measured before and after,
with the forward the model is served with. The temperature is re-fitted on MNIST's validation split,
which no recipe with one trains on. The result is an ordinary run folder, whose checkpoint says which
samples (count and SHA-256) it was tuned on, so `--model latest` serves it.

    mnist-cnn finetune --samples ~/.cache/mnist-cnn/samples.db --out runs/mine

Measured (benchmarks/finetune.py, 2-core AMD EPYC CPU, 2 threads; UCI digits of 43 writers not in MNIST,
3 splits): after 200 of them, 99.29% of the other 1,597 (99.12-99.44) against 97.0% before, MNIST test
99.67% -> 99.64% (-0.01 to -0.06 points), 21 s of tuning and 57 s for the whole job.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import checkpoint, data, models, precision
from .augment import apply_augmentation, draw_augmentation, to_float
from .errors import UserError
from .evaluation import evaluate, fit_temperature, forward_label, predict_logits, uses_tta
from .files import write_json
from .imagefolder import Labelled
from .pipeline import caller_rng
from .recipes import FinetuneConfig
from .samples import digest


def stratified_split(y: torch.Tensor, fraction: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices: `fraction` of each label held out, at least one of any label that has two."""
    kept, held = [], []
    for label in range(10):
        idx = (y == label).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = 0 if len(idx) < 2 or fraction == 0 else min(max(1, round(fraction * len(idx))), len(idx) - 1)
        held.append(idx[:k])
        kept.append(idx[k:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def lr_at(step: int, cfg: FinetuneConfig) -> float:
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))


def tune(net: torch.nn.Module, mnist: data.MNIST, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig,
         mean: float, std: float, channels_last: bool = False,
         on_step: Callable[[dict], None] | None = None, prec: precision.Precision | None = None) -> list[dict]:
    """Train `net` in place on batches mixing (x, y) with MNIST's training images; the steps' losses.

    The forward pass and loss run in `prec` (default: `cfg.precision` resolved for the device), as
    training's step does; fp16's gradient scaler comes with it.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout draws from the global generator (the caller's is restored: caller_rng)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                weight_decay=cfg.weight_decay)
    device = mnist.train_x.device
    prec = prec or precision.resolve(cfg.precision, device)
    scaler = prec.scaler(device)
    x, y = x.to(device), y.to(device)
    mine = max(1, round(cfg.batch_size * cfg.person_share))
    replay = cfg.batch_size - mine if len(mnist.train_y) else 0
    rows = []
    net.train()
    for step in range(cfg.steps):
        pi = torch.randint(len(y), (mine,), generator=generator).to(device)
        mi = torch.randint(max(1, len(mnist.train_y)), (replay,), generator=generator).to(device)
        images = torch.cat([x[pi], mnist.train_x[mi]])
        labels = torch.cat([y[pi], mnist.train_y[mi]])
        batch = apply_augmentation(to_float(images, mean, std), draw_augmentation(len(images), generator, cfg), cfg)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with prec.autocast(device):
            loss = F.cross_entropy(net(batch), labels, label_smoothing=cfg.label_smoothing)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        rows.append({"step": step, "loss": loss.detach(), "lr": lr})
        if on_step is not None:
            on_step(rows[-1])
    for row in rows:  # one read from the device per step, at the end
        row["loss"] = float(row["loss"])
    return rows


def measure(model, x, y, meta: dict, tta: bool) -> float | None:
    """Accuracy (%) with the served forward; None for no images."""
    if not len(y):
        return None
    return evaluate(model, x, y.to(x.device), meta["mean"], meta["std"], tta=tta).accuracy


def finetune_run(base, samples: Labelled, cfg: FinetuneConfig, run_dir: Path, device, data_dir=None,
                 base_name: str | None = None, eval_samples: tuple[torch.Tensor, torch.Tensor] | None = None,
                 on_step: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune `base` ((model, meta) as `checkpoint.load_model` gives, left untouched) into `run_dir`.

    `eval_samples` (x, y) are measured too, as "extra" (the benchmark's held-out writers).
    Returns the metrics (also in metrics.json); leaves the caller's random generators as they were.
    """
    with caller_rng(device):
        return _finetune_run(base, samples, cfg, Path(run_dir), torch.device(device), data_dir, base_name,
                             eval_samples, on_step)


def _finetune_run(base, samples, cfg, run_dir, device, data_dir, base_name, eval_samples, on_step) -> dict:
    model, meta = base
    net, old_temperature = models.unwrap(model)
    if not isinstance(net, torch.nn.Module):
        raise UserError("fine-tuning needs a torch checkpoint, not an ONNX model")
    net = copy.deepcopy(net).to(device)
    tta, base_cfg = uses_tta(meta), meta.get("config", {})
    channels_last = bool(base_cfg.get("channels_last"))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**dataclasses.asdict(cfg), "base": base_name, "model": meta.get("arch"),
                                         "tta": tta, "samples": samples.source})
    kept, held = stratified_split(samples.y, cfg.holdout, torch.Generator().manual_seed(cfg.seed))
    tx, ty, hx, hy = samples.x[kept], samples.y[kept], samples.x[held].to(device), samples.y[held]
    mnist = data.load_mnist(data_dir, val_size=cfg.val_size, device=device)
    ex, ey = (eval_samples[0].to(device), eval_samples[1]) if eval_samples is not None else (hx[:0], hy[:0])
    calibrated = models.with_temperature(net, old_temperature)

    def scores(m):
        return {"held_out": measure(m, hx, hy, meta, tta),
                "mnist_test": measure(m, mnist.test_x, mnist.test_y, meta, tta), "extra": measure(m, ex, ey, meta, tta)}

    before = scores(calibrated)
    prec = precision.resolve(cfg.precision, device)  # an fp16 request on a CPU fails here, before tuning
    t0 = time.perf_counter()
    steps = tune(net, mnist, tx, ty, cfg, meta["mean"], meta["std"], channels_last, on_step, prec)
    seconds = time.perf_counter() - t0
    net.eval()
    mean, std = meta["mean"], meta["std"]
    temperature = old_temperature if not len(mnist.val_y) else fit_temperature(
        predict_logits(net, mnist.val_x, mean, std, channels_last=channels_last), mnist.val_y)
    tuned = models.with_temperature(net, temperature)
    after = scores(tuned)
    record = {**samples.record(), "count": len(ty), "sha256": digest(tx, ty),
              "per_label": torch.bincount(ty, minlength=10).tolist()}
    metrics = {"test_accuracy": after["mnist_test"], "test_images": len(mnist.test_y),
               "test_forward": forward_label(tta),
               "before": before, "after": after, "held_out": len(hy), "held_out_sha256": digest(hx.cpu(), hy),
               "samples": record, "train_seconds": seconds, "steps": cfg.steps, "device": str(device),
               "temperature": {"before": old_temperature, "after": temperature, "fitted_on": len(mnist.val_y)},
               "val_accuracy": None, **prec.record()}
    finetuned = {"base": base_name, "base_samples": meta.get("samples"), "config": dataclasses.asdict(cfg),
                 "held_out": {"count": len(hy), "sha256": metrics["held_out_sha256"]}, "before": before,
                 "after": after, "train_seconds": seconds}
    new_meta = {**meta, "temperature": temperature, "samples": record, "finetune": finetuned, "metrics": metrics,
                "versions": checkpoint.library_versions(), "git_commit": checkpoint.git_commit()}
    checkpoint.save_model(run_dir / checkpoint.WEIGHTS_NAME, net, new_meta)
    write_json(run_dir / checkpoint.HISTORY_NAME, {"steps": steps, "epochs": []})
    write_json(run_dir / "metrics.json", metrics)  # last: with it, the run is finished (runs.is_finished)
    write_json(run_dir / "run.json", {"config": dataclasses.asdict(cfg), "base": base_name, "metrics": metrics,
                                      "versions": checkpoint.library_versions(),
                                      "git_commit": checkpoint.git_commit(), "argv": sys.argv})
    return metrics
