"""Progress display, opt-in: a tqdm bar on a terminal (a widget in a notebook, via tqdm.auto), plain lines
in a log; the notebook's log line every N steps.

When stderr is not a terminal (CI, nohup, `2> train.log`), a redrawn bar would leave
hundreds of carriage-return updates in the file, so there is no bar, only lines: one per
epoch and the notebook's "Train Step" line every `log_every` steps. A step's loss and accuracy
are tensors on the training device until its epoch ends; reading one waits for the device, so
they are read only when the bar redraws (at most every REDRAW_S) or a log line is due.

    mnist-cnn train --recipe fast
    mnist-cnn train --recipe fast 2>&1 | cat   # lines only
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

REDRAW_S = 0.5  # the bar redraws at most this often, so its numbers need not change faster


def is_terminal(stream) -> bool:
    """Whether a bar can be redrawn in place there: a terminal, or a notebook (where tqdm.auto draws a widget)."""
    from tqdm.autonotebook import tqdm as chosen  # what tqdm.auto picked: the notebook's bar inside Jupyter
    from tqdm.std import tqdm as plain

    if chosen is not plain:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class TrainProgress:
    """Callbacks for `training.train` that draw a bar (on a terminal) and print the notebook-style lines."""

    def __init__(self, cfg, n_train: int, enabled: bool = True, stream=None):
        self.cfg = cfg
        stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.live = enabled and is_terminal(stream)  # a bar only where it is redrawn in place
        steps = max(1, n_train // cfg.batch_size) * cfg.epochs * cfg.ensemble
        self.bar = tqdm(total=steps, unit="step", dynamic_ncols=True, disable=not self.live, file=stream,
                        leave=False, mininterval=REDRAW_S)
        self.shown = float("-inf")  # when the postfix was last set

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def write(self, line: str) -> None:
        if self.live:
            self.bar.write(line)  # above the bar, which is redrawn below it
        elif self.enabled:
            print(line, flush=True)

    def step(self, row: dict) -> None:
        if row["step"] % self.cfg.log_every == 0:
            self.write(f"Train Step: {row['step']}\tLoss: {float(row['loss']):.10f}\t"
                       f"Accuracy: {float(row['acc']):.10f}")
        if not self.live:
            return
        if self.bar.n == 0 and row["step"]:  # resumed: jump to where the run left off
            self.bar.update(row["step"])
        self.bar.update(1)
        now = time.monotonic()
        if now - self.shown >= REDRAW_S:  # formatting the postfix every step would cost more than a tiny step
            self.shown = now
            self.bar.set_postfix(epoch=row["epoch"] + 1, loss=f"{float(row['loss']):.4f}",
                                 acc=f"{float(row['acc']):.1f}", refresh=False)

    def epoch(self, row: dict, model=None) -> None:
        val = f", validation accuracy {row['val_acc']:.2f}%" if "val_acc" in row else ""
        self.write(f"epoch {row['epoch']}/{self.cfg.epochs}: {row['seconds']:.1f} s{val}")
