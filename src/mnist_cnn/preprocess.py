"""Bring a person's image of a digit (or of a written number) into MNIST's form.

MNIST digits are white ink on black, size-normalized into a 20x20 box that keeps the
aspect ratio (grey levels from anti-aliasing), then centred by centre of mass in 28x28.
Feeding anything else to the network is the classic demo bug, so the CLI, the REST API
and the web page all go through this one module:

    images.decode -> images.luminance (alpha, 16-bit, palette, CMYK) -> polarity -> denoise,
    background (photos and scans only) -> threshold, specks -> crop at full resolution -> one
    resize to the 20x20 box -> centre

    mnist-cnn predict my_digit.jpg --save-processed processed/

Written numbers of several digits are cut into digits by `segment.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

import cv2

from . import photo, rules, sheet
from .images import luminance
from .imageops import bbox, component_boxes, components_with_stats, dilate, label_components, stroke_width

WORK_SIDE = 1024  # ink is found on a copy at most this big; a drawing's crop is taken at full resolution
BOX, FIELD = 20, 28  # MNIST: the digit's box, and the field it is centred in
CENTRE = 14.0  # mean centre of mass of the MNIST test digits, in pixel-index coordinates (measured)
MIN_CONTRAST = 0.10  # ink must stand this far (of full scale) above the paper, or the image is empty
NOISE_PEAK, NOISE_INK = 4.0, 2.5  # ...and this many times the paper's noise; ink pixels this many times
MIN_SIDE = 0.03  # a digit spans at least this fraction of the image's longer side
# Ink strength is measured against the median stroke pixel (LEVEL_PCT), which maps to white; FLOOR of
# it maps to black (paper noise and blur skirts), and THRESH of it separates ink from paper. Tuned on
# the round trip of benchmarks/roundtrip.py (mean pixel distance 7.1 -> 6.7 against 75, 0, 0.45).
LEVEL_PCT, FLOOR, THRESH = 50, 0.25, 0.5
RULE_LEVEL = 0.125  # rules are looked for in ink at least this x THRESH as strong as the strongest (a sixteenth;
# at an eighth, faint rules beside a bold digit reached the mask as dashes, too broken to be found)
LOW, GRAIN = 0.2, 4.0  # a photo's candidate digits are found down to LOW x the page's strongest ink's
# level, but not among the paper's mottling (GRAIN robust deviations above its typical strength)
STROKE, THIN = 1.8, 0.6  # MNIST's median `stroke_width` (px, at >= 128 of 255; measured); thinner than
# THIN x that, a stroke is thickened, as a fine pen on a large photo would otherwise vanish in the resize
SPECK = 0.03  # components smaller than this fraction of the largest one are specks
OPEN_CORE = 0.6  # output pixels of depth that a loop keeps open (about one across) when thickened or scaled


# --------------------------------------------------------------------- ink


@dataclass
class Page:
    """Where the ink is: found on a working copy reduced `factor` times, kept next to the full image."""

    full: np.ndarray  # (H, W) full-resolution luminance
    invert: bool  # dark ink on light paper
    factor: int  # working copy = full reduced this many times
    ink: np.ndarray  # working copy: ink-positive, denoised, paper subtracted
    background: np.ndarray  # paper level on the working copy
    level: float  # a typical stroke's strength above the paper (maps to white)
    threshold: float  # ink / paper split, on `ink`
    labels: np.ndarray  # components of the kept ink (0 = none)
    count: int
    shear: tuple[float, int] | None = None  # (lean, pad) when sheared upright (`segment.upright`), else None


def find_ink(img: Image.Image, several: bool = False) -> Page | None:
    """Locate the ink, or None when there is none (a blank or uniform image).

    Photos and scans go through the photo steps (sheet, light, rules, the digit's components);
    `several` keeps every digit of a written number rather than the one in the middle of the frame.
    """
    full = luminance(img)
    f = max(1, math.ceil(max(full.shape) / WORK_SIDE))
    h, w = full.shape[0] // f * f, full.shape[1] // f * f
    if min(h, w) < 3 * f:  # too small to hold a digit
        return None
    small = full[:h, :w].reshape(h // f, f, w // f, f).mean((1, 3))  # block means: also a denoiser
    border = float(np.median(_ring(small)))  # the page's edge is almost always paper
    invert = border - small.min() > small.max() - border
    x = 1 - small if invert else small
    # A drawing (a canvas, a screenshot) has paper of exactly one value over most of the image:
    # nothing to denoise and no lighting to model, and skipping both saves most of the time here.
    paper = 1 - border if invert else border
    if np.count_nonzero(x == paper) * 2 <= x.size:
        return _photo_ink(img, full, invert, several)
    d = x - paper
    peak = float(d.max())
    if peak < MIN_CONTRAST:
        return None
    level = float(np.percentile(d[d > 0.3 * peak], LEVEL_PCT))
    threshold = THRESH * level
    labels, n = label_components(d > threshold)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = areas >= max(2, SPECK * areas.max())
    keep &= ~_frames(labels, n, keep)
    extent = component_boxes(labels, n)
    longest = np.maximum(extent[:, 1] - extent[:, 0], extent[:, 3] - extent[:, 2])
    if not (keep & (longest >= max(MIN_SIDE * max(x.shape), 3))).any():  # only dust: no digit
        return None
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[1:][keep] = np.arange(1, keep.sum() + 1)
    return Page(full, invert, f, d, np.full_like(d, paper), level, threshold, lut[labels], int(keep.sum()))


def _ring(x: np.ndarray) -> np.ndarray:
    """The pixels along the image's edge."""
    return np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])


def _photo_ink(img: Image.Image, full: np.ndarray, invert: bool, several: bool) -> Page | None:
    """The photo steps (`sheet.py`, `photo.py`, `rules.py`), on a working copy at most WORK_SIDE pixels on a side."""
    rgb = _rgb(img, full)
    s = WORK_SIDE / max(rgb.shape[:2])
    if s < 1:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)), interpolation=cv2.INTER_AREA)
    # A sheet on a desk is flattened (or, when its outline is no clean quadrilateral, the desk around
    # it ignored); the ink on it is dark, whatever the frame's edge, which is the desk, suggests.
    found = sheet.find_sheet(rgb)
    if found is None:
        return _ink_on(rgb, full, invert, several)
    mask, corners = found
    if corners is not None:
        page = _ink_on(sheet.flatten_sheet(rgb, corners), full, invert, several, on_sheet=True)
    else:
        outside = cv2.dilate((~mask).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        page = _ink_on(rgb, full, invert, several, outside=outside)
    # No ink on the "sheet": a hard shadow over coloured paper looks like desk, and the digit may lie
    # in it. The whole frame is then read as paper, as if no desk showed.
    return page if page is not None else _ink_on(rgb, full, invert, several)


def _ink_on(rgb: np.ndarray, full: np.ndarray, invert: bool, several: bool, on_sheet: bool = False,
            outside: np.ndarray | None = None) -> Page | None:
    """The ink on `rgb`, the photo (or its flattened sheet); pixels `outside` the sheet are not looked at."""
    sheet = on_sheet or outside is not None  # a desk shows: the ink on the sheet is dark
    # The frame's edge says light ink on a dark ground when the desk or a shadow lies along it; the
    # bulk of the image, brighter than that edge, or thin dark strokes then say otherwise.
    grey = photo.ink_channel(rgb)  # once: both the polarity test and the light evening read it
    if sheet or invert or np.median(full) > np.median(_ring(full)) + 0.05 or photo.dark_ink(grey):
        strength = photo.even_light(grey)
    else:
        strength = photo.light_on_dark(rgb.max(axis=2).astype(np.float32) / 255)
    if outside is not None:
        strength[outside] = 0
    noise = photo.noise_level(strength)
    blurred = cv2.medianBlur(strength, 3)  # the strongest ink, without single-pixel outliers
    peak = float(blurred.max())
    if peak < max(MIN_CONTRAST, NOISE_PEAK * noise):
        return None
    if sheet:  # slivers of desk or shadow along the sheet's edge are no ink: they must not set the levels,
        # or faint pencil on the sheet falls below them
        inner = photo.off_frame(blurred > 0.3 * peak)
        peak = float(blurred[inner].max()) if inner.any() else peak
    sample = strength[::2, ::2]
    middle = float(np.median(sample))  # of the paper, and its own mottling, as robust spread: ink is a minority
    grain = middle + GRAIN * 1.4826 * float(np.median(np.abs(sample - middle)))
    across, down = rules.rule_lines(strength > max(NOISE_INK * noise, RULE_LEVEL * THRESH * peak, grain))
    printed = across | down
    strong = (strength > 0.3 * peak) & ~printed
    inner = photo.off_frame(strong) if sheet else strong
    strong = inner if inner.any() else strong
    if not strong.any():
        return None
    level = float(np.percentile(strength[strong], LEVEL_PCT))
    # The digit is chosen among candidates found at a low threshold, so that faint pencil is seen
    # beside stronger ink elsewhere (a desk's edge, a heading); then its own ink sets the level.
    low = max(NOISE_INK * noise, LOW * level, grain)
    # The rules were measured at the higher threshold; at this one their blurred edges reach a pixel
    # further, and left behind they are slivers along every line that join the digit piece by piece.
    wide = tuple(cv2.dilate(r.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) for r in (across, down))
    candidates = rules.remove_rules(strength > low, wide, strength, level)
    strength = np.where(printed & ~candidates, 0, strength).astype(np.float32)  # the rules' grey levels go too
    labels, stats, widths = photo.components(candidates)
    chosen = photo.choose(labels, stats, widths, photo.stroke_like(stats, widths, labels.shape), several)
    digit = chosen[labels]
    if not digit.any():
        return None
    level = float(np.percentile(strength[digit], LEVEL_PCT))
    threshold = max(THRESH * level, NOISE_INK * noise)
    # The components' areas come with their labels (a bincount over the frame cost as much again).
    n, labels, stats = components_with_stats(digit & (strength > threshold))
    n, areas = n - 1, stats[1:, cv2.CC_STAT_AREA]
    lut = np.zeros(n + 1, dtype=np.int32)  # the grain that the digit's own threshold leaves is specks
    keep = areas >= max(2, SPECK * areas.max(initial=0))
    lut[1:][keep] = np.arange(1, keep.sum() + 1)
    labels, n = lut[labels], int(keep.sum())
    extent = component_boxes(labels, n)
    longest = np.maximum(extent[:, 1] - extent[:, 0], extent[:, 3] - extent[:, 2])
    if not (longest >= max(MIN_SIDE * max(labels.shape), 3)).any():  # only dust: no digit
        return None
    return Page(strength, True, 1, strength, np.zeros_like(strength), level, threshold, labels, n)


def _rgb(img: Image.Image, lum: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 for the photo steps: the colours of a colour image, else its luminance (in
    which transparency is already composited onto paper)."""
    if img.mode in ("RGB", "CMYK", "YCbCr", "P") and "transparency" not in img.info:
        return np.asarray(img.convert("RGB"))
    grey = np.round(np.clip(lum, 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _frames(labels: np.ndarray, n: int, keep: np.ndarray) -> np.ndarray:
    """Components that touch the edge and span most of it (a paper's edge, a frame, a table), unless
    they are all the ink there is (a drawing that fills its canvas)."""
    h, w = labels.shape
    y0, y1, x0, x1 = component_boxes(labels, n).T
    touches = (y0 == 0) | (x0 == 0) | (y1 == h) | (x1 == w)
    frames = keep & touches & ((y1 - y0 > 0.9 * h) | (x1 - x0 > 0.9 * w))
    return frames if (keep & ~frames).any() else np.zeros(n, dtype=bool)


def render(page: Page, mask: np.ndarray) -> torch.Tensor:
    """The ink under `mask` (working-copy coordinates) as an MNIST digit: (28, 28) uint8."""
    y0, y1, x0, x1 = bbox(mask)
    r = max(1, math.ceil(max(y1 - y0, x1 - x0) / BOX))  # about one output pixel: room for anti-aliased edges
    hs, ws = page.ink.shape
    y0, y1, x0, x1 = max(0, y0 - r), min(hs, y1 + r), max(0, x0 - r), min(ws, x1 + r)
    keep = dilate(mask[y0:y1, x0:x1], r)
    f = page.factor
    if f == 1:  # the working copy is the full image, already denoised
        ink = page.ink[y0:y1, x0:x1]
    else:  # crop at full resolution, so the only downscale is the one to the 20x20 box
        crop = page.full[y0 * f:y1 * f, x0 * f:x1 * f]
        paper = page.background[y0:y1, x0:x1].repeat(f, 0).repeat(f, 1)
        ink = (1 - crop if page.invert else crop) - paper
        keep = keep.repeat(f, 0).repeat(f, 1)
    v = np.clip((ink / page.level - FLOOR) / (1 - FLOOR), 0, 1) * keep  # grey levels kept, specks and paper zeroed
    cut = (page.threshold / page.level - FLOOR) / (1 - FLOOR)
    inked = v > cut
    pockets, _, enclosed = _pockets(inked.astype(np.uint8))
    loops = np.where(enclosed[pockets], pockets, 0)  # each loop's label, before the thickening below closes it
    by0, by1, bx0, bx1 = bbox(inked if inked.any() else keep)
    scale = BOX / max(by1 - by0, bx1 - bx0)
    width = stroke_width(inked) * scale  # in output pixels
    r = 0
    if width < THIN * STROKE:  # a fine pen on a big page: thicken to MNIST's typical stroke
        r = round((STROKE - width) / 2 / scale)
        if r >= 1:
            v = dilate(v, r, grow=True)
            inked = v > cut
            by0, by1, bx0, bx1 = bbox(inked if inked.any() else keep)
            scale = BOX / max(by1 - by0, bx1 - bx0)
    m = math.ceil(1.5 / scale)  # keep 1.5 output pixels of faint edge around the box
    by0, bx0, by1, bx1 = max(0, by0 - m), max(0, bx0 - m), by1 + m, bx1 + m
    patch = v[by0:by1, bx0:bx1]
    size = (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale)))
    # Area averaging (BOX) when shrinking: MNIST's own anti-aliasing is about that sharp; a
    # bilinear kernel spans two output pixels and blurs every stroke. Bilinear when enlarging.
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(patch.astype(np.float32), "F").resize(size, method))
    # A narrow 8's loops, 2 px wide at 28x28, were filled in by the thickening and the scaling, and its blob
    # was read as a 1 at 100%: each loop keeps an open core, and no output pixel is more inked than the
    # share of it outside that core.
    if loops.any():
        core = np.pad(_cores(loops, r, OPEN_CORE / scale), r)[by0:by1, bx0:bx1]
        hole = np.asarray(Image.fromarray(core.astype(np.float32), "F").resize(size, method))
        small = np.minimum(small, 1 - hole)
    return centre(torch.from_numpy(np.clip(small, 0, 1).astype(np.float32)))


def _cores(loops: np.ndarray, r: int, least: float) -> np.ndarray:
    """Of the paper that ink encloses (`loops`: a label per loop, 0 elsewhere), what stays open when the ink
    is thickened by r pixels: the paper further than r from the ink, or, in a loop too narrow for that, all
    but `least` pixels of its depth (its middle, `least` deep), so that it stays open however it is thickened."""
    inside = loops > 0
    depth = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3)
    deepest = np.zeros(int(loops.max()) + 1, np.float32)
    np.maximum.at(deepest, loops[inside], depth[inside])
    return depth > np.minimum(r, np.maximum(0, deepest - least))[loops]


def centre(patch: torch.Tensor) -> torch.Tensor:
    """Paste a float patch (h, w) in [0, 1] into 28x28 with its centre of mass at MNIST's; -> uint8."""
    h, w = patch.shape
    total = patch.sum().clamp(min=1e-6)
    cy = float((patch.sum(1) * torch.arange(h)).sum() / total)
    cx = float((patch.sum(0) * torch.arange(w)).sum() / total)
    top, left = round(CENTRE - cy), round(CENTRE - cx)
    out = torch.zeros(FIELD, FIELD)
    sy0, sx0 = max(0, -top), max(0, -left)  # clip whatever falls outside the field
    sy1, sx1 = min(h, FIELD - top), min(w, FIELD - left)
    out[top + sy0:top + sy1, left + sx0:left + sx1] = patch[sy0:sy1, sx0:sx1]
    return (out * 255).round().to(torch.uint8)


# What MNIST digits look like in 28x28, measured on the training digits (pixels >= 128): 99.99% cover at
# most 35% of the field, none is over 2.0 times as wide as tall, 99.98% are in at most 3 pieces, and 99.99%
# of 20,000 have at most 3 holes (an 8 has two).
MAX_COVER, MAX_ASPECT, MAX_PIECES, MAX_HOLES = 0.35, 2.1, 3, 3


def doubt(x: torch.Tensor) -> str | None:
    """Why an MNIST-form (28, 28) uint8 image is no digit the network can be trusted on, or None.

    The network answers confidently for anything, so the ink's shape is checked against MNIST's own:
    a blob (a thumb, a stain) covers too much of the field, a line fragment or several digits are
    too wide, and a scribble or speckle falls in too many pieces.
    """
    ink = (x.numpy() >= 128).astype(np.uint8)
    if not ink.any():
        return "no ink left after preprocessing"
    if ink.mean() > MAX_COVER:
        return "a blob, not a pen stroke"
    ys, xs = np.nonzero(ink)
    if (xs.max() - xs.min() + 1) > MAX_ASPECT * (ys.max() - ys.min() + 1):
        return "too wide for one digit (several digits, or a line?)"
    _, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    if int((stats[1:, cv2.CC_STAT_AREA] >= 3).sum()) > MAX_PIECES:
        return "in too many pieces for one digit"
    if int((_holes(ink) >= 2).sum()) > MAX_HOLES:
        return "full of holes, like a grid, not a digit"
    return None


# Measured on MNIST's 60,000 training digits (pixels >= 128): no 1 encloses a hole of 4 pixels or more,
# while 94% of the 8s and 89% of the 0s do. The network does not see topology: a narrow 8 from a photo,
# its loops squeezed, was read as "1" at 96%. Ink with a loop is no 1. (Not a 7 either, for 99.8% of
# MNIST's, but one of the 43 UCI writers crosses the 7 in a loop: 4 of their 7s would be unsure.)
LOOPLESS, MIN_LOOP = (1,), 4


def contradicts(x: torch.Tensor, digit: int) -> str | None:
    """Why `digit` cannot be the ink of the MNIST-form (28, 28) uint8 image x, or None."""
    if digit not in LOOPLESS:
        return None
    loop = _holes((x.numpy() >= 128).astype(np.uint8))
    if loop.size and int(loop.max()) >= MIN_LOOP:
        return f"the ink encloses a loop, which a {digit} has not (an 8, 0 or 6 drawn narrow?)"
    return None


def _holes(ink: np.ndarray) -> np.ndarray:
    """The areas of the paper that ink (a 0/1 uint8 image) encloses: its holes, not the outside."""
    _, gaps, inner = _pockets(ink)
    return gaps[inner, cv2.CC_STAT_AREA]


def _pockets(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper of a 0/1 uint8 ink image in 4-connected pieces: (labels, stats, which pieces the ink
    encloses: bool, False for the ink's label 0 and for paper that reaches the image's edge)."""
    _, labels, gaps, _ = cv2.connectedComponentsWithStats(1 - ink, connectivity=4)
    x, y, w, h = (gaps[:, i] for i in range(4))
    inner = (x > 0) & (y > 0) & (x + w < ink.shape[1]) & (y + h < ink.shape[0])
    inner[0] = False
    return labels, gaps, inner


def to_mnist(img: Image.Image) -> torch.Tensor | None:
    """One digit -> (28, 28) uint8, white ink on black, as MNIST; None when the image has no ink."""
    page = find_ink(img)
    if page is None or page.count == 0:
        return None
    return render(page, page.labels > 0)
