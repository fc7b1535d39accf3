"""Fine-tuning on writers the model has never seen: how many labelled digits it takes, and what MNIST keeps.

The writers are scikit-learn's `load_digits` (UCI optical digits: 1,797 digits by 43 people, none
in MNIST), rendered as a person's scans are: dark ink on light paper, enlarged with smoothing and
a white margin, then brought into MNIST's form by `preprocess.to_mnist`, as `mnist-cnn predict`
would. For each seed they are split by sample, stratified: 200 for tuning (the 20, 50 and 100 are
nested in it) and the other 1,597 held out. Each fine-tune is `mnist_cnn.finetune` on the shipped
model, with `holdout=0` (all N samples train) and the held-out UCI digits measured before and after.
Then one writer alone: the digits of one handwriting font from a Debian fonts-* package, drawn
at random sizes, angles, places and stroke weights; tuned on 5 of each digit, measured on 25 others.

    python benchmarks/finetune.py                       # the README's table (about 10 min on 2 cores)
    python benchmarks/finetune.py --sizes 200 --seeds 0 --font ""

Prints markdown tables, with the CPU and the date.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import mnist_cnn
from mnist_cnn import precision, preprocess
from mnist_cnn.finetuning import stratified_split

POOL = 200  # UCI digits set aside for tuning per seed; the rest are held out
FONT = "/usr/share/fonts/truetype/femkeklaver/femkeklaver.ttf"  # fonts-femkeklaver: the shipped model reads ~60%


def render_uci(img8: np.ndarray, side: int = 128, margin: int = 32) -> Image.Image:
    """An 8x8, 16-level UCI digit (ink high) as a scan: dark on light, smoothed up to `side` px, with a margin."""
    ink = cv2.resize(img8.astype(np.float32) / 16, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    page = np.ones((side + 2 * margin,) * 2, np.float32)
    page[margin:margin + side, margin:margin + side] = 1 - ink
    return Image.fromarray((page * 255).round().astype(np.uint8), "L")


def uci_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    xs = [preprocess.to_mnist(render_uci(img)) for img in d.images]
    assert all(x is not None for x in xs)
    return torch.stack(xs), torch.from_numpy(d.target).long()


def font_digits(font: str, per_digit: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One font's digits drawn `per_digit` times each: size 90-150 px, +-8 degrees, moved, thinner or bolder."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for digit in range(10):
        for _ in range(per_digit):
            img = Image.new("L", (240, 240), 255)
            ImageDraw.Draw(img).text((120 + int(rng.integers(-20, 21)), 120 + int(rng.integers(-20, 21))), str(digit),
                                     font=ImageFont.truetype(font, int(rng.integers(90, 151))), fill=0, anchor="mm")
            img = img.rotate(float(rng.uniform(-8, 8)), resample=Image.BICUBIC, fillcolor=255)
            weight = int(rng.integers(-1, 3))  # erode (thinner) once, leave, or dilate (bolder) once or twice
            ink = 255 - np.asarray(img)
            kernel = np.ones((3, 3), np.uint8)
            if weight:
                ink = cv2.dilate(ink, kernel, iterations=weight) if weight > 0 else cv2.erode(ink, kernel)
            x = preprocess.to_mnist(Image.fromarray(255 - ink))
            if x is not None:
                xs.append(x)
                ys.append(digit)
    return torch.stack(xs), torch.tensor(ys)


def nested_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A stratified subset of `n` indices of y (`stratified_split` keeps the rest)."""
    if n >= len(y):
        return torch.arange(len(y))
    _, held = stratified_split(y, n / len(y), torch.Generator().manual_seed(seed))
    return held


def finetune(x, y, ex, ey, steps: int, out: Path, seed: int) -> dict:
    t0 = time.perf_counter()
    run = mnist_cnn.finetune(None, (x, y), out=out, holdout=0.0, eval_samples=(ex, ey), device="cpu", steps=steps,
                             seed=seed)
    m = run.metrics
    return {"before": m["before"]["extra"], "after": m["after"]["extra"], "mnist_before": m["before"]["mnist_test"],
            "mnist_after": m["after"]["mnist_test"], "tune_s": m["train_seconds"], "wall_s": time.perf_counter() - t0}


def spread(values: list[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """The mean, and the range when the seeds differ: "99.29% (99.12 to 99.44)"."""
    mean, low, high = (fmt.format(v) for v in (statistics.fmean(values), min(values), max(values)))
    return mean + unit + ("" if low == high else f" ({low} to {high})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 100, 200], help="samples to tune on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="splits (and fine-tune seeds)")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    parser.add_argument("--font", default=FONT, help="the single writer's font file ('' to skip)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = precision.cpu_model()
    x, y = uci_digits()
    results: dict[int, list[dict]] = {n: [] for n in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rest, pool = stratified_split(y, POOL / len(y), torch.Generator().manual_seed(seed))
            for n in args.sizes:
                tune = pool[nested_subset(y[pool], n, seed)]
                r = finetune(x[tune], y[tune], x[rest], y[rest], args.steps, Path(tmp) / f"uci-{seed}-{n}", seed)
                results[n].append(r)
                print(f"seed {seed}, {n:>3} samples: UCI held-out {r['before']:.2f}% -> {r['after']:.2f}%, MNIST "
                      f"{r['mnist_before']:.2f}% -> {r['mnist_after']:.2f}%, {r['tune_s']:.1f} s tuning, "
                      f"{r['wall_s']:.1f} s in all", flush=True)
        writer = None
        if args.font:
            fx, fy = font_digits(args.font, 30)
            held, tune = stratified_split(fy, 5 / 30, torch.Generator().manual_seed(0))
            writer = finetune(fx[tune], fy[tune], fx[held], fy[held], args.steps, Path(tmp) / "font", 0)
            writer.update(n=len(tune), held=len(held))
    print(f"\nUCI digits (43 writers, none in MNIST), {len(y) - POOL} held out per split, seeds {args.seeds}; "
          f"mean (min-max). {cpu}, {args.threads} threads, torch {torch.__version__}, "
          f"{datetime.date.today().isoformat()}, {args.steps} steps\n")
    print("| samples | UCI held-out before | after | MNIST test before | after | change (points) | tuning "
          "| whole job |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, rs in results.items():
        change = [r["mnist_after"] - r["mnist_before"] for r in rs]
        print(f"| {n} | {spread([r['before'] for r in rs], unit='%')} | {spread([r['after'] for r in rs], unit='%')} "
              f"| {spread([r['mnist_before'] for r in rs], unit='%')} "
              f"| {spread([r['mnist_after'] for r in rs], unit='%')} | {spread(change, '{:+.2f}')} "
              f"| {spread([r['tune_s'] for r in rs], '{:.0f}', ' s')} "
              f"| {spread([r['wall_s'] for r in rs], '{:.0f}', ' s')} |")
    if writer:
        print(f"\nOne writer: {Path(args.font).name}, {writer['n']} samples to tune, {writer['held']} others "
              "held out\n")
        print("| | before | after |\n|---|---:|---:|")
        print(f"| held-out digits of the font | {writer['before']:.2f}% | {writer['after']:.2f}% |")
        print(f"| MNIST test | {writer['mnist_before']:.2f}% | {writer['mnist_after']:.2f}% |")
        print(f"| time | | {writer['tune_s']:.1f} s tuning, {writer['wall_s']:.0f} s in all |")


if __name__ == "__main__":
    main()
