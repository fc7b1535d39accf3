"""A second phone-photo generator, written apart from photo_synth.py and kept simple on purpose: a check
that the photo steps are not fitted to the habits of one generator.

MNIST test digits (one, or a number of 2-5) are scaled up as they are, grey levels and all, and laid on
plain, lined or squared paper (a red margin on some lined sheets) in blue or black ink or in grainy
pencil; lit evenly, by a gradient, by a vignette, or by a soft or a hard shadow (the shade darkened in
sRGB, to a fifth or a half of the light); on a desk, with the sheet in perspective, in 40% of the photos;
then blurred, given sensor noise and saved as JPEG. It prints the photos read right, declined and wrong
with p >= 0.9, overall and per condition, as Markdown.

    python benchmarks/photo_crosscheck.py --n 200 --numbers 60 --save-failures /tmp/crosscheck
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from mnist_cnn import data

CONFIDENT = 0.9
INKS = {"blue": (30, 45, 150), "black": (25, 25, 30), "pencil": (80, 80, 85)}
PAPERS = ((250, 248, 240), (245, 245, 245), (240, 235, 220), (235, 238, 240))
DESKS = ((120, 80, 50), (70, 70, 75), (40, 40, 45), (150, 110, 70))
FRAMES = ((900, 1200), (1200, 900), (1200, 1600), (1080, 1440))


def blotches(rng, shape, cell: float) -> np.ndarray:
    """Smooth random variation, (H, W) float32 of unit scale, on a grid of `cell` pixels."""
    small = rng.standard_normal((max(2, int(shape[0] / cell)), max(2, int(shape[1] / cell)))).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def rules(coord: np.ndarray, spacing: float, thick: float) -> np.ndarray:
    """Coverage (0-1) of lines `thick` wide every `spacing` along `coord`, anti-aliased."""
    return np.clip(0.5 - (np.abs((coord + spacing / 2) % spacing - spacing / 2) - thick / 2), 0, 1)


def sheet(rng, h: int, w: int) -> tuple[np.ndarray, str]:
    """Paper (H, W, 3) float32 in 0-255 with its rules, and which paper it is."""
    img = np.ones((h, w, 3), np.float32) * np.float32(PAPERS[rng.integers(len(PAPERS))])
    img *= 1 + 0.02 * blotches(rng, (h, w), 80)[..., None] + 0.01 * rng.standard_normal((h, w, 1)).astype(np.float32)
    kind = ("plain", "lined", "squared")[rng.integers(3)]
    colour = np.float32((150, 175, 225) if rng.random() < 0.8 else (160, 160, 160))
    spacing, thick, turn = rng.uniform(0.045, 0.08) * h, rng.uniform(1.2, 3.0), np.radians(rng.uniform(-4, 4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cover = np.zeros((h, w), np.float32)
    if kind != "plain":
        cover = rules(yy * np.cos(turn) - xx * np.sin(turn) + rng.uniform(0, spacing), spacing, thick)
    if kind == "squared":
        cover = np.maximum(cover, rules(xx * np.cos(turn) + yy * np.sin(turn) + rng.uniform(0, spacing), spacing, thick))
    cover *= rng.uniform(0.4, 0.85)
    img = img * (1 - cover[..., None]) + colour * cover[..., None]
    if kind == "lined" and rng.random() < 0.6:  # a red margin
        x = int(rng.uniform(0.08, 0.15) * w)
        img[:, x:x + 2] = img[:, x:x + 2] * 0.3 + np.float32((220, 90, 90)) * 0.7
    return img, kind


def write(rng, img: np.ndarray, glyphs: list[np.ndarray]) -> str:
    """Lay the 28x28 digits side by side near the middle of `img`, in place; returns the ink's name."""
    h, w = img.shape[:2]
    side = int(rng.uniform(0.18, 0.4) * min(h, w) / (1 if len(glyphs) == 1 else 1.6))
    cy, cx = h / 2 + rng.uniform(-0.12, 0.12) * h, w / 2 + rng.uniform(-0.12, 0.12) * w
    cover = np.zeros((h, w), np.float32)
    for k, glyph in enumerate(glyphs):
        big = cv2.resize(glyph.astype(np.float32) / 255, (side, side), interpolation=cv2.INTER_CUBIC)
        big = cv2.warpAffine(big, cv2.getRotationMatrix2D((side / 2, side / 2), rng.uniform(-8, 8), 1.0), (side, side))
        y0 = int(np.clip(cy - side / 2 + rng.uniform(-0.05, 0.05) * side, 0, h - side))
        x0 = int(np.clip(cx - 0.4 * side * len(glyphs) + 0.8 * k * side, 0, w - side))
        box = np.s_[y0:y0 + side, x0:x0 + side]
        cover[box] = np.maximum(cover[box], np.clip((big - 0.35) / 0.3, 0, 1))
    ink = tuple(INKS)[rng.integers(len(INKS))]
    cover *= {"blue": rng.uniform(0.7, 0.95), "black": rng.uniform(0.8, 0.98), "pencil": rng.uniform(0.35, 0.7)}[ink]
    if ink == "pencil":  # graphite leaves grain
        cover *= 1 - 0.5 * rng.random((h, w)).astype(np.float32)
    img[:] = img * (1 - cover[..., None]) + np.float32(INKS[ink]) * cover[..., None]
    return ink


def light(rng, h: int, w: int) -> tuple[np.ndarray, str]:
    """A multiplier (H, W) for the photo's sRGB levels, and the light's name."""
    kind = ("even", "gradient", "vignette", "soft shadow", "hard shadow")[rng.integers(5)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "gradient":
        t = np.radians(rng.uniform(0, 360))
        r = xx * np.cos(t) + yy * np.sin(t)
        return 1 - rng.uniform(0.2, 0.45) * (r - r.min()) / (r.max() - r.min()), kind
    if kind == "vignette":
        return 1 - rng.uniform(0.6, 1.2) * np.hypot((xx - w / 2) / w, (yy - h / 2) / h) ** 2, kind
    if kind.endswith("shadow"):  # a straight edge at any angle, anywhere near the middle
        t = np.radians(rng.uniform(0, 360))
        side = (xx - w / 2) * np.cos(t) + (yy - h / 2) * np.sin(t) - rng.uniform(-0.3, 0.3) * min(h, w) > 0
        shade = cv2.GaussianBlur(side.astype(np.float32), (0, 0), 2.5 if kind == "hard shadow" else 40)
        return 1 - rng.uniform(0.3, 0.55) * shade, kind
    return np.ones((h, w), np.float32), kind


def on_desk(rng, img: np.ndarray) -> np.ndarray:
    """The sheet in perspective on a desk that shows around it (and on one side, sometimes, off the frame)."""
    h, w = img.shape[:2]
    desk = np.float32(DESKS[rng.integers(len(DESKS))]) * (1 + 0.08 * blotches(rng, (h, w), 30)[..., None])
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    inward = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * rng.uniform(0.02, 0.12, (4, 2)) * [w, h]
    placed = corners + inward + (rng.uniform(-0.08, 0.08, 2) * [w, h] if rng.random() < 0.5 else 0)
    warp = cv2.getPerspectiveTransform(corners, placed.astype(np.float32))
    paper = cv2.warpPerspective(img, warp, (w, h))
    cover = cv2.warpPerspective(np.ones((h, w), np.float32), warp, (w, h))[..., None]
    return paper * cover + desk * (1 - cover)


def photo(rng, glyphs: list[np.ndarray]) -> tuple[bytes, dict]:
    """One photo of the digits as a JPEG file's bytes, and its conditions."""
    h, w = FRAMES[rng.integers(len(FRAMES))]
    img, paper = sheet(rng, h, w)
    ink = write(rng, img, glyphs)
    shade, lit = light(rng, h, w)
    img *= shade[..., None]
    desk = bool(rng.random() < 0.4)
    if desk:
        img = on_desk(rng, img)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.6)) + rng.normal(0, rng.uniform(1.5, 5), img.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(65, 93)))
    return buffer.getvalue(), {"paper": paper, "ink": ink, "light": lit, "desk": "yes" if desk else "no"}


def run(kind: str, count: int, rng, predictor, x, y, failures: Path | None) -> list[dict]:
    rows = []
    for i in range(count):
        picks = rng.integers(len(x), size=1 if kind == "digit" else int(rng.integers(2, 6)))
        label = "".join(str(int(y[j])) for j in picks)
        raw, cond = photo(rng, [x[j].numpy() for j in picks])
        img = Image.open(io.BytesIO(raw)).convert("RGB")
        if kind == "digit":
            answer = predictor.predict_image(img)
            text, sure = ("" if answer.digit is None else str(answer.digit)), answer.probability >= CONFIDENT
        else:
            answer = predictor.predict_number(img)
            text, sure = answer.text, min((d.probability for d in answer.digits), default=0) >= CONFIDENT
        ok = answer.status == "ok"
        rows.append(dict(cond, right=ok and text == label, declined=not ok, confident=ok and text != label and sure))
        if failures and not rows[-1]["right"]:
            (failures / f"{kind}_{i:04d}_label{label}_got-{(text or answer.status).replace('?', 'q')}.jpg").write_bytes(raw)
    return rows


def table(title: str, rows: list[dict]) -> str:
    def line(name, group):
        share = [f"{100 * sum(r[k] for r in group) / len(group):.1f}%" for k in ("right", "declined", "confident")]
        return f"| {name} | {len(group)} | " + " | ".join(share) + " |"

    out = [f"### {title}", "", "| photos | n | read right | declined | wrong with p >= 0.9 |", "|---|---:|---:|---:|---:|",
           line("**all**", rows)]
    for factor in ("paper", "ink", "light", "desk"):
        for value in sorted({r[factor] for r in rows}):
            out.append(line(f"{factor}: {value}", [r for r in rows if r[factor] == value]))
    return "\n".join(out)


def main(argv=None) -> None:
    from mnist_cnn.predict import Predictor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="photos of single digits")
    p.add_argument("--numbers", type=int, default=60, help="photos of numbers of 2-5 digits")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--save-failures", metavar="DIR", help="write the photos not read right here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a script may; the figures do not depend on it
    failures = Path(args.save_failures) if args.save_failures else None
    if failures:
        failures.mkdir(parents=True, exist_ok=True)
    x, y = data.read_split(data.acquire(), "test")
    predictor = Predictor.from_path()
    for kind, count, title in (("digit", args.n, "single digits"), ("number", args.numbers, "numbers of 2-5 digits")):
        if count:
            rows = run(kind, count, np.random.default_rng([args.seed, kind == "number"]), predictor, x, y, failures)
            print(table(f"Cross-check photos: {title} ({count}, seed {args.seed})", rows) + "\n")


if __name__ == "__main__":
    main()
