"""Time-to-accuracy: the seed notebook, the PyTorch example and our recipes, in one process.

Prints the CPU's model and flags, then one table: precision, parameters, epochs, images
seen, training wall time, the achieved GFLOP/s, test accuracy (mean over seeds), time to
reach 99.0% test accuracy (scored at the end of each epoch, with the clock paused while
scoring), and each recipe's time as a ratio of the seed recipe's. Ratios from one run are
what we quote: this machine is noisy.

GFLOP/s counts one training step's floating-point operations (forward and backward, by
`torch.utils.flop_counter`; a multiply-add is 2), times the images seen, over the wall time.
`NAME@PRECISION` runs a recipe at a precision (`fast@fp32`); a plain NAME runs its own
(auto). Two items that come to the same recipe at the same precision share their runs (on a
CPU without fast bf16, `fast` and `fast@fp32`). Ratios are to the first seed row: the seed recipe
is fp32 whatever the CPU, the notebook's own arithmetic, so bf16 on a CPU with AMX speeds up our
recipes and not the yardstick (`seed@bf16` shows what it would do for the notebook). With
`--compile`, the first step (which compiles) is timed apart and left out of the wall time.

    python benchmarks/time_to_accuracy.py --quick            # a few minutes: timed steps, extrapolated
    python benchmarks/time_to_accuracy.py                    # everything, for real (about an hour on 2 cores)
    python benchmarks/time_to_accuracy.py --recipes seed,fastest:5,fast:5 --profile

With `--ensemble best` (the default), the K seeds of `best:K` are also scored together,
probabilities averaged: exactly what `mnist-cnn train --recipe best --ensemble K` trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mnist_cnn import data, models, precision, training
from mnist_cnn.evaluation import evaluate
from mnist_cnn.recipes import get_config, normalization

TARGET = 99.0  # percent test accuracy for the time-to-accuracy column
QUICK_STEPS = 40  # timed steps per recipe in --quick mode (after 5 warm-up steps)
COMPILE_PROBE = 10  # with --compile: steps 1..10 give the usual step time that the compiling step is set against
DEFAULT_RECIPES = "seed,reference,fastest:5,fastest@fp32:5,fast:5,fast@fp32:5,default:3,default@fp32:3,best:3"


def train_flops_per_image(cfg, device, batch: int = 16) -> float:
    """Floating-point operations of one training step (forward and backward), per image."""
    model = training.build(cfg, device).train()
    x = torch.zeros(batch, 1, models.IMAGE_SIZE, models.IMAGE_SIZE, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long, device=device)).backward()
    return counter.get_total_flops() / batch


def images_seen(cfg, n_train: int) -> int:
    return max(1, n_train // cfg.batch_size) * cfg.batch_size * cfg.epochs


def run_full(cfg, mnist, device) -> dict:
    """Train for real; score the test set after every epoch, pausing the clock while scoring."""
    elapsed, reached, compile_s, ends = [0.0], [None], [None], []
    mean, std = normalization(cfg)

    def on_step(row):  # with --compile, the first steps' ends time the compiling step apart
        if cfg.compile and row["step"] <= COMPILE_PROBE:
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    def on_epoch(row, model):
        if cfg.compile and compile_s[0] is None:  # the first epoch's time, less its steps at the usual pace
            step = statistics.median(b - a for a, b in zip(ends, ends[1:]))
            compile_s[0] = max(0.0, row["seconds"] - step * max(1, len(mnist.train_x) // cfg.batch_size))
            row["seconds"] -= compile_s[0]
        elapsed[0] += row["seconds"]
        final = row["epoch"] == cfg.epochs  # test-time augmentation is for the final answer only
        acc = evaluate(model, mnist.test_x, mnist.test_y, mean, std, tta=cfg.tta and final,
                       channels_last=cfg.channels_last).accuracy
        if reached[0] is None and acc >= TARGET:
            reached[0] = elapsed[0]
        row["test_acc"] = acc

    model, history = training.train(cfg, mnist, device, on_step=on_step, on_epoch=on_epoch)
    return {"seconds": elapsed[0], "accuracy": history.epochs[-1]["test_acc"], "to_target": reached[0],
            "params": models.count_parameters(model), "model": model, "compile_seconds": compile_s[0]}


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

    net = torch.compile(model) if cfg.compile else model
    start = time.perf_counter()
    training.train_one_epoch(net, optimizer, subset, cfg, 0, 0, steps_per_epoch * cfg.epochs, steps_per_epoch,
                             on_step=on_step)
    per_step = (times[-1] - times[4]) / (len(times) - 5)
    return {"seconds": per_step * steps_per_epoch * cfg.epochs, "accuracy": None, "to_target": None,
            "params": models.count_parameters(model),
            "compile_seconds": max(0.0, times[0] - start - per_step) if cfg.compile else None}


def machine_line(device) -> str:
    """The CPU's model and the flags that decide its precision (and the GPU's name, on CUDA)."""
    flags = precision.cpu_flags()
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in precision.REPORTED_FLAGS)
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if torch.device(device).type == "cuda" else ""
    return (f"CPU {precision.cpu_model()} ({shown}){gpu}; {platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, device {device}")


def run_item(item: str, args, device, done: dict) -> tuple[str, object, list[dict]]:
    """One NAME[@PRECISION][:K] item: K seeds of the recipe at that precision."""
    spec, _, seeds = item.partition(":")
    name, _, asked = spec.partition("@")
    chosen = precision.resolve(asked or "auto", device).name
    if (name, chosen) in done:  # this recipe already ran at the precision that this item resolves to
        label, cfg, results = done[(name, chosen)]
        print(f"  {spec}: the same runs as {label} (both {chosen})", flush=True)
        return f"{spec} (= {label})", cfg, results
    results = []
    for seed in range(int(seeds or 1) if not args.quick else 1):
        cfg = get_config(name, seed=seed, precision=asked or None, compile=args.compile or None)
        mnist = data.load_mnist(args.data_dir, val_size=cfg.val_size, device=device)
        result = (run_quick if args.quick else run_full)(cfg, mnist, device)
        result.update(precision=chosen, images=images_seen(cfg, len(mnist.train_x)))
        test = "not scored (quick)" if result["accuracy"] is None else f"{result['accuracy']:.2f}%"
        compiled = f" (+{result['compile_seconds']:.1f} s compiling)" if result.get("compile_seconds") else ""
        print(f"  {spec} seed {seed}: {result['seconds']:.1f} s{compiled}, {chosen}, test {test}", flush=True)
        results.append(result)
    done[(name, chosen)] = (spec, cfg, results)
    return spec, cfg, results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time a few steps per recipe and extrapolate")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help="comma-separated; NAME:K runs K seeds (accuracy is their mean); NAME@fp32 sets "
                             "the precision (default: the recipe's, auto)")
    parser.add_argument("--ensemble", default="best",
                        help="comma-separated recipes whose K seeds are also scored as one ensemble")
    parser.add_argument("--compile", action="store_true", help="torch.compile every recipe's model")
    parser.add_argument("--profile", action="store_true",
                        help="also print where each recipe's training step spends its time (step_profile.py)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    print(machine_line(device), flush=True)
    rows, done = [], {}
    for item in args.recipes.split(","):
        name, cfg, results = run_item(item, args, device, done)
        rows.append((name, cfg, results))
        if name in args.ensemble.split(",") and len(results) > 1 and not args.quick:
            mnist = data.load_mnist(args.data_dir, val_size=cfg.val_size, device=device)
            result = ensemble_row(cfg, results, mnist, device)
            result.update(precision=results[0]["precision"], images=sum(r["images"] for r in results))
            print(f"  {name} ensemble of {len(results)}: test {result['accuracy']:.2f}%", flush=True)
            rows.append((f"{name} ensemble of {len(results)}", cfg, [result]))

    seed_seconds = next((statistics.mean(r["seconds"] for r in res) for n, _, res in rows
                         if n.partition("@")[0] == "seed"), None)
    mode = "quick (extrapolated)" if args.quick else "full"
    print(f"\n{mode} run. {machine_line(device)}\n")
    print("| recipe | precision | params | epochs | images seen | wall time (s) | GFLOP/s | test acc (%) "
          "| time to 99.0% (s) | time / seed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    flops = {}
    for name, cfg, res in rows:
        seconds = statistics.mean(r["seconds"] for r in res)
        accs = [r["accuracy"] for r in res if r["accuracy"] is not None]
        if len(accs) > 1:  # three decimals: a mean of 99.695 must not print as 99.70
            acc = f"{statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f} (n={len(accs)})"
        else:
            acc = f"{accs[0]:.2f}" if accs else "–"
        reached = [r["to_target"] for r in res if r["to_target"] is not None]
        to_target = f"{statistics.mean(reached):.1f}" if reached and len(reached) == len(res) else "–"
        ratio = f"{seconds / seed_seconds:.4f}" if seed_seconds else "–"
        images = res[0]["images"]
        key = (cfg.model, str(cfg.model_args), cfg.ensemble)
        flops[key] = flops.get(key) or train_flops_per_image(dataclasses.replace(cfg, ensemble=1), device)
        gflops = flops[key] * images / seconds / 1e9  # an ensemble's row: its members' images over their time
        print(f"| {name} | {res[0]['precision']} | {res[0]['params']:,} | {cfg.epochs} | {images:,} | {seconds:.1f} "
              f"| {gflops:.0f} | {acc} | {to_target} | {ratio} |")
    if args.profile:
        from step_profile import PARTS, profile_steps  # benchmarks/, beside this script

        mnist = data.load_mnist(args.data_dir, val_size=0, device=device)
        print("\nwhere a step's time goes (torch.profiler, ms per step):\n")
        print("| recipe | " + " | ".join(PARTS) + " | total |\n|---|" + "---:|" * (len(PARTS) + 1))
        for name, cfg, _ in rows:
            if "ensemble" in name or "=" in name:
                continue
            ms = profile_steps(cfg, mnist, device, steps=20)
            print(f"| {name} | " + " | ".join(f"{ms[p]:.1f}" for p in PARTS) + f" | {sum(ms.values()):.1f} |")


if __name__ == "__main__":
    main()
