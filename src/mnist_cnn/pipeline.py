"""The training job: train -> calibrate -> test -> save -> report, into one run folder.

`mnist-cnn train` and `mnist_cnn.train()` both run `train_run`. The folder gets config.json
first (so an unfinished run is listed), the training checkpoints as it goes, then
model.safetensors, metrics.json, run.json and report/. The job prints nothing unless asked
(`progress`, `log`), and leaves the caller's random generators as they were.

    mnist-cnn train --out runs/fast --recipe fast
"""

from __future__ import annotations

import dataclasses
import random
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoint, data, distributed, models, precision, training
from .evaluation import evaluate, fit_temperature, forward_label, predict_logits
from .errors import ConfigError
from .files import read_json, write_json
from .recipes import TrainConfig, normalization


def train_run(cfg: TrainConfig, run_dir: Path, device, data_dir=None, resume: bool = False,
              tensorboard: bool = False, progress: bool = False,
              log: Callable[[str], None] | None = None, samples=None) -> dict:
    """Train `cfg` into `run_dir`, score it on the test set and return its metrics.

    `progress` draws a bar (tqdm.auto: a widget in a notebook) and the notebook's log lines;
    `log` receives messages about the data. Under torchrun every rank calls this and rank 0 writes.
    `samples` (a `samples.Labelled`) are a person's digits, added to the training set (`with_samples`).
    """
    run_dir, log = Path(run_dir), log or (lambda message: None)
    if resume:  # refuse a change the run cannot take before anything is written
        if samples is not None:
            raise ConfigError("a resumed run continues the training it started; it cannot take --samples")
        training.resume_changes(read_json(run_dir / "config.json", {}), cfg)
    chosen = precision.resolve(cfg.precision, device)  # refuses fp16 on a CPU before anything is written
    log(f"precision {chosen.name}: {chosen.reason}")  # training resolves it the same way, and records it
    with caller_rng(device):
        return _train_run(cfg, run_dir, device, data_dir, resume, tensorboard, progress, log, samples)


def with_samples(mnist: data.MNIST, samples, share: float) -> tuple[data.MNIST, int]:
    """MNIST with a person's samples added to its training split, repeated to make up `share` of it.

    A few hundred digits among 55,000 would weigh nothing; repeated (each copy augmented afresh
    by the recipe), they make up about `share` of every epoch. Returns (the data, the repeats).
    """
    n, k = len(mnist.train_y), len(samples)
    repeats = max(1, round(share * n / ((1 - share) * k)))
    return _added(mnist, samples.x.repeat(repeats, 1, 1), samples.y.repeat(repeats)), repeats


def with_fonts(mnist: data.MNIST, x: torch.Tensor, y: torch.Tensor, share: float,
               seed: int) -> tuple[data.MNIST, int]:
    """MNIST with handwriting-font digits (x, y) added to its training split, as at most `share` of it:
    all of them beside the full split, a seeded draw of them beside a small one (`limit_train`), so that
    they never outnumber MNIST's own. Returns (the data, how many were added)."""
    n = len(mnist.train_y)
    k = min(len(y), round(share * n / (1 - share)))
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:k] if k < len(y) else slice(None)
    return _added(mnist, x[pick], y[pick]), k


def _added(mnist: data.MNIST, x: torch.Tensor, y: torch.Tensor) -> data.MNIST:
    """MNIST with images x and labels y after its own training split (validation and test stay MNIST's)."""
    device = mnist.train_x.device
    return dataclasses.replace(mnist, train_x=torch.cat([mnist.train_x, x.to(device)]),
                               train_y=torch.cat([mnist.train_y, y.to(device)]))


def _train_run(cfg, run_dir, device, data_dir, resume, tensorboard, progress, log, samples=None) -> dict:
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    mnist = data.load_mnist(data_dir, val_size=cfg.val_size, limit_train=cfg.limit_train, device=device, log=log)
    font_digits = 0
    if cfg.font_share > 0:
        from . import fonts

        mnist, font_digits = with_fonts(mnist, *fonts.font_digits(data_dir, log=log), cfg.font_share, cfg.seed)
        log(f"fonts: {font_digits} digits of {len(fonts.FAMILIES)} handwriting families in every epoch")
    record = None
    if samples is not None:
        mnist, repeats = with_samples(mnist, samples, cfg.samples_share)
        record = {**samples.record(), "repeats": repeats, "share": cfg.samples_share}
        log(f"samples: {len(samples)} of your digits from {samples.source}, each {repeats}x in every epoch")
    callbacks = {}
    with _progress(cfg, len(mnist.train_x), progress and distributed.is_main()) as bar:
        if bar is not None:
            callbacks = {"on_step": bar.step, "on_epoch": bar.epoch}
        if cfg.ensemble > 1:  # members keep their own folders; the run's curves are member 0's
            model, histories = training.train_ensemble(cfg, mnist, device, run_dir, **callbacks)
            history = histories[0]
            if distributed.is_main():
                write_json(run_dir / checkpoint.HISTORY_NAME, dataclasses.asdict(history))
        else:
            model, history = training.train(cfg, mnist, device, run_dir, resume=resume, **callbacks)
            histories = [history]
    # Training time over every segment of a resumed run (each History adds up its own segments).
    seconds = sum(h.seconds for h in histories)
    mean, std = normalization(cfg)
    # Calibrate the probabilities on the validation split, when there is one (argmax and accuracy are unchanged).
    temperature = fit_temperature(predict_logits(model, mnist.val_x, mean, std, channels_last=cfg.channels_last),
                                  mnist.val_y) if len(mnist.val_y) else 1.0
    scored = models.with_temperature(model, temperature)  # what load_model will give
    test = evaluate(scored, mnist.test_x, mnist.test_y, mean, std, tta=cfg.tta, channels_last=cfg.channels_last)
    metrics = {"test_accuracy": test.accuracy, "test_loss": test.loss, "per_class": test.per_class,
               "test_images": test.n, "test_forward": forward_label(cfg.tta), "train_seconds": seconds,
               "epochs": cfg.epochs, "device": str(device), "world_size": distributed.world_size(),
               "val_accuracy": history.epochs[-1].get("val_acc") if history.epochs else None,
               "val_forward": forward_label(False), "font_digits": font_digits, **history.precision}
    meta = checkpoint.model_metadata(cfg, metrics, temperature)
    if record is not None:
        metrics["samples"] = meta["samples"] = record
    if distributed.is_main():
        checkpoint.save_model(run_dir / checkpoint.WEIGHTS_NAME, model, meta)
        write_json(run_dir / "metrics.json", metrics)
        write_json(run_dir / "run.json", {"config": dataclasses.asdict(cfg), "metrics": metrics,
                                          "versions": checkpoint.library_versions(),
                                          "git_commit": checkpoint.git_commit(), "argv": sys.argv})
        from . import report  # figures are drawn after training, so they never slow it

        probs = test.probabilities if distributed.world_size() == 1 else (  # rank 0 scored one shard only
            predict_logits(scored, mnist.test_x, mean, std, tta=cfg.tta).softmax(1).cpu())
        report.write_run_report(run_dir, mnist.test_x.cpu(), mnist.test_y.cpu(), probs, tensorboard)
    return metrics


@contextmanager
def caller_rng(device):
    """Restore every global generator the job might touch: torch's (CPU and device), numpy's and Python's."""
    py, np_state = random.getstate(), np.random.get_state()
    try:
        with training.own_rng(device):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


@contextmanager
def _progress(cfg, n_train: int, enabled: bool):
    """A progress bar's callbacks when enabled (tqdm is imported only then), else None."""
    if not enabled:
        yield None
        return
    from .progress import TrainProgress

    with TrainProgress(cfg, n_train) as bar:
        yield bar
