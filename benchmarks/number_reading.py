"""Written numbers read by `predict --multi`: the sequence reader against the segmentation route.

Numbers of 2-10 MNIST **test** digits are composed on a page (scaled 3-6x, grey paper, blur, noise, JPEG
or a transparent canvas, as benchmarks/roundtrip.py renders them) in three sets: digits apart,
half of the neighbours touching, and every neighbour overlapping by up to a fifth of the narrower
digit's width. Both routes read the same images; the table gives exact-number accuracy, digit
accuracy (1 - edit distance / length), how often the answer is `unsure`, how often it is confidently
wrong (status ok, number wrong), and the time per number (the image already decoded).

    OMP_NUM_THREADS=1 python benchmarks/number_reading.py --per-length 40
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from PIL import Image

from roundtrip import _paper

SETS = ("apart", "half-touching", "overlapping")


def layout(digits: list[torch.Tensor], kind: str, rng: np.random.Generator):
    """MNIST digits side by side, each cropped to its ink columns, gaps as `kind` says -> (the page's ink (H, W)
    in [0, 1], its scale, each digit's ink columns (x0, x1) on the page), before paper, blur and encoding."""
    scale = rng.uniform(3, 6)
    crops = []
    for d in digits:
        cols = np.nonzero(d.numpy().max(0) > 0)[0]
        crops.append(d.numpy()[:, cols[0]:cols[-1] + 1].astype(np.float32) / 255)  # rows kept: baselines line up
    gaps = []
    for a, b in zip(crops, crops[1:]):
        if kind == "overlapping":
            gaps.append(-rng.uniform(0, 0.2) * min(a.shape[1], b.shape[1]))
        elif kind == "half-touching" and rng.random() < 0.5:
            gaps.append(-rng.uniform(0.5, 2.0))
        else:
            gaps.append(rng.uniform(1.5, 6))
    margin = 10
    w = int(sum(c.shape[1] for c in crops) + sum(gaps)) + 2 * margin + 1
    line = np.zeros((28 + 2 * margin, w), dtype=np.float32)
    x = float(margin)
    spans = []
    for i, c in enumerate(crops):
        x0 = int(round(x))
        region = line[margin:margin + 28, x0:x0 + c.shape[1]]
        np.maximum(region, c[:, :region.shape[1]], out=region)
        spans.append((x0, x0 + region.shape[1]))
        x += c.shape[1] + (gaps[i] if i < len(gaps) else 0)
    size = (round(line.shape[1] * scale), round(line.shape[0] * scale))
    page = np.asarray(Image.fromarray(line, "F").resize(size, Image.Resampling.BILINEAR)).clip(0, 1)
    sx = size[0] / line.shape[1]
    return page, scale, [(a * sx, b * sx) for a, b in spans]


def compose(digits: list[torch.Tensor], kind: str, rng: np.random.Generator, spans: list | None = None) -> bytes:
    """MNIST digits side by side on a page, each cropped to its ink columns, gaps as `kind` says; each
    digit's ink columns in image pixels are appended to `spans` when it is given."""
    page, scale, where = layout(digits, kind, rng)
    if spans is not None:
        spans += where
    return _paper(page, scale, rng, canvas=rng.random() < 0.2)


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def run(predictors: dict, x, y, per_length: int, lengths, seed: int = 0) -> dict:
    """{(route, set, length): [(exact, digit accuracy, unsure, confident wrong, seconds, seconds after the ink)]}."""
    from mnist_cnn.images import decode
    from mnist_cnn.segment import number_page

    results = {}
    for s, kind in enumerate(SETS):
        rng = np.random.default_rng([seed, s])
        for n in lengths:
            for _ in range(per_length):
                idx = rng.choice(len(x), size=n, replace=False)
                truth = "".join(str(int(y[i])) for i in idx)
                img = decode(compose([x[i] for i in idx], kind, rng))
                t0 = time.perf_counter()
                number_page(img)  # finding the ink, which both routes do first
                ink_s = time.perf_counter() - t0
                for route, predictor in predictors.items():
                    t0 = time.perf_counter()
                    got = predictor.predict_number(img)
                    dt = time.perf_counter() - t0
                    text = "".join(str(p.topk[0][0]) for p in got.digits)  # best guesses, for digit accuracy
                    results.setdefault((route, kind, n), []).append((
                        got.text == truth, 1 - edit_distance(text, truth) / n, got.status == "unsure",
                        got.status == "ok" and got.text != truth, dt, dt - ink_s))
    return results


def table(results: dict, routes, lengths) -> str:
    def cell(rows):
        a = np.array(rows, dtype=float)
        return (f"{100 * a[:, 0].mean():.1f}% / {100 * a[:, 1].mean():.1f}% / {100 * a[:, 2].mean():.1f}% / "
                f"{100 * a[:, 3].mean():.1f}%")
    lines = ["| set | digits | numbers | " + " | ".join(f"{r}: exact / digits / unsure / sure but wrong" for r in routes)
             + " |", "|---|---|---:|" + "---:|" * len(routes)]
    for kind in SETS:
        every = {r: [v for n in lengths for v in results[(r, kind, n)]] for r in routes}
        lines.append(f"| {kind} | all | {len(every[routes[0]])} | " + " | ".join(cell(every[r]) for r in routes) + " |")
    for n in lengths:
        rows = {r: [v for kind in SETS for v in results[(r, kind, n)]] for r in routes}
        lines.append(f"| all three | {n} | {len(rows[routes[0]])} | " + " | ".join(cell(rows[r]) for r in routes) + " |")
    for col, what in ((4, "all of predict_number"), (5, "reading, after finding the ink")):
        times = {r: np.array([v[col] for k, vs in results.items() if k[0] == r for v in vs]) for r in routes}
        lines.append(f"| ms per number, {what}: mean, 95th percentile | | | " + " | ".join(
            f"{1000 * t.mean():.1f}, {1000 * np.percentile(t, 95):.1f}" for t in times.values()) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from mnist_cnn import data
    from mnist_cnn.predict import Predictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-length", type=int, default=40, help="numbers of each length in each set")
    p.add_argument("--lengths", default="2-10", help="digits per number, e.g. 2-10 or 4,10")
    p.add_argument("--model", default=None, help="digit classifier checkpoint (default: the shipped one)")
    p.add_argument("--reader", default="shipped", help="number reader checkpoint (default: the shipped one)")
    p.add_argument("--routes", default="segment,reader", help="which routes to run, of segment and reader")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # OpenCV runs a pool of one thread per core otherwise, whatever OMP_NUM_THREADS says
    lo, _, hi = args.lengths.partition("-")
    lengths = list(range(int(lo), int(hi) + 1)) if hi else [int(v) for v in args.lengths.split(",")]
    x, y = data.read_split(data.acquire(), "test")
    routes = args.routes.split(",")
    predictors = {r: Predictor.from_path(args.model, reader="segment" if r == "segment" else args.reader)
                  for r in routes}
    results = run(predictors, x, y, args.per_length, lengths, args.seed)
    print(table(results, routes, lengths))


if __name__ == "__main__":
    main()
