"""Reports a person can look at: one self-contained HTML page per run or evaluation, PNGs, TensorBoard.

Functions take values (config, metrics, history, images, labels, probabilities) and
return pages or paths; the CLI prints. The figures themselves are drawn by `figures.py`.

    mnist-cnn evaluate runs/fast --report && mnist-cnn runs runs/
"""

from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .data import CLASSES
from .errors import ConfigError
from .files import atomic_write, read_json
from .figures import (calibration, confusion_figure, curves_figure, misclassified_figure, per_class_figure, png_bytes,
                      reliability_figure, samples_figure)
from .runs import fmt

REPORT_DIR = "report"


def report_figures(images, labels, probabilities, history: dict | None, seed: int = 0) -> tuple[dict, dict]:
    """All figures of a report (name -> Figure) and the numbers they show."""
    labels = torch.as_tensor(labels).cpu()
    pred = torch.as_tensor(probabilities).cpu().argmax(1)
    confusion = torch.bincount(labels * 10 + pred, minlength=100).reshape(10, 10).numpy()
    per_class = (confusion.diagonal() / confusion.sum(1).clip(min=1) * 100).tolist()
    cal = calibration(probabilities, labels)
    figures = {}
    if history and history.get("steps"):
        figures["curves"] = curves_figure(history)
    figures["confusion"] = confusion_figure(confusion)
    figures["per_class"] = per_class_figure(per_class, confusion.sum(1) - confusion.diagonal())
    figures["misclassified"] = misclassified_figure(images, labels, probabilities)
    figures["samples"] = samples_figure(images, labels, probabilities, seed=seed)
    figures["reliability"] = reliability_figure(cal)
    numbers = {"ece": cal["ece"], "misclassified": int(len(labels) - confusion.trace()), "images": len(labels)}
    return figures, numbers


CAPTIONS = {
    "curves": "Training loss and batch accuracy per step (faint: raw, bold: smoothed), validation accuracy per "
              "epoch, and the learning rate. Dotted lines mark epoch ends.",
    "confusion": "Confusion matrix on the test set: rows are the true digit, columns the prediction.",
    "per_class": "Test accuracy for each true digit, with how many of it were misread.",
    "misclassified": "The misclassified test digits, most confident mistakes first: true → predicted (confidence).",
    "samples": "Random test digits with the model's prediction (green right, red wrong).",
    "reliability": "Calibration: accuracy against confidence per bin; ECE is the count-weighted mean gap.",
}


def html_report(title: str, config: dict, metrics: dict, pngs: dict[str, bytes]) -> str:
    """One self-contained page: the figures are embedded as data URLs, so it opens offline anywhere."""
    e = html.escape
    epochs = f"{config.get('epochs', '?')} epoch" + ("" if config.get("epochs") == 1 else "s")
    parts = (f"recipe {config.get('recipe', '?')}", config.get("model", "?"), epochs, metrics.get("device"))
    subtitle = " · ".join(str(x) for x in parts if x)
    measured = f" ({metrics['test_forward']})" if metrics.get("test_forward") else ""
    cards = "".join(f'<div class="card"><b data-key="{k}">{e(fmt(k, metrics[k]))}</b><span>{e(label)}</span></div>'
                    for k, label in (("test_accuracy", "test accuracy" + measured), ("test_loss", "test loss"),
                                     ("val_accuracy", "validation accuracy"), ("ece", "calibration error (ECE)"),
                                     ("misclassified", "misclassified"), ("train_seconds", "training time"))
                    if metrics.get(k) is not None)
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    rows = "".join(f'<tr><th>{e(k)}</th><td data-key="{e(k)}">{e(fmt(k, v))}</td></tr>' for k, v in scalars.items())
    per_class = metrics.get("per_class") or []
    pc = "".join(f'<td data-key="per_class_{i}">{a:.2f}%</td>' for i, a in enumerate(per_class))
    pc_table = (f'<table class="wide"><tr><th>class</th>{"".join(f"<th>{c}</th>" for c in CLASSES)}</tr>'
                f'<tr><th>accuracy</th>{pc}</tr></table>') if per_class else ""
    cfg_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(k, v))}</td></tr>" for k, v in config.items())
    figs = "".join(f'<figure id="{name}"><img alt="{name}" src="data:image/png;base64,'
                   f'{base64.b64encode(raw).decode()}"><figcaption>{e(CAPTIONS.get(name, name))}</figcaption></figure>'
                   for name, raw in pngs.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ margin-bottom: .1em; }} .sub {{ color: #666; margin-top: 0; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .8em; margin: 1.2em 0; }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: .6em 1em; min-width: 9em; }}
.card b {{ display: block; font-size: 1.6em; }} .card span {{ color: #666; font-size: .9em; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ padding: .2em .8em; border-bottom: 1px solid #eee; }}
th {{ text-align: left; font-weight: 600; }} td {{ font-family: ui-monospace, monospace; }}
.wide td, .wide th {{ text-align: right; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }} figcaption {{ color: #555; }}
.cols {{ display: flex; flex-wrap: wrap; gap: 3em; }}
</style></head><body>
<h1>{e(title)}</h1><p class="sub">{e(subtitle)} · generated {datetime.now():%Y-%m-%d %H:%M} by mnist-cnn</p>
<div class="cards">{cards}</div>
<h2>Per-class accuracy</h2>{pc_table}
<h2>Figures</h2>{figs}
<div class="cols"><div><h2>Metrics</h2><table>{rows}</table></div>
<div><h2>Config</h2><table>{cfg_rows}</table></div></div>
</body></html>
"""


def write_report(out_dir: Path, config: dict, metrics: dict, history: dict | None, images, labels, probabilities,
                 title: str = "mnist-cnn run", seed: int = 0, tensorboard: bool = False) -> Path:
    """Draw every figure into `out_dir` as PNG and write `out_dir/index.html`; return the HTML's path."""
    out_dir = Path(out_dir)
    figures, numbers = report_figures(images, labels, probabilities, history, seed)
    pngs = {name: png_bytes(fig) for name, fig in figures.items()}
    for name, raw in pngs.items():
        atomic_write(out_dir / f"{name}.png", raw)
    page = html_report(title, config, {**metrics, **numbers}, pngs)
    atomic_write(out_dir / "index.html", page.encode())
    if tensorboard:
        write_tensorboard(out_dir / "tensorboard", history or {}, {**metrics, **numbers}, figures)
    return out_dir / "index.html"


def write_run_report(run_dir: Path, images, labels, probabilities, tensorboard: bool = False) -> Path:
    """The report of a finished training run, from its config.json, metrics.json and history.json."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", {})
    return write_report(run_dir / REPORT_DIR, config, read_json(run_dir / "metrics.json", {}),
                        read_json(run_dir / "history.json"), images, labels, probabilities,
                        title=f"mnist-cnn run {run_dir.name}", seed=config.get("seed", 0), tensorboard=tensorboard)


def write_evaluation_report(source: Path, meta: dict, metrics: dict, images, labels, probabilities,
                            out_dir: Path | None = None, seed: int = 0, tensorboard: bool = False) -> Path:
    """`evaluate --report`: into the run's report/ folder when `source` is in a run, else ./STEM-report/."""
    source = Path(source)
    run_dir = source if source.is_dir() else source.parent
    in_run = (run_dir / "config.json").is_file()
    out_dir = out_dir or (run_dir / REPORT_DIR if in_run else Path(f"{source.stem}-report"))
    return write_report(out_dir, meta.get("config", {}), {**meta.get("metrics", {}), **metrics},
                        read_json(run_dir / "history.json") if in_run else None, images, labels, probabilities,
                        title=f"mnist-cnn evaluation of {source}", seed=seed, tensorboard=tensorboard)


# -------------------------------------------------------------- tensorboard


def require_tensorboard():
    """SummaryWriter, or a clear error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'mnist-cnn[tensorboard]'") from None
    return SummaryWriter


def write_tensorboard(log_dir: Path, history: dict, metrics: dict, figures: dict[str, Figure]) -> Path:
    writer = require_tensorboard()(log_dir=str(log_dir))
    for s in history.get("steps", []):
        for key in ("loss", "acc", "lr"):
            writer.add_scalar(f"train/{key}", s[key], s["step"])
    for row in history.get("epochs", []):
        for key in ("val_acc", "val_loss", "seconds"):
            if row.get(key) is not None:
                writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
    for key in ("test_accuracy", "test_loss", "ece"):
        if isinstance(metrics.get(key), (int, float)):
            writer.add_scalar(f"test/{key}", metrics[key], 0)
    for name, fig in figures.items():
        fig.canvas.draw()
        writer.add_image(f"report/{name}", np.asarray(fig.canvas.buffer_rgba())[..., :3], 0, dataformats="HWC")
    writer.close()
    return Path(log_dir)
