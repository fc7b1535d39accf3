"""DDP throughput: training images per second with 1 and 2 torchrun processes (issue 7's benchmark).

For each configuration this script launches itself under `torchrun`; every rank
trains `--steps` timed steps (after `--warmup` untimed ones) of a recipe on
in-memory MNIST with the real training loop, and rank 0 reports the global batch
times the steps over the slowest rank's seconds. Start-up, data loading and
evaluation are not timed: this is the steady-state cost of one optimizer step.

    python benchmarks/ddp_throughput.py                          # fast recipe: 1 proc x 2 threads, 1 x 1, 2 x 1
    python benchmarks/ddp_throughput.py --recipe default --configs 1x2,2x1 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from mnist_cnn import data, distributed, training
from mnist_cnn.distributed import pick_device
from mnist_cnn.recipes import get_config


def worker(args) -> None:
    """One rank: time the steps, then rank 0 prints a JSON line."""
    torch.set_num_threads(args.threads)
    distributed.setup(args.device)
    device = pick_device(args.device)
    cfg = get_config(args.recipe, val_size=0, epochs=1)
    n = cfg.batch_size * (args.warmup + args.steps)
    mnist = data.load_mnist(args.data_dir, val_size=0, limit_train=n, device=device)
    model = training.build(cfg, device)
    net = distributed.wrap(model)
    optimizer = training.make_optimizer(model, cfg)
    stamps = []

    def on_step(row):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    steps = args.warmup + args.steps
    training.train_one_epoch(net, optimizer, mnist, cfg, 0, 0, steps, steps, on_step=on_step)
    seconds = torch.tensor(stamps[-1] - stamps[args.warmup - 1], dtype=torch.float64)
    if distributed.is_distributed():
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the job is as fast as its slowest rank
    if distributed.is_main():
        timed = len(stamps) - args.warmup
        print(json.dumps({"procs": distributed.world_size(), "threads": args.threads, "recipe": cfg.recipe,
                          "batch": cfg.batch_size, "steps": timed, "seconds": float(seconds),
                          "images_per_s": timed * cfg.batch_size / float(seconds)}), flush=True)
    distributed.teardown()


def launch(args, procs: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           __file__, "--worker", "--threads", str(threads), "--recipe", args.recipe, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", str(args.data_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: {procs} x {threads} failed:\n{out.stderr[-3000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--configs", default="1x2,1x1,2x1", help="PROCSxTHREADS, comma-separated")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration; the best is kept")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"recipe {args.recipe}, {args.steps} timed steps, best of {args.repeats}")
    print(f"{'procs x threads':>16} {'images/s':>10} {'s/step':>8} {'vs first':>9}")
    base = None
    for config in args.configs.split(","):
        procs, threads = map(int, config.split("x"))
        best = max((launch(args, procs, threads) for _ in range(args.repeats)), key=lambda r: r["images_per_s"])
        base = base or best["images_per_s"]
        print(f"{config:>16} {best['images_per_s']:>10.0f} {best['seconds'] / best['steps']:>8.3f} "
              f"{best['images_per_s'] / base:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
