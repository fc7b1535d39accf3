"""Handwritten digit strokes for photo_synth.py: shapes from three sources, rewritten with a pen.

Sources: MNIST *test* digits (never training digits), scikit-learn's UCI 8x8 digits
(43 other writers) and handwriting fonts from Debian's fonts-* packages. Each shape
is reduced to its centre line, which a writer's hand then rotates, slants and
stretches, and a pen of realistic width redraws (uneven pressure, skips, graphite
grain). All functions take arrays (and a numpy Generator) and return arrays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# ------------------------------------------------------------------ digit sources

MNIST_UPSAMPLE = 10      # 28 px -> 280 px before thresholding: smooth enough to skeletonize
UCI_UPSAMPLE = 32        # 8 px -> 256 px
SHAPE_THRESHOLDS = (0.35, 0.45, 0.55, 0.65, 0.75)  # of the upsampled grey level, where the stroke's shape ends (see shape_of)
FONT_PX = 320            # glyph size when rendering font digits
FONT_PACKAGES = ("fonts-dkg-handwriting", "fonts-breip", "fonts-bwht", "fonts-klee", "fonts-humor-sans",
                 "fonts-comic-neue", "fonts-kristi", "fonts-rufscript")  # the Debian packages of FONT_FILES
# Kept after looking at every font's 0-9, as rendered and as redrawn: ordinary handwritten digits.
# Dropped on purpose:
#   femkeklaver (fonts-femkeklaver): hollow, doubly outlined digits (a skeleton gives two parallel strokes);
#   Ecolier-court (fonts-ecolier-court): a high-contrast serif school-script typeface, closer to print than handwriting;
#   dkgIt: slanted about 40 degrees with long looping tails (its 7 and 8 are barely digits);
#   BecauseWeCreate: a hatched dry-brush texture inside its strokes, whose centre line is a tangle;
#   bold/light/italic duplicates of the kept families (the pen redraw removes weight anyway).
FONT_FILES = ("fifthhorseman/dkg.ttf", "fifthhorseman/dkgBI.ttf", "breip/Breip.ttf",
              "bwht/BecauseWeBuild-Regular.otf", "bwht/BecauseWeConnect-Regular.otf",
              "bwht/BecauseWeLearn-Regular.otf",
              "bwht/BecauseWeMentor-Regular.otf", "bwht/BecauseWeOrganize-Regular.otf",
              "comic-neue/ComicNeue-Regular.otf", "comic-neue/ComicNeue-Italic.otf", "klee/KleeOne-Regular.ttf",
              "humor-sans/Humor-Sans.ttf", "kristi/Kristi.ttf", "rufscript/Rufscript010.ttf")
FONT_ROOTS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))


def _find_fonts() -> list[Path]:
    found = []
    for rel in FONT_FILES:
        found += [root / rel for root in FONT_ROOTS if (root / rel).exists()][:1]
    return found


def ensure_fonts(log=print) -> list[Path]:
    """The kept handwriting fonts; installs the Debian packages first when some are missing and we can
    (root, apt-get), else the missing ones are skipped with a note."""
    if len(_find_fonts()) < len(FONT_FILES) and getattr(os, "geteuid", lambda: -1)() == 0 and shutil.which("apt-get"):
        log("photo_synth: installing handwriting fonts: apt-get install -y " + " ".join(FONT_PACKAGES))
        install = ["apt-get", "install", "-y", "-q", *FONT_PACKAGES]
        if subprocess.run(install, capture_output=True).returncode != 0:  # package lists may be empty
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(install, capture_output=True)
    fonts = _find_fonts()
    if 0 < len(fonts) < len(FONT_FILES):
        log(f"photo_synth: {len(FONT_FILES) - len(fonts)} of the handwriting fonts are missing; using the rest")
    if not fonts:
        log("photo_synth: no handwriting fonts found (apt-get install fonts-breip ...); skipping the font source")
    return fonts


@dataclass
class Sources:
    """Where digit shapes come from: MNIST test images, UCI 8x8 digits, handwriting fonts."""
    mnist_x: np.ndarray  # (N, 28, 28) uint8, the MNIST *test* split only
    mnist_y: np.ndarray
    uci_x: np.ndarray    # (M, 8, 8) float in [0, 16]
    uci_y: np.ndarray
    fonts: list[Path]

    def __post_init__(self):  # flat float copies and squared norms, for nearest-neighbour checks
        self.flat = {name: (x.reshape(len(x), -1).astype(np.float32),
                            (x.reshape(len(x), -1).astype(np.float32) ** 2).sum(1))
                     for name, x in (("mnist", self.mnist_x), ("uci", self.uci_x))}


def load_sources(data_dir=None, log=print) -> Sources:
    from sklearn.datasets import load_digits
    from mnist_cnn import data

    x, y = data.read_split(data.acquire(data_dir), "test")  # test split: never the training digits
    uci = load_digits()
    return Sources(x.numpy(), y.numpy(), uci.images, uci.target, ensure_fonts(log))


def upsampled_shape(img: np.ndarray, factor: int) -> np.ndarray:
    """A small grey digit -> the same digit `factor` times larger, smooth, in [0, 1]."""
    img = np.pad(img.astype(np.float32) / max(float(img.max()), 1e-6), 2)
    return np.clip(cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC), 0, 1)


def _holes(shape: np.ndarray, min_area: float) -> int:
    n, _, stats, _ = cv2.connectedComponentsWithStats((~shape).astype(np.uint8), connectivity=4)
    return int((stats[1:, cv2.CC_STAT_AREA] >= min_area).sum()) - 1  # less the background around the digit


def shape_of(mask: np.ndarray, hole_area: float) -> np.ndarray:
    """Grey stroke mask -> binary shape. Of the thresholds, the one that keeps the most loops open
    (a thick 8 or 9 drawn at low resolution fills its loops at a low threshold), without breaking
    the strokes apart; ties go to the middle one."""
    best = None
    for t in sorted(SHAPE_THRESHOLDS, key=lambda t: abs(t - 0.5)):  # 0.45 first, then 0.55, ...
        shape = mask >= t * mask.max()
        n, _, stats, _ = cv2.connectedComponentsWithStats(shape.astype(np.uint8))
        big = int((stats[1:, cv2.CC_STAT_AREA] >= 0.03 * stats[1:, cv2.CC_STAT_AREA].sum()).sum())
        key = (-big, _holes(shape, hole_area))
        if best is None or key > best[0]:
            best = key, shape
    return best[1]


def font_shape(font: Path, digit: int) -> np.ndarray:
    ft = ImageFont.truetype(str(font), FONT_PX)
    img = Image.new("L", (FONT_PX * 2, FONT_PX * 2), 0)
    ImageDraw.Draw(img).text((FONT_PX // 2, FONT_PX // 4), str(digit), font=ft, fill=255)
    return np.asarray(img, np.float32) / 255


def sample_shape(rng, sources: Sources, label: int, source: str, font: Path | None = None) -> tuple[np.ndarray, int]:
    """A high-resolution stroke mask in [0, 1] of `label` from `source` ('mnist', 'uci' or 'font'),
    and the image's index in its data set (-1 for a font)."""
    if source == "font":
        return font_shape(font, label), -1
    xs, ys, factor = _dataset(sources, source)
    i = int(rng.choice(np.flatnonzero(ys == label)))
    return upsampled_shape(xs[i], factor), i


def _dataset(sources: Sources, source: str):
    return ((sources.mnist_x, sources.mnist_y, MNIST_UPSAMPLE) if source == "mnist"
            else (sources.uci_x, sources.uci_y, UCI_UPSAMPLE))


def _nearest_label(flat, ys: np.ndarray, x: np.ndarray, skip: int, k: int = 3) -> int:
    xs, norms = flat
    d = norms - 2 * (xs @ x.ravel().astype(np.float32))  # squared distance, less |x|^2
    d[skip] = np.inf  # leave the digit itself out
    return int(np.bincount(ys[np.argpartition(d, k)[:k]], minlength=10).argmax())


MIN_COVER = 0.72  # of the original's shape, that its centre line redrawn at the original's width covers


def redraw_keeps_digit(sources: Sources, source: str, i: int, mask: np.ndarray, pts: np.ndarray) -> bool:
    """False when the centre line lost the digit. Thick digits with filled loops (an 8 of 8x8 pixels,
    a heavy MNIST 6) skeletonize into another shape: redrawn at the original's own stroke width, the
    line then leaves much of the original uncovered, or it no longer looks like its label to its
    nearest neighbours among the other digits of its data set (though the original did). Those
    digits are drawn again: a pen line cannot write them."""
    if i < 0:
        return True
    xs, ys, factor = _dataset(sources, source)
    shape = mask >= 0.5 * mask.max()
    width = float(np.median(cv2.distanceTransform(shape.astype(np.uint8), cv2.DIST_L2, 5)[
        np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)]))
    cov = pen_layer(np.random.default_rng(0), pts, mask.shape, max(width, 1.0), "black", even=True)
    if (cov[shape] >= 0.5).mean() < MIN_COVER:
        return False
    small = cv2.resize(cov, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)[2:-2, 2:-2]
    flat = sources.flat[source]
    return (_nearest_label(flat, ys, xs[i], i) != ys[i]
            or _nearest_label(flat, ys, small * float(xs[i].max()), i) == ys[i])


# ------------------------------------------------------------------ centre line and pen

_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], np.float32)  # counts a pixel's 8 neighbours


def _tips(skel: np.ndarray) -> np.ndarray:
    return skel & (cv2.filter2D(skel.astype(np.float32), -1, _RING, borderType=cv2.BORDER_CONSTANT) == 1)


def prune_spurs(skel: np.ndarray, length: int) -> np.ndarray:
    """Remove skeleton branches shorter than `length` (corner spurs), keeping real stroke ends."""
    pruned = skel.copy()
    for _ in range(length):
        pruned &= ~_tips(pruned)
    grown, kernel = _tips(pruned).astype(np.uint8), np.ones((3, 3), np.uint8)
    for _ in range(length):
        grown = cv2.dilate(grown, kernel) & skel.astype(np.uint8)
    return pruned | grown.astype(bool)


HOLE_SIDE = 0.06  # a loop counts when its hole is at least this fraction of the digit's height across


def centre_line(mask: np.ndarray) -> np.ndarray:
    """Stroke mask -> (N, 2) points (x, y) along its centre line, about half a pixel apart."""
    from skimage.morphology import skeletonize

    rows = np.flatnonzero((mask >= 0.5 * mask.max()).any(1))
    hole_area = (HOLE_SIDE * (rows[-1] - rows[0] + 1)) ** 2
    shape = shape_of(mask, hole_area).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(shape)
    keep = 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= 0.03 * stats[1:, cv2.CC_STAT_AREA].sum())
    shape = np.isin(labels, keep)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~shape).astype(np.uint8), connectivity=4)
    shape |= np.isin(labels, 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < hole_area))  # pinholes: no loop
    skel = skeletonize(shape)
    half_width = float(np.median(cv2.distanceTransform(shape.astype(np.uint8), cv2.DIST_L2, 5)[skel]))
    pruned = prune_spurs(skel, int(half_width * 0.8) + 2)  # corner spurs are about a half width long
    if pruned.sum() >= 0.5 * skel.sum():  # a short thick stroke (a blob of a 1) would vanish whole
        skel = pruned
    ys, xs = np.nonzero(skel)
    pts = [np.stack([xs, ys], 1).astype(np.float32)]
    padded, (h, w) = np.pad(skel, 1), skel.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # midpoints between neighbouring skeleton pixels
        yy, xx = np.nonzero(skel & padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
        pts.append(np.stack([xx + dx / 2, yy + dy / 2], 1).astype(np.float32))
    return np.concatenate(pts)


def handwriting(rng, pts: np.ndarray, slant: float, scale=(1.0, 1.0)) -> np.ndarray:
    """Centre-line points -> the same digit as one person writes it: rotated, slanted, narrower or wider,
    normalized to size 1 (height, or 0.9 x width for a wide digit) and centred on its box."""
    pts = pts - (pts.min(0) + pts.max(0)) / 2
    pts = pts / max(float(np.ptp(pts[:, 1])), 0.9 * float(np.ptp(pts[:, 0])), 1e-6)
    ang = np.radians(rng.uniform(-10, 10))
    aspect = rng.uniform(0.8, 1.2) * scale[0]
    m = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) @ np.array(
        [[aspect, -slant], [0, scale[1]]])  # shear: x moves right as y goes up (y points down)
    pts = pts @ m.T.astype(np.float32)
    return pts - (pts.min(0) + pts.max(0)) / 2


def smooth_noise(rng, shape, cell: float) -> np.ndarray:
    """Zero-mean, unit-std noise whose features are about `cell` pixels across."""
    h, w = shape
    small = rng.standard_normal((max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return (big - big.mean()) / (big.std() + 1e-6)


PEN_WIDTH = {"blue": (1 / 25, 1 / 12), "black": (1 / 25, 1 / 12), "pencil": (1 / 35, 1 / 18)}  # of digit height
INK_TRANSMITTANCE = {  # what a fully inked spot lets the paper reflect, per RGB channel: (darkest, palest)
    "blue": ((0.10, 0.16, 0.45), (0.35, 0.42, 0.80)),
    "black": ((0.05, 0.05, 0.06), (0.25, 0.25, 0.30)),
    "pencil": ((0.40, 0.40, 0.42), (0.85, 0.85, 0.86)),  # the palest are really faint
}


def pen_layer(rng, pts_px: np.ndarray, shape, radius: float, ink: str, even: bool = False) -> np.ndarray:
    """Points (x, y) in pixels of a (h, w) crop -> ink coverage in [0, 1] of a pen of `radius` px
    following them, with the pen's own unevenness (width, pressure, skips, graphite grain) unless `even`."""
    ss = 2 if radius < 6 else 1  # supersample thin pens so their edges stay smooth
    h, w = shape
    raster = np.ones((h * ss, w * ss), np.uint8)
    xy = np.round(pts_px * ss + (ss - 1) / 2).astype(int)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < w * ss) & (xy[:, 1] >= 0) & (xy[:, 1] < h * ss)
    raster[xy[ok, 1], xy[ok, 0]] = 0
    dist = cv2.distanceTransform(raster, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) / ss
    r = radius
    if not even:  # the line's width wanders a little with pressure and speed
        r = radius * (1 + rng.uniform(0.05, 0.2) * smooth_noise(rng, raster.shape, max(h, w) * ss / 4))
    cov = cv2.resize(np.clip(r - dist + 0.5, 0, 1), (w, h), interpolation=cv2.INTER_AREA)
    if even:
        return cov
    press = np.clip(rng.uniform(0.8, 1.0) + rng.uniform(0.05, 0.2) * smooth_noise(rng, (h, w), max(h, w) / 5), 0.3, 1)
    if ink == "pencil":  # graphite catches the paper's tooth: grainy, lighter where pressed less
        grain = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 0.7)
        press = press * np.clip((grain - grain.mean()) / (grain.std() + 1e-6) * 0.25 + 0.8, 0, 1)
    else:  # a ballpoint skips now and then: short paler stretches along the stroke
        skips = np.clip(smooth_noise(rng, (h, w), max(2.0, radius * 4)) - rng.uniform(1.5, 2.5), 0, 1)
        press = press * (1 - skips * rng.uniform(0.3, 0.6))
    return (cov * press).astype(np.float32)


def digit_strokes(rng, sources: Sources, label: int, source: str, font: Path | None = None,
                  tries: int = 10) -> np.ndarray:
    """Centre-line points (x, y) of one handwritten `label` from `source`, redrawable as that digit."""
    for _ in range(tries):
        mask, i = sample_shape(rng, sources, label, source, font)
        pts = centre_line(mask)
        if len(pts) > 10 and redraw_keeps_digit(sources, source, i, mask, pts):
            break
    return pts
