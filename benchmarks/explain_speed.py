"""How long one explanation takes on one CPU core: attribution, feature maps and sentence, per method and network.

Each figure is the median over MNIST test digits, after one warm-up, with one torch thread, in
this process. The page asks for one explanation per drawing update while its panel is open.

    .venv/bin/python benchmarks/explain_speed.py --n 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mnist_cnn import checkpoint, data, models, precision
from mnist_cnn.predict import Predictor
from mnist_cnn.recipes import get_config


def seed_predictor(folder: Path) -> Predictor:
    """The seed notebook's network (untrained weights: the cost is the same) as a checkpoint."""
    cfg = get_config("seed")
    path = folder / "seed.safetensors"
    checkpoint.save_model(path, models.build_model(cfg.model, **cfg.model_args).eval(), checkpoint.model_metadata(cfg))
    return Predictor.from_path(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50, help="test digits per row")
    args = p.parse_args()
    torch.set_num_threads(1)
    x, _ = data.read_split(data.acquire(), "test")
    print(f"CPU: {precision.cpu_model()}; torch {torch.__version__}, 1 thread; median of {args.n} test digits\n")
    print("| network | method | explanation (ms) | share of positive attribution on the ink |")
    print("|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, predictor in (("bnnet (shipped)", Predictor.from_path()), ("seed", seed_predictor(Path(tmp)))):
            for method in ("integrated-gradients", "occlusion"):
                predictor.explain(x[0], method)  # warm-up
                times, shares = [], []
                for digit in x[1:args.n + 1]:
                    start = time.perf_counter()
                    e = predictor.explain(digit, method)
                    times.append(time.perf_counter() - start)
                    shares.append(e.ink_share)
                share = f"{np.mean(shares):.1%}" if name != "seed" else "(untrained)"
                print(f"| {name} | {method} | {1000 * np.median(times):.0f} | {share} |")


if __name__ == "__main__":
    main()
