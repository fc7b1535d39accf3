"""The handwriting wing of the command line: `finetune` and `samples` (a person's own digits).

`mnist-cnn` binds these by name like its other commands (cli.py); like them, each imports the
stages it uses when it runs, so `--help` never waits for torch.

    mnist-cnn samples stats
    mnist-cnn finetune --samples ~/.local/share/mnist-cnn/samples.db
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def load_samples(source: Path):
    """A person's labelled digits (a store or a folder), saying what a folder held that could not be read."""
    from .imagefolder import load_labelled

    samples = load_labelled(source)
    for name, why in samples.failed:
        print(f"{source}/{name}: skipped: {why}", file=sys.stderr)
    return samples


def cmd_finetune(args) -> int:
    import dataclasses

    from . import checkpoint
    from .distributed import pick_device
    from .finetuning import finetune_run
    from .recipes import FinetuneConfig
    from .runs import new_run_dir, resolve

    cfg = FinetuneConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, person_share=args.person_share,
                         holdout=args.holdout, seed=args.seed, precision=args.precision)
    samples = load_samples(args.samples)
    base_path = resolve(args.model) if args.model else checkpoint.default_model_path()
    base = checkpoint.load_model(base_path)
    device = pick_device(args.device)
    run_dir = Path(args.out or new_run_dir(cfg.recipe))
    if not args.json:
        print(f"fine-tuning {base[1]['arch']} from {base_path} on {len(samples)} samples of {args.samples} "
              f"({cfg.holdout:.0%} held out, stratified), {cfg.steps} steps on {device} -> {run_dir}", flush=True)
    m = finetune_run(base, samples, cfg, run_dir, device, args.data_dir, base_name=str(base_path))
    if args.json:
        print(json.dumps({"run": str(run_dir), "config": dataclasses.asdict(cfg), **m}, indent=2))
        return 0
    print(finetune_table(m))
    t = m["temperature"]
    print(f"tuned on {m['samples']['count']} samples in {m['train_seconds']:.1f} s; temperature "
          f"{t['before']:.3f} -> {t['after']:.3f} (re-fitted on {t['fitted_on']} MNIST validation images)")
    print(f"outputs in {run_dir}/; use it: mnist-cnn serve --model {run_dir}  (or --model latest)")
    return 0


def finetune_table(m: dict) -> str:
    """Before and after, on the held-out samples and the MNIST test set, for people."""
    def pct(v):
        return "-" if v is None else f"{v:.2f}%"

    rows = [[f"held-out samples ({m['held_out']})", pct(m["before"]["held_out"]), pct(m["after"]["held_out"])],
            [f"MNIST test ({m['test_images']}, {m['test_forward']})", pct(m["before"]["mnist_test"]),
             pct(m["after"]["mnist_test"])]]
    from .runs import text_table

    table = text_table(["accuracy", "before", "after"], rows)
    return table + ("\n(no samples held out: pass --holdout 0.2 to measure)" if not m["held_out"] else "")


# ------------------------------------------------------------------ samples


def cmd_samples(args) -> int:
    from .samples import Store, default_path

    path = args.db or default_path()
    with Store(path, create=args.samples_command == "import") as store:
        try:
            return SAMPLES_ACTIONS[args.samples_command](args, store)
        except BrokenPipeError:  # `mnist-cnn samples list | head`: the reader left; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


def samples_list(args, store) -> int:
    from .cli_args import printable

    rows = list(store.rows())
    if args.json:
        for r in rows:
            print(json.dumps({"id": r.id, "label": r.label, "predicted": r.predicted, "probability": r.probability,
                              "source": r.source, "name": r.name, "created": r.created}))
        return 0
    from .runs import text_table

    print(text_table(["id", "label", "model said", "source", "created", "name"], [
        [str(r.id), str(r.label), "-" if r.predicted is None else f"{r.predicted} ({r.probability:.2f})"
         + ("" if r.predicted == r.label else " wrong"), r.source, r.created,
         printable(r.name or "", sys.stdout.encoding)]
        for r in rows]) if rows else f"no samples in {store.path}")
    return 0


def samples_import(args, store) -> int:
    from .imagefolder import import_folder
    from .predict import Predictor

    report = import_folder(store, args.folder, Predictor.from_path(args.model))
    for name, why in report.failed:
        print(f"{args.folder}/{name}: not imported: {why}", file=sys.stderr)
    print(f"imported {len(report.added)} samples from {args.folder}"
          + (f", {report.duplicates} already in the store" if report.duplicates else "")
          + (f"; {len(report.failed)} could not be used (above)" if report.failed else "")
          + f"; {store.path} holds {store.count()}")
    return 1 if report.failed else 0


def samples_export(args, store) -> int:
    from .imagefolder import export_folder

    written = export_folder(store, args.folder, args.images)
    where = f"{args.folder}/{'{original,28x28}/' if args.images == 'both' else ''}<digit>/<id>.png"
    print(", ".join(f"{n} {kind} images" for kind, n in written.items()) + f" written to {where}")
    return 0


def samples_delete(args, store) -> int:
    gone = store.delete(args.ids)
    missing = sorted(set(args.ids) - set(gone))
    print(f"deleted {len(gone)} sample(s); {store.path} holds {store.count()}")
    if missing:
        print(f"no such sample: {' '.join(map(str, missing))}", file=sys.stderr)
    return 1 if missing else 0


def samples_stats(args, store) -> int:
    stats = store.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{stats['path']}: {stats['count']} samples" + (f", from {stats['first']} to {stats['last']}"
                                                         if stats["count"] else ""))
    print("per digit:  " + "  ".join(f"{d}:{n}" for d, n in stats["per_label"].items()))
    print("per source: " + ("  ".join(f"{k}:{n}" for k, n in stats["per_source"].items()) or "-"))
    print(f"the model had {stats['model_wrong']} of them wrong when they were kept")
    return 0


SAMPLES_ACTIONS = {"list": samples_list, "import": samples_import, "export": samples_export,
                   "delete": samples_delete, "stats": samples_stats}
