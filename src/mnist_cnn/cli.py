"""The `mnist-cnn` command line: a thin edge that parses flags, picks the device, prints.

    mnist-cnn --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, data, distributed, train
from .evaluate import evaluate
from .recipes import RECIPES, config_from_dict, get_config


def pick_device(name: str = "auto") -> torch.device:
    """Choose the device once, here at the edge: CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but this torch has no CUDA device (see README: GPU set-up)")
    if name == "cuda" and distributed.is_distributed():
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def say(*args, **kwargs) -> None:
    """Print on rank 0 only, so torchrun jobs print one copy."""
    if distributed.is_main():
        print(*args, **kwargs, flush=True)


# --------------------------------------------------------------------- data


def cmd_data(args) -> int:
    folder = data.acquire(args.data_dir, log=say)
    for name in data.SHA256:
        say(f"  {name}  sha256 ok")
    say(f"MNIST ready in {folder}")
    return 0


# -------------------------------------------------------------------- train


def resolve_config(args):
    if args.resume:
        stored = json.loads((Path(args.resume) / "config.json").read_text())
        return config_from_dict(stored)
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                 "limit_train": args.limit_train, "compile": args.compile or None}
    return get_config(args.recipe, **overrides)


def cmd_train(args) -> int:
    from .progress import TrainProgress  # tqdm is only needed when training from the CLI

    distributed.setup(args.device)
    cfg = resolve_config(args)
    device = pick_device(args.device)
    seed_everything(cfg.seed)
    run_dir = Path(args.resume or args.out or f"runs/{cfg.recipe}-{datetime.now():%Y%m%d-%H%M%S}")
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        train.write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    say(f"recipe {cfg.recipe}: {cfg.model} for {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"on {device} x{distributed.world_size()} -> {run_dir}")
    mnist = data.load_mnist(args.data_dir, val_size=cfg.val_size, limit_train=cfg.limit_train, device=device, log=say)
    t0 = time.perf_counter()
    with TrainProgress(cfg, len(mnist.train_x), enabled=distributed.is_main()) as progress:
        model, history = train.train(cfg, mnist, device, run_dir, resume=bool(args.resume),
                                     on_step=progress.step, on_epoch=progress.epoch)
    seconds = time.perf_counter() - t0
    mean, std = train.normalization(cfg)
    test = evaluate(model, mnist.test_x, mnist.test_y, mean, std, tta=cfg.tta, channels_last=cfg.channels_last)
    metrics = {"test_accuracy": test.accuracy, "test_loss": test.loss, "per_class": test.per_class,
               "train_seconds": seconds, "epochs": cfg.epochs, "device": str(device),
               "world_size": distributed.world_size(),
               "val_accuracy": history.epochs[-1].get("val_acc") if history.epochs else None}
    if distributed.is_main():
        checkpoint.save_model(run_dir / checkpoint.WEIGHTS_NAME, model, train.model_metadata(cfg, metrics))
        train.write_json(run_dir / "metrics.json", metrics)
        train.write_json(run_dir / "run.json", {"config": dataclasses.asdict(cfg), "metrics": metrics,
                                                "versions": checkpoint.library_versions(),
                                                "git_commit": checkpoint.git_commit(), "argv": sys.argv})
    say(f"test accuracy {test.accuracy:.2f}% ({test.n} images), trained in {seconds:.0f} s")
    say(f"outputs in {run_dir}/ (model.safetensors, metrics.json, history.json, config.json)")
    distributed.teardown()
    return 0


# ----------------------------------------------------------------- evaluate


def cmd_evaluate(args) -> int:
    device = pick_device(args.device)
    model, meta = checkpoint.load_model(args.checkpoint, device)
    cfg = meta.get("config", {})
    folder = data.acquire(args.data_dir, log=lambda m: None)
    x, y = data.read_split(folder, "test")
    x, y = x.to(device), y.to(device)
    result = evaluate(model, x, y, meta["mean"], meta["std"], tta=cfg.get("tta", False))
    rows = np.random.default_rng(args.seed).choice(len(y), size=min(args.samples, len(y)), replace=False)
    truth, pred = y.cpu()[rows].tolist(), result.predictions[rows].tolist()
    report = {**result.summary(), "checkpoint": str(args.checkpoint or checkpoint.default_model_path()),
              "samples": {"index": rows.tolist(), "truth": truth, "predicted": pred}}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"checkpoint: {report['checkpoint']} ({meta['arch']})")
    print(f"test accuracy: {result.accuracy:.2f}% of {result.n} images, loss {result.loss:.4f}")
    print("per-class accuracy: " + "  ".join(f"{c}:{a:.1f}" for c, a in zip(meta["classes"], result.per_class)))
    print("confusion matrix (rows: true, columns: predicted):")
    print("      " + "".join(f"{c:>6}" for c in meta["classes"]))
    for c, row in zip(meta["classes"], result.confusion):
        print(f"{c:>6}" + "".join(f"{v:>6}" for v in row))
    print("GroundTruth: ", " ".join(f"{t:>5}" for t in truth))
    print("Predicted:   ", " ".join(f"{p:>5}" for p in pred))
    return 0


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-cnn", description="Handwritten-digit recognition with CNNs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p):
        p.add_argument("--data-dir", type=Path, default=None,
                       help="MNIST cache (default: $MNIST_CNN_DATA or ~/.cache/mnist-cnn)")

    p = sub.add_parser("data", help="acquire and verify MNIST")
    add_common(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a recipe, then evaluate it on the test set")
    add_common(p)
    p.add_argument("--recipe", default="default", choices=list(RECIPES))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--limit-train", type=int, metavar="N", help="train on N images only")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder (default runs/RECIPE-TIME)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint on the MNIST test set")
    add_common(p)
    p.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint or run folder (default: shipped model)")
    p.add_argument("--samples", type=int, default=10, help="random test images to show")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (data.DataError, checkpoint.CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the last epoch's checkpoint is kept (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
