"""The `mnist-cnn` command line: a thin edge that parses flags, picks the device, prints.

    mnist-cnn --help
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, data, distributed
from .distributed import pick_device
from .errors import UserError
from .evaluation import evaluate, measured_forward
from .recipes import RECIPES, config_from_dict, get_config


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], so a bad number is a usage error, not a traceback."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} or more" if high is None else
                                             f"must be from {low} to {high}")
        return value
    parse.__name__ = "integer"  # argparse says "invalid integer value" for text that is not one
    return parse


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
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                 "limit_train": args.limit_train, "compile": args.compile or None, "ensemble": args.ensemble}
    if args.resume:  # the run's config with these flags applied; the job refuses those it cannot take
        import dataclasses

        from .runs import read_config
        cfg = config_from_dict(read_config(args.resume))
        return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    return get_config(args.recipe, **overrides)


def cmd_train(args) -> int:
    # Under torchrun: join the process group; a lost rank becomes a clear error, not a hang.
    with distributed.session(args.device, args.dist_timeout):
        return run_training(args)


def run_training(args) -> int:
    from .pipeline import train_run
    from .runs import new_run_dir

    cfg = resolve_config(args)
    if args.tensorboard:
        from .report import require_tensorboard
        require_tensorboard()  # fail now, not after training
    device = pick_device(args.device)
    seed_everything(cfg.seed)
    run_dir = Path(args.resume or args.out or new_run_dir(cfg.recipe))
    run_dir = distributed.broadcast_object(run_dir)  # ranks' clocks may straddle a second
    epochs = f"{cfg.epochs} epoch" + ("" if cfg.epochs == 1 else "s")
    say(f"recipe {cfg.recipe}: {cfg.model} for {epochs}, batch {cfg.batch_size}, "
        f"on {device} x{distributed.world_size()} -> {run_dir}")
    metrics = train_run(cfg, run_dir, device, args.data_dir, resume=bool(args.resume), tensorboard=args.tensorboard,
                        progress=True, log=say)
    say(f"test accuracy {metrics['test_accuracy']:.2f}% ({metrics['test_images']} images), {metrics['test_forward']}, "
        f"trained in {metrics['train_seconds']:.0f} s")
    say(f"outputs in {run_dir}/ (model.safetensors, metrics.json, history.json, config.json, report/index.html)")
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
    if args.report or args.tensorboard:
        from .report import write_evaluation_report
        report["report"] = str(write_evaluation_report(
            report["checkpoint"], meta, {"test_accuracy": result.accuracy, "test_loss": result.loss,
                                         "per_class": result.per_class, "test_forward": result.forward},
            x.cpu(), y.cpu(), result.probabilities,
            args.report_dir, args.seed, args.tensorboard))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"checkpoint: {report['checkpoint']} ({meta['arch']})")
    print(result.describe(meta["classes"]))
    print("GroundTruth: ", " ".join(f"{t:>5}" for t in truth))
    print("Predicted:   ", " ".join(f"{p:>5}" for p in pred))
    if "report" in report:
        print(f"report: {report['report']}")
    return 0


# --------------------------------------------------------- runs and compare


def cmd_runs(args) -> int:
    from .runs import find_runs, run_row, runs_table, sort_rows

    rows = sort_rows([run_row(r) for r in find_runs(args.folder)], args.sort)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(runs_table(rows) if rows else f"no runs in {args.folder} (a run folder holds config.json)")
    return 0


def cmd_compare(args) -> int:
    from .figures import save_figure
    from .runs import compare_figure, compare_table, load_run

    runs = [load_run(path) for path in args.runs]
    print(compare_table(runs))
    print(f"curves: {save_figure(compare_figure(runs), args.out)}")
    return 0


# ------------------------------------------------------------------- export


def cmd_export(args) -> int:
    from . import export  # its onnx dependencies are an optional extra

    report = export.export_checkpoint(args.model, args.out, int8=args.int8, data_dir=args.data_dir,
                                      calibration_images=args.calibration_images or export.CALIBRATION_IMAGES)
    parity = report["parity"]
    print(f"parity with PyTorch on {parity['images']} test images: max |logit diff| "
          f"{parity['max_abs_logit_diff']:.2e}, same predictions: {parity['same_predictions']}")
    if "int8" in report:
        q = report["int8"]
        print(f"int8 (calibrated on {q['calibration_images']} training images): test accuracy "
              f"{q['int8_accuracy']:.2f}% vs fp32 {q['fp32_accuracy']:.2f}% (drop {q['drop']:+.2f} points, "
              f"{q['forward']})")
    print(f"wrote {report['out']} ({report['precision']}, {report['bytes'] / 1e6:.2f} MB, dynamic batch)")
    return 0


# -------------------------------------------------------------------- serve


def cmd_serve(args) -> int:
    try:  # fastapi and uvicorn are the optional extra "serve"
        from . import serve
    except ImportError as exc:
        raise SystemExit(f"error: serving needs {exc.name}: pip install 'mnist-cnn[serve]'") from None
    device = pick_device(args.device) if args.backend == "torch" else torch.device("cpu")
    options = {"model": str(args.model) if args.model else None, "backend": args.backend, "device": str(device),
               "threads": args.threads, "min_confidence": args.min_confidence}
    torch.set_num_threads(args.threads)  # the process's setting, so here at the edge (workers: serve.worker_app)
    predictor = serve.load_predictor(**options)  # here, so a bad model is a clear error before anything starts
    acc = predictor.meta.get("metrics", {}).get("test_accuracy")
    measured = f", test accuracy {acc:.2f}% {measured_forward(predictor.meta)}" if acc is not None else ""
    print(f"model {args.model or checkpoint.default_model_path()} ({predictor.meta['arch']}, {args.backend}"
          f"{measured}), {args.workers} worker(s)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}, reachable from other machines", flush=True)
    hosts = serve.guards.allowed_hosts(args.host, args.allowed_host)
    if hosts is None:
        print("note: answering for any Host header; pass --allowed-host NAME for the names clients use", flush=True)
    print(f"open http://{'localhost' if args.host in ('127.0.0.1', '::1') else args.host}:{args.port}/ "
          "(Ctrl+C stops)", flush=True)
    serve.run(predictor, options, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
              allowed_hosts=hosts)
    return 0


# ------------------------------------------------------------------ predict


def cmd_predict(args) -> int:
    from .predict import Predictor, iter_inputs, predict_inputs

    predictor = Predictor.from_path(args.model, backend=args.backend, min_confidence=args.min_confidence,
                                    topk=args.topk)
    if args.save_processed:
        try:
            args.save_processed.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--save-processed {args.save_processed}: {exc.strerror or exc}") from None
    try:
        failed, total = _print_predictions(args, predictor, predict_inputs(
            predictor, iter_inputs(args.paths, getattr(sys.stdin, "buffer", None)), multi=args.multi))
    except BrokenPipeError:  # `mnist-cnn predict ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if failed:
        print(f"{failed} of {total} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def _print_predictions(args, predictor, results) -> tuple[int, int]:
    import csv

    from .predict import save_processed

    writer = csv.writer(sys.stdout) if args.format == "csv" else None
    if writer:
        writer.writerow(["path", "status", "prediction", "probability", "topk", "error"])
    used, failed, total = set(), 0, 0
    for result in results:
        total += 1
        pred, failed = result.prediction, failed + (result.error is not None)
        name = printable(result.name, sys.stdout.encoding)
        if pred is not None and args.save_processed:
            save_processed(args.save_processed, result.name, pred, used)
        if args.format == "json":
            body = {"status": "error", "error": result.error} if pred is None else pred.to_dict()
            print(json.dumps({"path": name, **body}), flush=True)
        elif writer:
            writer.writerow([name, "error", "", "", "", result.error] if pred is None
                            else [name, *pred.csv_row(), ""])
        elif pred is None:
            print(f"{name}: error: {result.error}", file=sys.stderr, flush=True)
        else:
            print(f"{name}: {pred.describe()}", flush=True)
    return failed, total


def printable(name: str, encoding: str | None) -> str:
    """A path as the terminal can show it: bytes that are not text in a file name become \\xNN escapes."""
    text = os.fsencode(name).decode(sys.getfilesystemencoding(), "backslashreplace")
    encoding = encoding or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


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
    p.add_argument("--ensemble", type=int, metavar="N", help="train N models (seeds S..S+N-1), average them")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder (default runs/RECIPE-TIME)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars and images "
                   "(needs the tensorboard extra)")
    p.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="torchrun: how long a rank waits for the others before the job fails (default %(default)g)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint on the MNIST test set")
    add_common(p)
    p.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint or run folder (default: shipped model)")
    p.add_argument("--samples", type=int_in(0), default=10, help="random test images to show")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", action="store_true", help="write figures and index.html into the run's report/")
    p.add_argument("--report-dir", type=Path, metavar="DIR", help="write the report here instead")
    p.add_argument("--tensorboard", action="store_true", help="with the report, TensorBoard scalars and images")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("runs", help="list the training runs in a folder")
    p.add_argument("folder", nargs="?", type=Path, default=Path("runs"), help="folder of runs (default: runs)")
    from .runs import SORT_KEYS  # light: matplotlib loads only when a command draws
    p.add_argument("--sort", default="acc", choices=list(SORT_KEYS), help="order (default acc: best first)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("compare", help="put runs side by side, with their curves on one figure")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="figure path (default compare.png)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (optionally int8), verified against PyTorch")
    add_common(p)
    p.add_argument("--model", type=Path, metavar="CHECKPOINT", help="checkpoint or run folder (default: shipped model)")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--int8", action="store_true", help="static int8 quantization calibrated on training images")
    p.add_argument("--calibration-images", type=int_in(1), metavar="N", help="training images for --int8 "
                   "(default 2000)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve the draw-a-digit page and the REST API")
    p.add_argument("--model", type=Path, metavar="CHECKPOINT", help="checkpoint, run folder or .onnx file "
                   "(default: shipped model)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--allowed-host", action="append", metavar="NAME", help="a Host name clients (or a reverse "
                   "proxy) use to reach the server; repeatable, '*' for any (default: loopback names and --host)")
    p.add_argument("--port", type=int_in(1, 65535), default=8000)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="torch backend device (default cpu: fastest for one image at a time)")
    p.add_argument("--threads", type=int_in(1), default=1, help="intra-op threads of torch or ONNX Runtime")
    p.add_argument("--workers", type=int_in(1), default=1, help="server processes, each with its own copy of the "
                   "model: image preprocessing holds the GIL, so more processes can use more cores")
    p.add_argument("--min-confidence", type=float, default=0.5, metavar="P",
                   help='below this probability the answer says "unsure"')
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="recognize digits in your own images (files, folders, globs, - for stdin)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders of images, globs, or - (stdin)")
    p.add_argument("--model", type=Path, metavar="CHECKPOINT", help="checkpoint, run folder or (onnx) .onnx file "
                   "(default: shipped model)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--format", default="text", choices=["text", "json", "csv"],
                   help="text for people; json (one object per line) or csv for programs")
    p.add_argument("--topk", type=int_in(1, 10), default=3, metavar="K", help="alternatives to show (default 3)")
    p.add_argument("--min-confidence", type=float, default=0.5, metavar="P",
                   help='answer "unsure" when the best probability is below P (default 0.5; 0: answer '
                   'whenever the ink looks like a digit)')
    p.add_argument("--save-processed", type=Path, metavar="DIR", help="write the 28x28 images the network saw")
    p.add_argument("--multi", action="store_true", help="read a number of several digits, left to right")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:  # a mistake to fix (errors.py); anything else is a bug, and keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder that cannot be made, a disk that is full: the user's to fix, no traceback
        print(f"error: {exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else f"error: {exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the last epoch's checkpoint is kept (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
