"""Run folders: where they live, which is the latest, listing them, comparing their numbers and curves.

A run folder is what `mnist-cnn train` (or `mnist_cnn.train()`, the same job: `pipeline.py`)
writes: config.json first, then the checkpoints, then metrics.json when it has finished.
This module only reads them, and imports nothing heavy.

    mnist-cnn runs runs/ --sort acc && mnist-cnn compare runs/fast runs/default
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .errors import UserError
from .files import read_json

RUNS_DIR = Path("runs")  # where runs go unless told otherwise (relative to the working directory)
LATEST = "latest"  # the model name that means the newest finished run under RUNS_DIR


def new_run_dir(recipe: str, folder: Path = RUNS_DIR) -> Path:
    """A fresh run folder's name: runs/RECIPE-YYYYmmdd-HHMMSS."""
    return Path(folder) / f"{recipe}-{datetime.now():%Y%m%d-%H%M%S}"


def is_finished(path: Path) -> bool:
    """Whether a run folder holds a finished run: its metrics and final model are written."""
    return (Path(path) / "metrics.json").is_file() and (Path(path) / "model.safetensors").is_file()


def latest_run(folder: Path = RUNS_DIR) -> Path:
    """The newest finished run under `folder` (by when its metrics were written), or a UserError."""
    folder = Path(folder)
    found = [p.parent for p in folder.rglob("metrics.json") if is_finished(p.parent)] if folder.is_dir() else []
    if not found:
        raise UserError(f"no finished run under {folder.resolve()} for {LATEST!r} (a finished run folder holds "
                        "metrics.json and model.safetensors); train one with `mnist-cnn train`")
    return max(found, key=lambda p: ((p / "metrics.json").stat().st_mtime_ns, str(p)))


def resolve(source) -> Path:
    """A model's path as given, with "latest" meaning `latest_run()` (unless a file or folder has that name)."""
    path = Path(source)
    if str(source) == LATEST and not path.exists():
        return latest_run()
    return path


def fmt(key: str, value) -> str:
    """A metric or config value for people: accuracies as percent, seconds with a unit, losses to 4 places."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if "acc" in key or key == "ece":
        return f"{value:.2f}%"
    if "seconds" in key:
        return f"{value:.1f} s"
    return f"{value:.4f}" if "loss" in key else f"{value:g}"


def read_config(path: Path) -> dict:
    """A run folder's resolved config, as `mnist-cnn train` wrote it first thing."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a run folder (no config.json; run folders are written by `mnist-cnn train`)")
    return read_json(path / "config.json")


def load_run(path: Path) -> dict:
    """A run folder's config, metrics and history (metrics are empty while a run is unfinished)."""
    path = Path(path)
    return {"path": path, "config": read_config(path), "metrics": read_json(path / "metrics.json", {}),
            "history": read_json(path / "history.json", {}), "date": (path / "config.json").stat().st_mtime}


def find_runs(folder: Path) -> list[dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    return [load_run(p.parent) for p in sorted(folder.rglob("config.json"))]


def run_row(run: dict) -> dict:
    cfg, m, h = run["config"], run["metrics"], run["history"]
    return {"recipe": cfg.get("recipe", "?"), "model": cfg.get("model", "?"),
            "epochs": m.get("epochs", len(h.get("epochs", []))), "planned": cfg.get("epochs"),
            "seconds": m.get("train_seconds"), "accuracy": m.get("test_accuracy"), "val": m.get("val_accuracy"),
            "tta": bool(cfg.get("tta", False)),  # the test accuracy was measured with test-time augmentation
            "date": datetime.fromtimestamp(run["date"]).strftime("%Y-%m-%d %H:%M"), "path": str(run["path"])}


# How `mnist-cnn runs --sort` orders rows: accuracies best first, time fastest first, dates newest first.
SORT_KEYS = {"acc": ("accuracy", True), "val": ("val", True), "time": ("seconds", False),
             "epochs": ("epochs", True), "date": ("date", True), "recipe": ("recipe", False), "path": ("path", False)}


def sort_rows(rows: list[dict], key: str = "acc") -> list[dict]:
    field, descending = SORT_KEYS[key]
    known = sorted((r for r in rows if r[field] is not None), key=lambda r: r[field], reverse=descending)
    return known + [r for r in rows if r[field] is None]  # unfinished runs last


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in lines)


def runs_table(rows: list[dict]) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.2f}%"

    return text_table(["recipe", "model", "epochs", "time", "test acc", "val acc", "date", "path"], [
        [r["recipe"], r["model"], str(r["epochs"]) if r["accuracy"] is not None else f"{r['epochs']}/{r['planned']}",
         "-" if r["seconds"] is None else f"{r['seconds']:.0f} s", pct(r["accuracy"]) + (" TTA" if r["tta"] else "")
         if r["accuracy"] is not None else "unfinished", pct(r["val"]), r["date"], r["path"]] for r in rows])


def run_names(runs: list[dict]) -> list[str]:
    """Folder names, or full paths where two runs share a folder name."""
    names = [r["path"].name for r in runs]
    return names if len(set(names)) == len(names) else [str(r["path"]) for r in runs]


def compare_table(runs: list[dict]) -> str:
    """Runs side by side: headline numbers, then every config field on which they differ."""
    metric_rows = [("test accuracy", "test_accuracy"), ("measured", "test_forward"), ("test loss", "test_loss"),
                   ("val accuracy", "val_accuracy"), ("train seconds", "train_seconds"), ("device", "device")]
    rows = [[label] + [fmt(key, r["metrics"].get(key)) if r["metrics"].get(key) is not None else "-" for r in runs]
            for label, key in metric_rows]
    keys = list(dict.fromkeys(k for r in runs for k in r["config"]))
    always = ("recipe", "model", "epochs", "batch_size", "lr")
    differ = [k for k in keys if k in always or len({json.dumps(r["config"].get(k)) for r in runs}) > 1]
    rows += [[k] + [fmt(k, r["config"][k]) if k in r["config"] else "-" for r in runs] for k in differ]
    return text_table(["", *run_names(runs)], rows)


def compare_figure(runs: list[dict]):
    """Every run's smoothed training loss and validation accuracy against epochs, on shared axes (a Figure)."""
    from matplotlib.ticker import MaxNLocator

    from .figures import epoch_axis, log_scale, new_figure, smooth  # matplotlib only when drawing

    fig = new_figure(13, 4.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for run, name, color in zip(runs, run_names(runs), colors):
        steps, epochs = run["history"].get("steps", []), run["history"].get("epochs", [])
        acc = run["metrics"].get("test_accuracy")
        label = name + (f" (test {acc:.2f}%)" if acc is not None else " (unfinished)")
        if steps:
            ax_loss.plot(epoch_axis(steps), smooth([s["loss"] for s in steps], max(1, len(steps) // 40)),
                         color=color, lw=1.8, label=label)
        val = [(e["epoch"], e["val_acc"]) for e in epochs if e.get("val_acc") is not None]
        if val:
            ax_acc.plot(*zip(*val), "o-", color=color, lw=1.8, label=label)
        elif acc is not None:  # runs without a validation split: their final test accuracy
            ax_acc.plot([len(epochs) or 1], [acc], "*", color=color, ms=12, label=label + " *test")
    if ax_loss.lines:
        log_scale(ax_loss)
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, title in ((ax_loss, "training loss (smoothed)"), (ax_acc, "validation accuracy per epoch (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig
