"""Reading a written number: cut the page's ink into digits, left to right, each in MNIST form.

Connected components are grouped into blobs (a digit's broken strokes are merged); a blob
much wider than a digit is cut into several, where a classifier is most confident.

    mnist-cnn predict number.jpg --multi
"""

from __future__ import annotations

import dataclasses
import time

import cv2
import numpy as np
import torch
from PIL import Image

from .imageops import bbox, component_boxes
from .images import ImageError
from .preprocess import Page, find_ink, render

# Multi-digit: a blob wider than SPLIT_H x a digit's height and SPLIT_W x the number's typical digit
# width holds several digits; between MAYBE_W and SPLIT_W a classifier decides. NARROW x the height is
# the least typical width (so a number of 1s does not make every other digit look wide).
SPLIT_H, SPLIT_W, MAYBE_W, NARROW = 1.0, 1.6, 1.2, 0.8
# At most this many digits in one number (and 4x as many pieces of ink): cutting touching digits costs
# about n^2 forward passes (a 1000x10 bar read as 118 digits took 209 s), so more is refused.
MAX_DIGITS = 32


class TooManyDigits(ImageError):
    """More digits (or pieces of ink) than one number may hold: the server answers 422."""


class OutOfTime(Exception):
    """The work went past its deadline and stopped (the server answers 503)."""


def check_deadline(deadline: float | None) -> None:
    """Raise OutOfTime once `deadline` (a time.monotonic() value; None: never) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise OutOfTime("stopped at its deadline")


def number_page(img: Image.Image) -> Page | None:
    """The ink of a written number (None when there is none); TooManyDigits when it is in too many pieces."""
    page = find_ink(img, several=True)
    if page is None or page.count == 0:
        return None
    if page.count > 4 * MAX_DIGITS:
        raise TooManyDigits(f"{page.count} separate pieces of ink: more than {MAX_DIGITS} digits "
                            f"(the limit for one number), or not a written number")
    return page


# Slants (x per y) tried when a number's reading is unsure, and the least lean that is then stood upright.
# MNIST's own lines measure leans of 0.45 (median) to 0.85 (95th percentile) by `slant`, and italic ones
# overlap them, so a lean alone is no reason to shear: only a reading that is unsure is tried again upright.
SLANTS, MIN_SLANT = np.linspace(-1.2, 1.2, 49), 0.3
SLANT_SIDE = 64  # the slant is measured on the ink's box at this height


def slant(mask: np.ndarray) -> float:
    """How far the writing in a bool mask leans, x per y (positive: its tops lean right).

    Vinciarelli and Luettin's measure: under each shear, a column that the ink fills in one unbroken run
    scores its length squared, and the shear that scores most stands the near-vertical strokes upright
    (a 1's stem, a 4's, the sides of a 0). Loops and bars, which fill no column in one run, do not vote.
    """
    y0, y1, x0, x1 = bbox(mask)
    k = SLANT_SIDE / max(1, y1 - y0)
    small = cv2.resize(mask[y0:y1, x0:x1].astype(np.float32), (max(1, round((x1 - x0) * k)), SLANT_SIDE),
                       interpolation=cv2.INTER_AREA)
    h, w = small.shape
    pad = int(np.ceil(SLANTS.max() * h / 2))
    rows = np.arange(h)[:, None]
    scores = []
    for s in SLANTS:
        ink = cv2.warpAffine(small, _shear(s, h, pad), (w + 2 * pad, h)) > 0.5
        count = ink.sum(0)
        first = np.where(ink, rows, h).min(0)
        last = np.where(ink, rows, -1).max(0)
        run = (count > 0) & (last - first + 1 == count)  # one unbroken run of ink
        scores.append(float((count[run].astype(np.float64) ** 2).sum()))
    return float(SLANTS[int(np.argmax(scores))])


def _shear(s: float, h: int, pad: float) -> np.ndarray:
    """The affine map x' = x + s (y - h/2) + pad, y' = y: a lean of -s stood upright."""
    return np.float32([[1, s, pad - s * h / 2], [0, 1, 0]])


def upright(page: Page, lean: float) -> Page:
    """The page sheared so that writing leaning `lean` (x per y) stands upright. `Page.shear` records the
    shear, for boxes drawn on the image as given."""
    h, w = page.labels.shape
    pad = int(np.ceil(abs(lean) * h / 2))

    def shear(a: np.ndarray, f: int = 1, nearest: bool = False) -> np.ndarray:
        # Grey levels go on as at the page's edge (paper), not black, which on a drawing would be ink.
        return cv2.warpAffine(a.astype(np.float32), _shear(lean, f * h, f * pad), (f * (w + 2 * pad), a.shape[0]),
                              flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT if nearest else cv2.BORDER_REPLICATE)

    return dataclasses.replace(page, full=shear(page.full, page.factor), ink=shear(page.ink),
                               background=shear(page.background), labels=shear(page.labels, nearest=True).astype(np.int32),
                               shear=(lean, pad))


def unshear_box(box: list[int], page: Page) -> list[int]:
    """A box [x0, y0, x1, y1] in `page`'s working pixels -> its box on the page as given (before `upright`)."""
    if page.shear is None:
        return box
    lean, pad = page.shear
    x0, y0, x1, y1 = box
    h = page.labels.shape[0]
    xs = [x - lean * (y - h / 2) - pad for x in (x0, x1) for y in (y0, y1)]
    return [int(np.floor(min(xs))), y0, int(np.ceil(max(xs))), y1]


def segment_digits(img: Image.Image, score=None, deadline: float | None = None) -> list[torch.Tensor]:
    """A written number -> its digits left to right, each in `to_mnist` form ([] when no ink).

    `score`, if given, rates candidate digits (k, 28, 28) uint8 -> float, higher is better
    (a classifier's confidence); touching digits are then cut where it is most confident.
    Past `deadline` (time.monotonic()), it stops with OutOfTime; over MAX_DIGITS, TooManyDigits.
    """
    page = number_page(img)
    if page is None:
        return []
    blobs = digit_blobs(page.labels, page.count)
    if (n := sum(counts[0] for _, counts in blobs)) > MAX_DIGITS:  # the likeliest reading
        raise TooManyDigits(f"more than {MAX_DIGITS} digits (read as {n}): the limit for one number")
    digits = []
    for mask, counts in blobs:
        check_deadline(deadline)
        options = [_cut(page, mask, n, score, deadline) for n in (counts if score else counts[:1])]
        digits += max(options, key=lambda d: score(torch.stack(d))) if len(options) > 1 else options[0]
    return digits


def digit_blobs(labels: np.ndarray, count: int) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """Group components into blobs left to right, each with how many digits it may hold (likeliest first):
    a digit's broken strokes are merged, and a blob much wider than a digit holds several."""
    boxes = [tuple(int(v) for v in b) for b in component_boxes(labels, count)]
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    groups = [[i] for i in np.argsort([b[2] for b in boxes])]  # left to right
    a = 0
    while a < len(groups):  # pieces that share most of their columns are one digit (a broken 4)
        b = next((b for b in range(a + 1, len(groups))
                  if _overlap(_span(boxes, groups[a]), _span(boxes, groups[b])) >= 0.5), None)
        if b is None:
            a += 1
        else:
            groups[a] += groups.pop(b)
    spans = [_span(boxes, g) for g in groups]
    sizes = np.array([areas[g].sum() for g in groups])
    heights = np.array([y1 - y0 for y0, y1, _, _ in spans])
    height = float(np.median(heights[sizes >= 0.25 * sizes.max()]))  # a digit's height in this number
    # Short groups that share columns are the pieces of one digit broken apart (a 5's bar over the rest of
    # it, sharing a few columns); together as tall as a digit, they are that digit, not pieces to hand to its
    # neighbours (on dev seeds of benchmarks/number_reading.py such a 5 was joined to the 6 beside it).
    a = 0
    while a < len(groups):
        b = next((b for b in range(a + 1, len(groups)) if max(heights[a], heights[b]) < 0.5 * height
                  and _overlap(spans[a], spans[b]) > 0
                  and _height(_span(boxes, groups[a] + groups[b])) >= 0.5 * height), None)
        if b is None:
            a += 1
            continue
        groups[a] += groups.pop(b)
        spans = [_span(boxes, g) for g in groups]
        sizes = np.array([areas[g].sum() for g in groups])
        heights = np.array([_height(s) for s in spans])
    # A short, light group is a piece of a digit (a 5's detached bar), not a digit: attach it to
    # the digit it overlaps most, or the nearest; far from every digit, it is a stray mark.
    piece = (heights < 0.5 * height) & (sizes < 0.5 * np.median(sizes))
    digits = [k for k in range(len(groups)) if not piece[k]] or list(range(len(groups)))
    members = {k: list(groups[k]) for k in digits}
    for k in set(range(len(groups))) - set(digits):
        best = max(digits, key=lambda d: (_overlap(spans[d], spans[k]), -_gap(spans[d], spans[k])))
        if _gap(spans[best], spans[k]) < 0.3 * height:
            members[best] += groups[k]
    final = [_span(boxes, members[k]) for k in digits]
    widths = np.array([x1 - x0 for _, _, x0, x1 in final])
    # A digit's width in this number, from the blobs that look like single digits other than 1s.
    single = widths[(widths >= 0.45 * height) & (widths <= 1.1 * height)]
    width = max(float(np.median(single)) if len(single) else 0.0, NARROW * height)
    blobs = []
    for k, w, (y0, y1, _, _) in zip(digits, widths, final):
        h = max(y1 - y0, height)
        # MNIST digits are at most ~1.4x as wide as tall (95th percentile of the widest class, a 5);
        # narrower blobs hold several digits only when much wider than this number's others.
        if w >= 1.5 * h:
            counts = (max(2, round(w / max(width, 0.85 * h))),)
        elif w > SPLIT_H * h and w > SPLIT_W * width:
            counts = (max(2, round(w / width)),)
        elif w > SPLIT_H * h and w > MAYBE_W * width:
            counts = (1, 2)
        else:
            counts = (1,)
        if counts == (2,):  # two digits, or one very wide one: let a classifier's `score` decide
            counts = (2, 1)
        blobs.append((np.isin(labels, np.array(members[k]) + 1), counts))
    return blobs


def _span(boxes, group):
    b = np.array([boxes[i] for i in group])
    return int(b[:, 0].min()), int(b[:, 1].max()), int(b[:, 2].min()), int(b[:, 3].max())


def _height(span) -> int:
    return span[1] - span[0]


def _overlap(a, b) -> float:
    """Shared columns as a fraction of the narrower box's width."""
    shared = min(a[3], b[3]) - max(a[2], b[2])
    return shared / max(1, min(a[3] - a[2], b[3] - b[2]))


def _gap(a, b) -> int:
    return max(a[2], b[2]) - min(a[3], b[3])


def _cut(page: Page, mask: np.ndarray, n: int, score, deadline: float | None = None) -> list[torch.Tensor]:
    """Cut a blob of n touching digits at columns: the thinnest ones near even spacing, then, with
    a `score`, each cut moved to wherever the pieces are recognized most confidently."""
    _, _, x0, x1 = bbox(mask)
    step, ink = (x1 - x0) / n, mask.sum(0)

    def thinnest(c):
        lo, hi = int(c - 0.3 * step), int(c + 0.3 * step) + 1
        return lo + int(np.argmin(ink[lo:hi] + 1e-3 * np.abs(np.arange(lo, hi) - c)))

    def pieces(cuts):
        bounds = [x0, *cuts, x1]
        if any(b <= a for a, b in zip(bounds, bounds[1:])):
            return None
        columns = np.arange(mask.shape[1])[None, :]
        parts = [mask & (columns >= a) & (columns < b) for a, b in zip(bounds, bounds[1:])]
        return [render(page, p) for p in parts] if all(p.any() for p in parts) else None

    cuts = [thinnest(x0 + k * step) for k in range(1, n)]
    best = pieces(cuts) or [render(page, mask)]
    if score is None or n == 1:
        return best
    best_score = score(torch.stack(best))
    for k in range(n - 1):
        for offset in np.linspace(-0.4, 0.4, 9) * step:
            check_deadline(deadline)
            trial = cuts[:k] + [int(round(x0 + (k + 1) * step + offset))] + cuts[k + 1:]
            digits = pieces(trial)
            if digits is not None and (s := score(torch.stack(digits))) > best_score:
                best, best_score, cuts = digits, s, trial
    return best
