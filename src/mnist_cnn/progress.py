"""Progress display, opt-in: a tqdm bar (a widget in a notebook, via tqdm.auto) plus the notebook's log line
every N steps.

A step's loss and accuracy are tensors on the training device until its epoch ends; reading one waits for
the device, so they are read only when the bar redraws (at most every REDRAW_S) or a log line is due.

    mnist-cnn train --recipe fast
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

REDRAW_S = 0.5  # the bar redraws at most this often, so its numbers need not change faster


class TrainProgress:
    """Callbacks for `training.train` that draw a bar and print the notebook-style lines."""

    def __init__(self, cfg, n_train: int, enabled: bool = True):
        self.cfg = cfg
        steps = max(1, n_train // cfg.batch_size) * cfg.epochs * cfg.ensemble
        self.bar = tqdm(total=steps, unit="step", dynamic_ncols=True, disable=not enabled,
                        leave=False, mininterval=REDRAW_S)
        self.enabled = enabled
        self.shown = float("-inf")  # when the postfix was last set

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def step(self, row: dict) -> None:
        if self.bar.n == 0 and row["step"]:  # resumed: jump to where the run left off
            self.bar.update(row["step"])
        self.bar.update(1)
        now = time.monotonic()
        if now - self.shown >= REDRAW_S:  # formatting the postfix every step would cost more than a tiny step
            self.shown = now
            self.bar.set_postfix(epoch=row["epoch"] + 1, loss=f"{float(row['loss']):.4f}",
                                 acc=f"{float(row['acc']):.1f}", refresh=False)
        if self.enabled and row["step"] % self.cfg.log_every == 0:
            self.bar.write(f"Train Step: {row['step']}\tLoss: {float(row['loss']):.10f}\t"
                           f"Accuracy: {float(row['acc']):.10f}")

    def epoch(self, row: dict, model=None) -> None:
        if not self.enabled:
            return
        val = f", validation accuracy {row['val_acc']:.2f}%" if "val_acc" in row else ""
        self.bar.write(f"epoch {row['epoch']}/{self.cfg.epochs}: {row['seconds']:.1f} s{val}")
