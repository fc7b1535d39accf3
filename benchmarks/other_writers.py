"""How well a classifier reads writers who are not in MNIST, and how often it declines clean MNIST digits.

The other writers are scikit-learn's `load_digits` (UCI optical digits: 1,797 digits by 43 people),
rendered as dark-on-light scans and preprocessed as `mnist-cnn predict` would (`finetune.uci_digits`).
Each model answers through the served path (`Predictor.predict_arrays`: the checkpoint's test-time
augmentation, the calibrated probability, `unsure` below --min-confidence or for ink unlike a digit). No digit here is used for
training or for choosing anything in the shipped model's recipe.

    .venv/bin/python benchmarks/other_writers.py                 # the shipped model
    .venv/bin/python benchmarks/other_writers.py --model runs/x --model runs/y
"""

from __future__ import annotations

import argparse

import torch

from finetune import uci_digits


def score(predictor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(% read right and sure, % unsure) of the digits x with labels y."""
    preds = predictor.predict_arrays(x)
    right = sum(p.status == "ok" and p.digit == int(t) for p, t in zip(preds, y))
    unsure = sum(p.status != "ok" for p in preds)
    return 100 * right / len(y), 100 * unsure / len(y)


def main(argv=None) -> None:
    from mnist_cnn import data
    from mnist_cnn.predict import Predictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="a checkpoint or run folder; repeat to compare (default: shipped)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a script may: the figures do not depend on it
    ux, uy = uci_digits()
    mx, my = data.read_split(data.acquire(), "test")
    print("| model | UCI writers: read right | UCI: unsure | MNIST test: read right | MNIST test: unsure |")
    print("|---|---:|---:|---:|---:|")
    for path in args.model or [None]:
        predictor = Predictor.from_path(path) if path else Predictor.from_path()
        (u_ok, u_unsure), (m_ok, m_unsure) = score(predictor, ux, uy), score(predictor, mx, my)
        print(f"| {path or 'shipped'} | {u_ok:.2f}% | {u_unsure:.2f}% | {m_ok:.2f}% | {m_unsure:.2f}% |")


if __name__ == "__main__":
    main()
