"""Where a training step's time goes: augmentation, forward, backward, optimizer and EMA, by torch.profiler.

The step below is `training.train_one_epoch`'s, piece for piece (the same helpers, in the
same order), with each piece inside a `record_function` so that the profiler can add up
its CPU time. Prints one table per recipe: each piece's milliseconds per step and share.
Timings on a shared machine are only good as shares and ratios within one run.

    python benchmarks/step_profile.py --recipes fast,fastest --steps 30
    python benchmarks/step_profile.py --recipes default --precision bf16 --threads 1
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from mnist_cnn import data, precision, training
from mnist_cnn.augment import apply_augmentation, draw_augmentation, to_float
from mnist_cnn.recipes import get_config, normalization

PARTS = ("augmentation", "forward", "backward", "optimizer", "ema")


def profile_steps(cfg, mnist, device, steps: int, warmup: int = 5) -> dict[str, float]:
    """{part: milliseconds per step} over `steps` profiled steps (after `warmup` unprofiled ones)."""
    model = training.build(cfg, device)
    net = torch.compile(model) if cfg.compile else model
    optimizer = training.make_optimizer(model, cfg)
    ema = training.ema_pairs(training.copy.deepcopy(model).eval(), model) if cfg.ema_decay else None
    prec = precision.resolve(cfg.precision, device)
    scaler = prec.scaler(device)
    mean, std = normalization(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()

    def step(i):
        idx = torch.randint(len(mnist.train_x), (cfg.batch_size,), generator=generator).to(device)
        with record_function("augmentation"):
            x = apply_augmentation(to_float(mnist.train_x[idx], mean, std),
                                   _to(draw_augmentation(len(idx), generator, cfg), device), cfg)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        y = mnist.train_y[idx]
        optimizer.zero_grad(set_to_none=True)
        with record_function("forward"), prec.autocast(device):
            loss = F.cross_entropy(net(x), y, label_smoothing=cfg.label_smoothing)
        with record_function("backward"):
            scaler.scale(loss).backward()
        with record_function("optimizer"):
            scaler.step(optimizer)
            scaler.update()
        if ema is not None:
            with record_function("ema"):
                training.update_ema(ema, cfg.ema_decay, i)

    for i in range(warmup):
        step(i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(warmup + i)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    totals = {e.key: e.cpu_time_total / 1000 / steps for e in prof.key_averages() if e.key in PARTS}
    return {part: totals.get(part, 0.0) for part in PARTS}


def _to(params, device):
    return None if params is None else params.to(device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="fast", help="comma-separated recipe names")
    parser.add_argument("--steps", type=int, default=30, help="profiled steps per recipe (after 5 warm-up ones)")
    parser.add_argument("--precision", default=None, help="override the recipes' precision (auto|fp32|bf16|fp16)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compiled in warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    mnist = data.load_mnist(args.data_dir, val_size=0, device=device)
    print(f"{precision.cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {device}")
    for name in args.recipes.split(","):
        cfg = get_config(name, precision=args.precision, compile=args.compile or None)
        ms = profile_steps(cfg, mnist, device, args.steps)
        total = sum(ms.values())
        chosen = precision.resolve(cfg.precision, device).name
        print(f"\n{name} (batch {cfg.batch_size}, {chosen}{', compiled' if cfg.compile else ''}): "
              f"{total:.1f} ms per step")
        print("| part | ms / step | share |\n|---|---:|---:|")
        for part, t in ms.items():
            print(f"| {part} | {t:.2f} | {100 * t / total:.0f}% |")


if __name__ == "__main__":
    main()
