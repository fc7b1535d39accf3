"""The `mnist-cnn` command line: a thin edge that parses flags, picks the device, prints.

The flags live in cli_args.py. Each command imports the stages it uses when it runs,
so `--help` and usage errors never wait for torch.

    mnist-cnn --help
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

from . import cli_args
from .cli_handwriting import cmd_finetune, cmd_samples, load_samples  # noqa: F401 (commands are looked up by name)
from .recipes import get_config, run_config


def pick_device(name: str = "auto"):
    """Choose the device once, here at the edge (distributed.pick_device, imported when a command runs)."""
    from .distributed import pick_device as pick

    return pick(name)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def say(*args, **kwargs) -> None:
    """Print on rank 0 only, so torchrun jobs print one copy."""
    from . import distributed

    if distributed.is_main():
        print(*args, **kwargs, flush=True)


# --------------------------------------------------------------------- data


def cmd_data(args) -> int:
    from . import data, fonts

    folder = data.acquire(args.data_dir, log=say)
    for name in data.SHA256:
        say(f"  {name}  sha256 ok")
    say(f"MNIST ready in {folder}")
    try:  # the default recipe trains on their digits too; the others need MNIST alone
        found = fonts.acquire(args.data_dir, log=say)
    except data.DataError as exc:
        print(f"warning: {exc}", file=sys.stderr, flush=True)
        return 0
    say(f"{len(found)} handwriting fonts ready in {found[0].parent} (sha256 ok)")
    return 0


# -------------------------------------------------------------------- train


def resolve_config(args):
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                 "limit_train": args.limit_train, "compile": args.compile or None,
                 "precision": args.precision, "ensemble": args.ensemble,
                 "samples_share": args.samples_share, "font_share": args.font_share}
    if args.resume:  # the run's config with these flags applied; the job refuses those it cannot take
        import dataclasses

        from .runs import read_config
        cfg = run_config(read_config(args.resume))
        return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    return get_config(args.recipe, **overrides)


def cmd_train(args) -> int:
    from . import distributed

    # Under torchrun: join the process group; a lost rank becomes a clear error, not a hang.
    with distributed.session(args.device, args.dist_timeout or distributed.DEFAULT_TIMEOUT_S):
        return run_training(args)


def run_training(args) -> int:
    from . import distributed
    from .pipeline import train_run
    from .runs import new_run_dir

    cfg = resolve_config(args)
    if args.tensorboard:
        from .report import require_tensorboard
        require_tensorboard()  # fail now, not after training
    samples = load_samples(args.samples) if args.samples else None  # before anything is trained
    device = pick_device(args.device)
    seed_everything(cfg.seed)
    run_dir = Path(args.resume or args.out or new_run_dir(cfg.recipe))
    run_dir = distributed.broadcast_object(run_dir)  # ranks' clocks may straddle a second
    epochs = f"{cfg.epochs} epoch" + ("" if cfg.epochs == 1 else "s")
    say(f"recipe {cfg.recipe}: {cfg.model} for {epochs}, batch {cfg.batch_size}, "
        f"on {device} x{distributed.world_size()} -> {run_dir}")
    metrics = train_run(cfg, run_dir, device, args.data_dir, resume=bool(args.resume), tensorboard=args.tensorboard,
                        progress=True, log=say, samples=samples)
    say(f"test accuracy {metrics['test_accuracy']:.2f}% ({metrics['test_images']} images), {metrics['test_forward']}, "
        f"trained in {metrics['train_seconds']:.0f} s")
    say(f"outputs in {run_dir}/ (model.safetensors, metrics.json, history.json, config.json, report/index.html)")
    return 0


def cmd_train_reader(args) -> int:
    import dataclasses

    from . import checkpoint, data
    from .files import write_json
    from .reader import train_reader
    from .recipes import ReaderConfig
    from .runs import new_run_dir, read_config

    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                 "precision": args.precision}
    given = {k: v for k, v in overrides.items() if v is not None}
    # A resumed run takes its own config; a flag given with --resume that changes it is refused by the job.
    cfg = ReaderConfig(**{**read_config(args.resume), **given}) if args.resume else ReaderConfig(**given)
    device = pick_device(args.device)
    run_dir = Path(args.resume or args.out or new_run_dir(cfg.recipe))
    d = data.load_mnist(args.data_dir, val_size=cfg.val_size, device=device,
                        log=lambda m: print(m, file=sys.stderr))
    print(f"training the number reader: {cfg.steps} steps of {cfg.batch_size} synthetic lines of 1-{cfg.max_digits} "
          f"MNIST training digits on {device} -> {run_dir}", flush=True)
    if not args.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    # The last step's checkpoint wrote the reader (model.safetensors) with this metadata.
    _, history, meta = train_reader(cfg, d.train_x, d.train_y, d.val_x, d.val_y, log=lambda m: print(m, flush=True),
                                    run_dir=run_dir, resume=bool(args.resume))
    write_json(run_dir / checkpoint.HISTORY_NAME, {"steps": history, "config": dataclasses.asdict(cfg)})
    print(f"validation lines read exactly: {meta['metrics']['val_exact']:.1f}%; use it: "
          f"mnist-cnn predict --multi --reader {run_dir / checkpoint.WEIGHTS_NAME} IMAGE")
    return 0


# ----------------------------------------------------------------- evaluate


def cmd_evaluate(args) -> int:
    import numpy as np

    from . import checkpoint, data
    from .evaluation import evaluate

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
                                         "per_class": result.per_class, "test_forward": result.forward}, x.cpu(), y.cpu(), result.probabilities,
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
    import torch

    from . import checkpoint
    from .evaluation import measured_forward

    try:  # fastapi and uvicorn are the optional extra "serve"
        from . import serve
    except ImportError as exc:
        raise SystemExit(f"error: serving needs {exc.name}: pip install 'mnist-cnn[serve]'") from None
    device = pick_device(args.device) if args.backend == "torch" else torch.device("cpu")
    from .runs import resolve

    # "latest" is resolved once, here: every worker serves the same run, and the page names it.
    options = {"model": str(resolve(args.model)) if args.model else None, "backend": args.backend,
               "device": str(device), "threads": args.threads, "min_confidence": args.min_confidence}
    torch.set_num_threads(args.threads)  # the process's setting, so here at the edge (workers: serve.worker_app)
    predictor = serve.load_predictor(**options)  # here, so a bad model is a clear error before anything starts
    acc = predictor.meta.get("metrics", {}).get("test_accuracy")
    measured = f", test accuracy {acc:.2f}% {measured_forward(predictor.meta)}" if acc is not None else ""
    print(f"model {options['model'] or checkpoint.default_model_path()} ({predictor.meta['arch']}, {args.backend}"
          f"{measured}), {args.workers} worker(s)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}, reachable from other machines", flush=True)
    hosts = serve.guards.allowed_hosts(args.host, args.allowed_host)
    if hosts is None:
        print("note: answering for any Host header; pass --allowed-host NAME for the names clients use", flush=True)
    collect, query = serve_collect(args)
    print(f"open http://{'localhost' if args.host in ('127.0.0.1', '::1') else args.host}:{args.port}/{query} "
          "(Ctrl+C stops)", flush=True)
    serve.run(predictor, options, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
              allowed_hosts=hosts, collect=collect)
    return 0


def serve_collect(args):
    """(where --collect keeps samples and the token it needs, or None; the page's query string for it)."""
    from .collect import Collect, collect_token
    from .samples import Store, default_path

    if not args.collect:
        if args.collect_token or args.samples_db:
            print("note: --collect-token and --samples-db do nothing without --collect", flush=True)
        return None, ""
    path = args.samples_db or default_path()
    with Store(path) as store:  # a damaged store is a clear error now, not at the first correction
        count = store.count()
    token, drawn = collect_token(args.host, args.collect_token or os.environ.get("MNIST_CNN_COLLECT_TOKEN"))
    print(f"collecting corrections into {path} ({count} samples so far)"
          + ("" if token is None else "; they need the token" + (" drawn for this run" if drawn else "")),
          flush=True)
    return Collect(path, token), "" if token is None else f"?token={token}"


# ------------------------------------------------------------------ predict


def cmd_predict(args) -> int:
    from .batch import iter_inputs, predict_inputs
    from .errors import UserError
    from .predict import Predictor

    predictor = Predictor.from_path(args.model, backend=args.backend, min_confidence=args.min_confidence,
                                    topk=args.topk, reader=args.reader or "shipped")
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

    from .batch import save_processed

    writer = csv.writer(sys.stdout) if args.format == "csv" else None
    if writer:
        writer.writerow(["path", "status", "prediction", "probability", "topk", "error"])
    used, failed, total = set(), 0, 0
    for result in results:
        total += 1
        pred, failed = result.prediction, failed + (result.error is not None)
        name = cli_args.printable(result.name, sys.stdout.encoding)
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


# ------------------------------------------------------------------ explain


def cmd_explain(args) -> int:
    from .errors import UserError
    from .batch import read_image
    from .figures import explanation_figure, save_figure
    from .predict import Predictor
    from .preprocess import to_mnist

    predictor = Predictor.from_path(args.model)
    x = to_mnist(read_image(Path(args.image)))
    if x is None:
        raise UserError(f"{args.image}: no ink found, nothing to explain")
    e = predictor.explain(x, args.method)
    save_figure(explanation_figure(e, x), args.out)
    print(e.sentence)
    print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------ convert


def cmd_convert(args) -> int:
    from .convert import ARCHS, convert

    report = convert(args.file, args.out or args.file.with_suffix(".safetensors"), args.arch)
    out = report["out"]
    print(f"{args.file}: {ARCHS[args.arch]}, {report['parameters']:,} parameters")
    print(f"wrote {out}; reloaded, it gives the same logits (max |diff| {report['max_abs_logit_diff']:.1e})")
    print(f"use it: mnist-cnn evaluate {out}  |  mnist-cnn predict --model {out} my_digit.jpg")
    return 0


# ------------------------------------------------------------------- parser

COMMANDS = ("data", "train", "finetune", "train-reader", "samples", "evaluate", "runs", "compare", "export", "serve", "predict",
            "explain", "convert")


def build_parser():
    """cli_args' parser, each subcommand bound to its function here (`cmd_<name>`, looked up when it runs)."""
    parser = cli_args.build_parser()
    for name, sub in cli_args.subcommands(parser).items():
        assert name in COMMANDS, name
        sub.set_defaults(func=lambda args, name=name: globals()[f"cmd_{name.replace('-', '_')}"](args))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import UserError

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
        print("interrupted; the last checkpoint is kept (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
