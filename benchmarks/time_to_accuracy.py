"""Time-to-accuracy: the seed notebook, the PyTorch example and our recipes, in one process.

Prints one table: parameters, epochs, training wall time, test accuracy (mean over
seeds), time to reach 99.0% test accuracy (scored at the end of each epoch, with the
clock paused while scoring), and each recipe's time as a ratio of the seed recipe's.
Ratios from one run are what we quote: this machine is noisy.

    python benchmarks/time_to_accuracy.py --quick            # a few minutes: timed steps, extrapolated
    python benchmarks/time_to_accuracy.py                    # everything, for real (about an hour on 2 cores)
    python benchmarks/time_to_accuracy.py --recipes fast:5,default:3

With `--ensemble best` (the default), the K seeds of `best:K` are also scored together,
probabilities averaged: exactly what `mnist-cnn train --recipe best --ensemble K` trains.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mnist_cnn import data, models, training
from mnist_cnn.evaluation import evaluate
from mnist_cnn.recipes import get_config, normalization

TARGET = 99.0  # percent test accuracy for the time-to-accuracy column
QUICK_STEPS = 40  # timed steps per recipe in --quick mode (after 5 warm-up steps)


def run_full(cfg, mnist, device) -> dict:
    """Train for real; score the test set after every epoch, pausing the clock while scoring."""
    elapsed, reached = [0.0], [None]
    mean, std = normalization(cfg)

    def on_epoch(row, model):
        elapsed[0] += row["seconds"]
        final = row["epoch"] == cfg.epochs  # test-time augmentation is for the final answer only
        acc = evaluate(model, mnist.test_x, mnist.test_y, mean, std, tta=cfg.tta and final,
                       channels_last=cfg.channels_last).accuracy
        if reached[0] is None and acc >= TARGET:
            reached[0] = elapsed[0]
        row["test_acc"] = acc

    model, history = training.train(cfg, mnist, device, on_epoch=on_epoch)
    return {"seconds": elapsed[0], "accuracy": history.epochs[-1]["test_acc"], "to_target": reached[0],
            "params": models.count_parameters(model), "model": model}


def ensemble_row(cfg, results, mnist, device) -> dict:
    """The seeds' final models as one ensemble: its time is theirs summed."""
    ensemble = training.ensemble_of(cfg, [r["model"] for r in results], device)
    mean, std = normalization(cfg)
    acc = evaluate(ensemble, mnist.test_x, mnist.test_y, mean, std, tta=cfg.tta,
                   channels_last=cfg.channels_last).accuracy
    return {"seconds": sum(r["seconds"] for r in results), "accuracy": acc, "to_target": None,
            "params": models.count_parameters(ensemble)}


def run_quick(cfg, mnist, device) -> dict:
    """Time QUICK_STEPS training steps and extrapolate to the recipe's full length."""
    steps_per_epoch = max(1, len(mnist.train_x) // cfg.batch_size)
    model = training.build(cfg, device)
    optimizer = training.make_optimizer(model, cfg)
    subset = data.MNIST(mnist.train_x[: cfg.batch_size * (QUICK_STEPS + 5)],
                        mnist.train_y[: cfg.batch_size * (QUICK_STEPS + 5)],
                        mnist.val_x[:0], mnist.val_y[:0], mnist.test_x, mnist.test_y)
    times = []

    def on_step(row):  # the loop no longer waits for the device each step: wait here, to time the device's work
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    training.train_one_epoch(model, optimizer, subset, cfg, 0, 0, steps_per_epoch * cfg.epochs, steps_per_epoch,
                             on_step=on_step)
    per_step = (times[-1] - times[4]) / (len(times) - 5)
    return {"seconds": per_step * steps_per_epoch * cfg.epochs, "accuracy": None, "to_target": None,
            "params": models.count_parameters(model)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time a few steps per recipe and extrapolate")
    parser.add_argument("--recipes", default="seed,reference,fast:5,default:3,best:3",
                        help="comma-separated; NAME:K runs K seeds (accuracy is their mean)")
    parser.add_argument("--ensemble", default="best",
                        help="comma-separated recipes whose K seeds are also scored as one ensemble")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    rows = []
    for item in args.recipes.split(","):
        name, _, seeds = item.partition(":")
        results = []
        for seed in range(int(seeds or 1) if not args.quick else 1):
            cfg = get_config(name, seed=seed)
            mnist = data.load_mnist(args.data_dir, val_size=cfg.val_size, device=device)
            result = (run_quick if args.quick else run_full)(cfg, mnist, device)
            test = "not scored (quick)" if result["accuracy"] is None else f"{result['accuracy']:.2f}%"
            print(f"  {name} seed {seed}: {result['seconds']:.1f} s, test {test}", flush=True)
            results.append(result)
        rows.append((name, cfg, results))
        if name in args.ensemble.split(",") and len(results) > 1 and not args.quick:
            result = ensemble_row(cfg, results, mnist, device)
            print(f"  {name} ensemble of {len(results)}: test {result['accuracy']:.2f}%", flush=True)
            rows.append((f"{name} ensemble of {len(results)}", cfg, [result]))

    seed_seconds = next((statistics.mean(r["seconds"] for r in res) for n, _, res in rows if n == "seed"), None)
    mode = "quick (extrapolated)" if args.quick else "full"
    print(f"\n{mode} run on {platform.machine()} with {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}\n")
    print("| recipe | params | epochs | wall time (s) | test acc (%) | time to 99.0% (s) | time / seed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, cfg, res in rows:
        seconds = statistics.mean(r["seconds"] for r in res)
        accs = [r["accuracy"] for r in res if r["accuracy"] is not None]
        if len(accs) > 1:  # three decimals: a mean of 99.695 must not print as 99.70
            acc = f"{statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f} (n={len(accs)})"
        else:
            acc = f"{accs[0]:.2f}" if accs else "–"
        reached = [r["to_target"] for r in res if r["to_target"] is not None]
        to_target = f"{statistics.mean(reached):.1f}" if reached and len(reached) == len(res) else "–"
        ratio = f"{seconds / seed_seconds:.3f}" if seed_seconds else "–"
        print(f"| {name} | {res[0]['params']:,} | {cfg.epochs} | {seconds:.1f} | {acc} | {to_target} | {ratio} |")


if __name__ == "__main__":
    main()
