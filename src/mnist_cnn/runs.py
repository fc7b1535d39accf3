"""Run folders: train one (what `mnist-cnn train` writes), list them, compare their numbers and curves.

    mnist-cnn train --out runs/fast --recipe fast
    mnist-cnn runs runs/ --sort acc && mnist-cnn compare runs/fast runs/default
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path

from . import checkpoint, data, distributed, models, train
from .evaluate import evaluate, fit_temperature, predict_logits


def train_run(cfg, run_dir: Path, device, data_dir=None, resume: bool = False, tensorboard: bool = False,
              log=print) -> dict:
    """Train `cfg` into `run_dir`, score it on the test set and return its metrics.

    The folder gets config.json first (so an unfinished run is listed), the training
    checkpoints as it goes, then model.safetensors, metrics.json, run.json and report/.
    Under torchrun every rank calls this and rank 0 writes.
    """
    from .progress import TrainProgress  # tqdm is only needed when training from the CLI

    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        train.write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    mnist = data.load_mnist(data_dir, val_size=cfg.val_size, limit_train=cfg.limit_train, device=device, log=log)
    with TrainProgress(cfg, len(mnist.train_x), enabled=distributed.is_main()) as progress:
        if cfg.ensemble > 1:  # members keep their own folders; the run's curves are member 0's
            model, histories = train.train_ensemble(cfg, mnist, device, run_dir, progress.step, progress.epoch)
            history = histories[0]
            if distributed.is_main():
                train.write_json(run_dir / train.HISTORY_NAME, dataclasses.asdict(history))
        else:
            model, history = train.train(cfg, mnist, device, run_dir, resume=resume,
                                         on_step=progress.step, on_epoch=progress.epoch)
    # Training time over every segment of a resumed run (each History adds up its own segments).
    seconds = sum(h.seconds for h in histories) if cfg.ensemble > 1 else history.seconds
    mean, std = train.normalization(cfg)
    # Calibrate the probabilities on the validation split, when there is one (argmax and accuracy are unchanged).
    temperature = fit_temperature(predict_logits(model, mnist.val_x, mean, std, channels_last=cfg.channels_last),
                                  mnist.val_y) if len(mnist.val_y) else 1.0
    scored = models.with_temperature(model, temperature)  # what load_model will give
    test = evaluate(scored, mnist.test_x, mnist.test_y, mean, std, tta=cfg.tta, channels_last=cfg.channels_last)
    metrics = {"test_accuracy": test.accuracy, "test_loss": test.loss, "per_class": test.per_class,
               "test_images": test.n, "train_seconds": seconds, "epochs": cfg.epochs, "device": str(device),
               "world_size": distributed.world_size(),
               "val_accuracy": history.epochs[-1].get("val_acc") if history.epochs else None}
    if distributed.is_main():
        checkpoint.save_model(run_dir / checkpoint.WEIGHTS_NAME, model,
                              train.model_metadata(cfg, metrics, temperature))
        train.write_json(run_dir / "metrics.json", metrics)
        train.write_json(run_dir / "run.json", {"config": dataclasses.asdict(cfg), "metrics": metrics,
                                                "versions": checkpoint.library_versions(),
                                                "git_commit": checkpoint.git_commit(), "argv": sys.argv})
        from .report import write_run_report  # figures are drawn after training, so they never slow it
        probs = test.probabilities if distributed.world_size() == 1 else (  # rank 0 scored one shard only
            predict_logits(scored, mnist.test_x, mean, std, tta=cfg.tta).softmax(1).cpu())
        write_run_report(run_dir, mnist.test_x.cpu(), mnist.test_y.cpu(), probs, tensorboard)
    return metrics


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


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
        raise ValueError(f"{path}: not a run folder (no config.json; run folders are written by `mnist-cnn train`)")
    return read_json(path / "config.json")


def load_run(path: Path) -> dict:
    """A run folder's config, metrics and history (metrics are empty while a run is unfinished)."""
    path = Path(path)
    return {"path": path, "config": read_config(path), "metrics": read_json(path / "metrics.json", {}),
            "history": read_json(path / "history.json", {}), "date": (path / "config.json").stat().st_mtime}


def find_runs(folder: Path) -> list[dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    return [load_run(p.parent) for p in sorted(folder.rglob("config.json"))]


def run_row(run: dict) -> dict:
    cfg, m, h = run["config"], run["metrics"], run["history"]
    return {"recipe": cfg.get("recipe", "?"), "model": cfg.get("model", "?"),
            "epochs": m.get("epochs", len(h.get("epochs", []))), "planned": cfg.get("epochs"),
            "seconds": m.get("train_seconds"), "accuracy": m.get("test_accuracy"), "val": m.get("val_accuracy"),
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
         "-" if r["seconds"] is None else f"{r['seconds']:.0f} s", pct(r["accuracy"]) if r["accuracy"] is not None
         else "unfinished", pct(r["val"]), r["date"], r["path"]] for r in rows])


def run_names(runs: list[dict]) -> list[str]:
    """Folder names, or full paths where two runs share a folder name."""
    names = [r["path"].name for r in runs]
    return names if len(set(names)) == len(names) else [str(r["path"]) for r in runs]


def compare_table(runs: list[dict]) -> str:
    """Runs side by side: headline numbers, then every config field on which they differ."""
    metric_rows = [("test accuracy", "test_accuracy"), ("test loss", "test_loss"), ("val accuracy", "val_accuracy"),
                   ("train seconds", "train_seconds"), ("device", "device")]
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
