"""Round trip and multi-digit benchmark for `mnist_cnn.preprocess` and `mnist-cnn predict --multi`.

Renders MNIST test digits the way people hand them to us -- dark ink on a light page,
scaled 4-12x, off-centre, grey paper, blur, noise, JPEG or transparent canvas PNG --
then preprocesses them back and reports the pixel distance to the original digit and
the model's accuracy against its score on the raw digits. Then it composes numbers of
2-6 MNIST digits on a page (varied spacing, some touching) and reads them with `--multi`.

    MNIST_CNN_DATA=/tmp/mnist_cache python benchmarks/roundtrip.py --n 1000 --numbers 300

The renderers are imported by tests/test_predict.py, which runs a small subset.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image, ImageFilter


def _encode(img: Image.Image, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    if img.mode == "L" and rng.random() < 0.3:
        img.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _paper(ink: np.ndarray, scale: float, rng: np.random.Generator, canvas: bool) -> bytes:
    """Ink amounts (H, W) in [0, 1] -> encoded image of dark ink on grey paper, or a transparent canvas."""
    if canvas:  # like a browser canvas: black strokes whose coverage is in alpha, transparent elsewhere
        rgba = np.zeros(ink.shape + (4,), dtype=np.uint8)
        rgba[..., 3] = np.round(ink * 255)
        return _encode(Image.fromarray(rgba, "RGBA"), rng)
    blur = ImageFilter.GaussianBlur(rng.uniform(0.2, 0.12 * scale))  # radius in page pixels
    ink = np.asarray(Image.fromarray(np.round(ink * 255).astype(np.uint8)).filter(blur)) / 255
    paper, dark = rng.uniform(0.55, 0.97), rng.uniform(0.0, 0.3)
    h, w = ink.shape
    if rng.random() < 0.3:  # uneven lighting: a gentle gradient across the page
        paper = paper - rng.uniform(0, 0.2) * np.linspace(0, 1, w)[None, :] * np.ones((h, 1))
    lum = paper - (paper - dark) * ink + rng.normal(0, rng.uniform(0, 0.04), ink.shape)
    return _encode(Image.fromarray(np.clip(np.round(lum * 255), 0, 255).astype(np.uint8), "L"), rng)


def render_digit(digit: torch.Tensor, rng: np.random.Generator) -> bytes:
    """An MNIST digit (28, 28) uint8 -> an encoded photo-like or canvas image of it, off-centre."""
    scale = rng.uniform(4, 12)
    side = round(28 * scale)
    big = np.asarray(Image.fromarray(digit.numpy()).resize((side, side), Image.Resampling.BILINEAR)) / 255
    h, w = int(side * rng.uniform(1.1, 1.8)), int(side * rng.uniform(1.1, 1.8))
    page = np.zeros((h, w), dtype=np.float32)
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    page[y:y + side, x:x + side] = big
    return _paper(page, scale, rng, canvas=rng.random() < 0.2)


def compose_number(digits: list[torch.Tensor], rng: np.random.Generator, touching: bool = False) -> bytes:
    """MNIST digits side by side on a page (each cropped to its ink, varied gaps; overlapping if touching)."""
    scale = rng.uniform(3, 6)
    crops = []
    for d in digits:
        cols = np.nonzero(d.numpy().max(0) > 0)[0]
        crop = d.numpy()[:, cols[0]:cols[-1] + 1]  # keep the 20-px box's rows so baselines line up
        crops.append(np.asarray(Image.fromarray(crop).resize(
            (max(1, round(crop.shape[1] * scale)), round(28 * scale)), Image.Resampling.BILINEAR)) / 255)
    gaps = [(-rng.uniform(0.5, 2.0) if touching and rng.random() < 0.5 else rng.uniform(1.5, 6)) * scale
            for _ in crops[1:]]
    margin = int(10 * scale)
    h = crops[0].shape[0] + 2 * margin
    w = int(sum(c.shape[1] for c in crops) + sum(gaps)) + 2 * margin + 1
    page = np.zeros((h, w), dtype=np.float32)
    x = float(margin)
    for i, c in enumerate(crops):
        x0 = int(round(x))
        page[margin:margin + c.shape[0], x0:x0 + c.shape[1]] = np.maximum(
            page[margin:margin + c.shape[0], x0:x0 + c.shape[1]], c)
        x += c.shape[1] + (gaps[i] if i < len(gaps) else 0)
    return _paper(page, scale, rng, canvas=rng.random() < 0.2)


def round_trip(predictor, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict:
    """Render each digit, bring it back, compare pixels and predictions with the raw digit's."""
    from mnist_cnn.images import decode
    from mnist_cnn.preprocess import to_mnist

    rng = np.random.default_rng(seed)
    back = []
    for digit in x:
        img = to_mnist(decode(render_digit(digit, rng)))
        back.append(torch.zeros(28, 28, dtype=torch.uint8) if img is None else img)
    back = torch.stack(back)
    raw = torch.tensor([-1 if p.digit is None else p.digit for p in predictor.predict_arrays(x)])  # unsure: wrong
    rendered = torch.tensor([-1 if p.digit is None else p.digit for p in predictor.predict_arrays(back)])
    distance = (back.float() - x.float()).abs().mean((1, 2))  # mean |difference| per image, in grey levels
    return {"n": len(x), "raw_accuracy": float((raw == y).float().mean() * 100),
            "accuracy": float((rendered == y).float().mean() * 100),
            "mean_pixel_distance": float(distance.mean()), "images": back}


def numbers(predictor, x: torch.Tensor, y: torch.Tensor, count: int, touching: bool, seed: int = 0) -> dict:
    """Exact-number accuracy on `count` numbers of 2-6 random test digits."""
    from mnist_cnn.images import decode

    rng = np.random.default_rng(seed)
    right = counted = 0
    for _ in range(count):
        idx = rng.choice(len(x), size=int(rng.integers(2, 7)), replace=False)
        text = predictor.predict_number(decode(compose_number([x[i] for i in idx], rng, touching))).text
        right += text == "".join(str(int(y[i])) for i in idx)
        counted += len(text) == len(idx)
    return {"n": count, "accuracy": right / max(1, count) * 100, "segmented": counted / max(1, count) * 100}


def main(argv=None) -> None:
    from mnist_cnn import data
    from mnist_cnn.predict import Predictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="test digits to render")
    p.add_argument("--numbers", type=int, default=300, help="numbers of each kind to compose")
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    x, y = data.read_split(data.acquire(), "test")
    predictor = Predictor.from_path(args.model)
    rows = np.random.default_rng(args.seed).choice(len(x), args.n, replace=False)
    t0 = time.perf_counter()
    rt = round_trip(predictor, x[rows], y[rows], args.seed)
    t1 = time.perf_counter()
    apart = numbers(predictor, x, y, args.numbers, touching=False, seed=args.seed)
    close = numbers(predictor, x, y, args.numbers, touching=True, seed=args.seed + 1)
    t2 = time.perf_counter()
    print(f"model: {args.model or 'shipped default'} ({predictor.meta['arch']}, "
          f"MNIST test accuracy {predictor.meta.get('metrics', {}).get('test_accuracy', float('nan')):.2f}%)")
    print("| measurement | n | result |")
    print("|---|---:|---:|")
    print(f"| raw test digits, accuracy | {rt['n']} | {rt['raw_accuracy']:.1f}% |")
    print(f"| rendered on paper and preprocessed back, accuracy | {rt['n']} | {rt['accuracy']:.1f}% |")
    print(f"| mean pixel distance to the original (0-255 scale) | {rt['n']} | {rt['mean_pixel_distance']:.1f} |")
    for name, r in (("not touching", apart), ("about half the gaps touching", close)):
        print(f"| numbers of 2-6 digits, {name}: right number of digits | {r['n']} | {r['segmented']:.1f}% |")
        print(f"| numbers of 2-6 digits, {name}: whole number exact | {r['n']} | {r['accuracy']:.1f}% |")
    print(f"round trip {t1 - t0:.1f} s ({(t1 - t0) / rt['n'] * 1000:.0f} ms per image incl. rendering), "
          f"numbers {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
