"""How long a phone photo takes from file to answer, on one CPU core: decode, preprocessing, network.

Photos come from benchmarks/photo_synth.py as JPEG files of 1 and 12 megapixels (a phone's
own size). A 12-megapixel JPEG is decoded at a reduced scale (Pillow's JPEG draft mode), so
it is never decoded at full size. Each figure is the median over the photos, after one
warm-up, in this process with one torch thread.

    .venv/bin/python benchmarks/photo_speed.py --n 20
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from mnist_cnn import precision

import photo_digits
import photo_synth


def time_one(raw: bytes, predictor) -> tuple[float, float, float]:
    """(decode, preprocessing, network) seconds for one encoded photo."""
    from mnist_cnn import images, preprocess

    t0 = time.perf_counter()
    img = images.decode(raw)
    t1 = time.perf_counter()
    x = preprocess.to_mnist(img)
    t2 = time.perf_counter()
    if x is not None:
        predictor.predict_arrays(x[None])
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="photos of each size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a script may: the figures are per core
    cv2.setNumThreads(1)  # OpenCV runs a pool of one thread per core otherwise, whatever OMP_NUM_THREADS says
    from mnist_cnn.predict import Predictor

    predictor = Predictor.from_path()
    sources = photo_digits.load_sources(log=lambda m: None)
    rng = np.random.default_rng(args.seed)
    print(f"CPU: {precision.cpu_model()}; torch {torch.__version__}, one thread for torch and for OpenCV")
    print("| photo | file | decode (ms) | preprocessing (ms) | network (ms) | file to answer (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for mp in (1, 12):
        raws = []
        for _ in range(args.n + 1):
            rgb, _, cond = photo_synth.render(rng, "digit", sources=sources, size=mp)
            raws.append(photo_synth.jpeg(rgb, cond["jpeg_quality"]))
        time_one(raws[0], predictor)  # warm-up
        times = np.array([time_one(raw, predictor) for raw in raws[1:]]) * 1000
        med = np.median(times, axis=0)
        size = np.median([len(r) for r in raws]) / 1e6
        print(f"| {mp} MP JPEG | {size:.1f} MB | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.1f} | "
              f"{np.median(times.sum(1)):.0f} |")


if __name__ == "__main__":
    main()
