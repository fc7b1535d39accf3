"""The report's figures: curves, confusion matrix, per-class bars, digit grids, reliability.

Each function takes values and returns a matplotlib Figure drawn on its own Agg
canvas (never pyplot), so importing this module changes no global backend state.
`report.py` assembles them into a page; `runs.py` draws its comparisons with the
helpers at the top.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from .data import CLASSES
from .files import atomic_write

RED, GREEN, BLUE, ORANGE = "#c62828", "#2e7d32", "#1565c0", "#ef6c00"


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)  # attach an Agg canvas to this figure only
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_figure(fig: Figure, path: Path) -> Path:
    atomic_write(Path(path), png_bytes(fig))
    return Path(path)


def smooth(values, window: int) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard draws it) over about `window` points."""
    values = np.asarray(values, dtype=np.float64)
    beta, avg, out = 1 - 1 / max(1, window), 0.0, np.empty_like(values)
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1)) if beta else v
    return out


def log_scale(ax) -> None:
    """Log y axis (loss spans orders of magnitude) labelled 0.02, 0.05, 0.1, ... rather than 2x10^-2."""
    ax.set_yscale("log")
    low, high = ax.dataLim.y0, ax.dataLim.y1  # call after plotting
    narrow = high / max(low, 1e-12) < 30  # under ~1.5 decades, 1-2-5 steps give too few labels
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 1.5, 2, 3, 5, 7) if narrow else (1, 2, 5)))
    ax.yaxis.set_minor_locator(LogLocator(subs=range(1, 10)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def epoch_axis(steps: list[dict]) -> np.ndarray:
    """Each step's position in epochs (1.0 = end of the first epoch), so runs with other batch sizes line up."""
    per_epoch = max(1, sum(s["epoch"] == steps[0]["epoch"] for s in steps)) if steps else 1
    return np.array([(s["step"] + 1) / per_epoch for s in steps])


def curves_figure(history: dict) -> Figure:
    """Training loss and batch accuracy per step (faint raw, bold smoothed), validation accuracy per epoch, lr."""
    steps, epochs = history.get("steps", []), history.get("epochs", [])
    fig = new_figure(15, 4.2)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    x = np.array([s["step"] + 1 for s in steps])
    window = max(1, len(steps) // 40)
    for ax, key, color, label in ((ax_loss, "loss", RED, "training loss"), (ax_acc, "acc", BLUE, "batch accuracy")):
        y = np.array([s[key] for s in steps])
        ax.plot(x, y, color=color, alpha=0.2, lw=0.8)
        ax.plot(x, smooth(y, window), color=color, lw=2, label=f"{label} (smoothed)")
    last_step = {}  # epoch (1-based) -> its last step, where its validation accuracy is drawn
    for s in steps:
        last_step[s["epoch"] + 1] = s["step"] + 1
    val = [(last_step.get(e["epoch"], e["epoch"] * max(1, len(steps) // max(1, len(epochs)))), e["val_acc"])
           for e in epochs if e.get("val_acc") is not None]
    if val:
        ax_acc.plot(*zip(*val), "o-", color=ORANGE, lw=2, ms=7, label="validation accuracy (per epoch)")
        for vx, vy in val:
            ax_acc.annotate(f"{vy:.2f}%", (vx, vy), textcoords="offset points", xytext=(0, -16), ha="center",
                            color=ORANGE, fontsize=9)
    if steps:
        ax_lr.plot(x, [s["lr"] for s in steps], color=GREEN, lw=2)
        log_scale(ax_loss)
    ax_acc.set_ylim(max(0, min([s["acc"] for s in steps] + [v for _, v in val] + [100]) - 2), 101)
    for ax, title in ((ax_loss, "training loss"), (ax_acc, "accuracy (%)"), (ax_lr, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        for _, vx in last_step.items():
            ax.axvline(vx, color="grey", lw=0.6, ls=":")
    ax_loss.legend(loc="upper right")
    ax_acc.legend(loc="lower right")
    return fig


def confusion_figure(confusion, classes=CLASSES) -> Figure:
    """Heatmap of counts (rows: true, columns: predicted); colour on a log scale so rare mistakes show."""
    counts = np.asarray(confusion)
    fig = new_figure(7.5, 6.5)
    ax = fig.subplots()
    shade = np.log1p(counts)
    im = ax.imshow(shade, cmap="Blues")
    for (i, j), c in np.ndenumerate(counts):
        color = "white" if shade[i, j] > 0.6 * shade.max() else "black" if i == j else RED if c else "#999999"
        ax.text(j, i, str(c), ha="center", va="center", fontsize=9, color=color, weight="bold" if i == j else None)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix: {int(counts.trace())} of {int(counts.sum())} right")
    fig.colorbar(im, ax=ax, shrink=0.8, label="log(1 + count)")
    return fig


def per_class_figure(per_class, counts_wrong=None, classes=CLASSES) -> Figure:
    fig = new_figure(9, 4)
    ax = fig.subplots()
    bars = ax.bar(classes, per_class, color=BLUE)
    labels = [f"{a:.2f}%" + (f"\n{w} wrong" if counts_wrong is not None else "")
              for a, w in zip(per_class, counts_wrong if counts_wrong is not None else per_class)]
    ax.bar_label(bars, labels, fontsize=8, padding=2)
    low = max(0, min(per_class) - max(1, 100 - min(per_class)))  # zoom in on good models, where it matters
    ax.set_ylim(low, 100 + (100 - low) * 0.12)  # headroom for the labels
    ax.set_xlabel("true class")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("per-class accuracy")
    ax.grid(axis="y", alpha=0.3)
    return fig


def misclassified_indices(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Indices of the wrongly predicted images, worst first: the most confident mistakes lead."""
    probabilities, labels = torch.as_tensor(probabilities).cpu(), torch.as_tensor(labels).cpu()
    confidence, pred = probabilities.max(1)
    wrong = (pred != labels).nonzero().flatten()
    return wrong[confidence[wrong].argsort(descending=True, stable=True)]


def digit_grid(images, titles: list[str], colors: list[str], cols: int = 8, title: str = "") -> Figure:
    """One small panel per digit, drawn as black ink on white, with a coloured title."""
    rows = max(1, math.ceil(len(titles) / cols))
    height = rows * 1.55 + 0.5
    fig = new_figure(cols * 1.35, height, layout=None)  # a fixed grid: constrained layout costs seconds here
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / height, wspace=0.1, hspace=0.35)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, img, t, c in zip(axes, images, titles, colors):
        ax.imshow(np.asarray(img), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(t, color=c, fontsize=9)
    fig.suptitle(title)
    return fig


def misclassified_figure(images, labels, probabilities, limit: int = 48, classes=CLASSES) -> Figure:
    """The `limit` most confident mistakes, each titled true → predicted (confidence)."""
    wrong = misclassified_indices(probabilities, labels)
    shown = wrong[:limit].tolist()
    confidence, pred = torch.as_tensor(probabilities).cpu().max(1)
    titles = [f"{classes[int(labels[i])]} → {classes[int(pred[i])]} ({confidence[i]:.1%})" for i in shown]
    head = f"{len(shown)} most confident of {len(wrong)} misclassified" if len(wrong) > len(shown) \
        else f"all {len(wrong)} misclassified" if len(wrong) else "no misclassified digits"
    fig = digit_grid([images[i] for i in shown], titles, [RED] * len(shown),
                     title=f"{head} (true → predicted, confidence); worst first")
    return fig


def samples_figure(images, labels, probabilities, n: int = 32, seed: int = 0, classes=CLASSES) -> Figure:
    """The notebook's ground truth against predicted, as a picture, for `n` random test digits."""
    rows = np.random.default_rng(seed).choice(len(labels), size=min(n, len(labels)), replace=False)
    pred = torch.as_tensor(probabilities).cpu().argmax(1)
    ok = [int(pred[i]) == int(labels[i]) for i in rows]
    titles = [f"true {classes[int(labels[i])]} · pred {classes[int(pred[i])]}" for i in rows]
    title = f"{len(rows)} random test digits: {sum(ok)} right (green), {len(rows) - sum(ok)} wrong (red)"
    return digit_grid([images[i] for i in rows], titles, [GREEN if o else RED for o in ok], title=title)


def calibration(probabilities, labels, bins: int = 15) -> dict:
    """Reliability per equal-width confidence bin and the expected calibration error (ECE, percent)."""
    confidence, pred = torch.as_tensor(probabilities).cpu().double().max(1)
    correct = (pred == torch.as_tensor(labels).cpu()).double()
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1  # bin b holds (b/bins, (b+1)/bins]
    counts = torch.bincount(which, minlength=bins).double()
    conf = torch.bincount(which, confidence, minlength=bins) / counts.clamp(min=1)
    acc = torch.bincount(which, correct, minlength=bins) / counts.clamp(min=1)
    ece = float(((acc - conf).abs() * counts).sum() / counts.sum().clamp(min=1)) * 100
    return {"edges": np.linspace(0, 1, bins + 1), "confidence": conf.numpy(), "accuracy": acc.numpy(),
            "counts": counts.long().numpy(), "ece": ece}


def reliability_figure(cal: dict) -> Figure:
    fig = new_figure(6.5, 6.5)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    left, width = cal["edges"][:-1], np.diff(cal["edges"])
    used = cal["counts"] > 0
    ax.bar(left[used], cal["accuracy"][used], width[used], align="edge", color=BLUE, edgecolor="white",
           label="accuracy in bin")
    low = np.minimum(cal["confidence"], cal["accuracy"])[used]
    ax.bar(left[used], np.abs(cal["confidence"] - cal["accuracy"])[used], width[used], bottom=low, align="edge",
           color="none", edgecolor=RED, hatch="//", lw=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram: ECE {cal['ece']:.2f}%")
    ax.legend(loc="upper left")
    ax_n.bar(left[used], cal["counts"][used], width[used], align="edge", color="grey")
    ax_n.set_yscale("log")
    ax_n.set_xlabel("confidence (top-class probability)")
    ax_n.set_ylabel("images")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return fig


def explanation_figure(e, x: torch.Tensor) -> Figure:
    """One explain.Explanation as a figure: the 28x28 input, the attribution over it (and the
    runner-up's), each convolution's strongest feature maps, the first layer's filters, and the
    probabilities; its title is the explanation's sentence."""
    rows = 2 + len(e.stages)
    cols = max(4, max((len(s.maps) for s in e.stages), default=0))
    fig = new_figure(1.3 * cols, 1.35 * rows + 0.6, layout=None)
    grid = fig.add_gridspec(rows, cols, hspace=0.45, wspace=0.15, top=1 - 0.6 / (1.35 * rows + 0.6))
    fig.suptitle(e.sentence, fontsize=9, wrap=True)

    def picture(ax, img, title, cmap="gray", **kw):
        ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
        ax.set_title(title, fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])

    picture(fig.add_subplot(grid[0, 0]), x.numpy(), "input (28x28)")
    # Red pixels raised the digit's score, blue ones lowered it (scaled so the strongest is 1).
    picture(fig.add_subplot(grid[0, 1]), e.attribution, f"for {e.digit}", cmap="bwr", vmin=-1, vmax=1)
    if e.runner_up_attribution is not None:
        picture(fig.add_subplot(grid[0, 2]), e.runner_up_attribution, f"for {e.runner_up}", cmap="bwr",
                vmin=-1, vmax=1)
    bars = fig.add_subplot(grid[0, 3:])
    bars.bar(range(10), e.probabilities, color=["C3" if k == e.digit else "C0" for k in range(10)])
    bars.set_xticks(range(10)), bars.set_ylim(0, 1), bars.tick_params(labelsize=6)
    bars.set_title("probabilities", fontsize=7)
    for r, stage in enumerate(e.stages, start=1):
        for c, (fmap, ch) in enumerate(zip(stage.maps, stage.channels)):
            picture(fig.add_subplot(grid[r, c]), fmap, f"{stage.name} #{ch}", cmap="magma")
    if e.filters is not None:
        for c, w in enumerate(e.filters[:cols]):
            picture(fig.add_subplot(grid[rows - 1, c]), w, f"conv1 filter #{e.stages[0].channels[c]}", cmap="bwr",
                    vmin=-np.abs(w).max(), vmax=np.abs(w).max())
    return fig
