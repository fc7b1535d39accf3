"""The photo steps: a phone photo of a page -> where the ink is, on flat and evenly lit paper.

Each step is a pure function of arrays, built on OpenCV, and is named after what it does:

    (sheet.py: find_sheet -> flatten_sheet) -> even_light -> (rules.py: rule_lines / remove_rules)
    -> stroke_like -> choose

`preprocess.find_ink` runs them for photos and scans; drawings (paper of one exact value) skip
them. Ink is "strength": 0 on paper, 1 for ink that takes all the light.

    mnist-cnn predict photo_of_a_seven.jpg --save-processed processed/
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .imageops import components_with_stats

SMALL_SIDE = 256  # features that are large beside strokes are looked for on a copy this big
LIGHT_KERNEL = 1 / 20  # of the longer side, the least width of the closing that finds the paper (which is
# 2.5 times the widest strokes): wide enough for any pen, narrow enough to follow a curved shadow's edge
INK_CONTRAST = 0.06  # ink stands at least this far from the paper (of full scale), to tell its polarity...
POLARITY_WIDTHS, POLARITY_EVIDENCE = (1 / 50, 1 / 25, 1 / 12), 0.001  # ...in strokes up to these widths (of
# the longer side), the thinnest first, once one polarity shows on this share of the pixels with twice the
# other's summed contrast (a 1 a fifth of the frame high and 1/50 of it wide shows on about 0.3%)
CLEAR_INK = 0.15  # ink strength that is surely ink, to measure the strokes by
SPECK = 0.04  # components under this fraction of the largest are specks
ANCHORS, ANCHOR_MARGIN = 3, 1.5  # one digit is grown from each of this many of the biggest components; a
# growth from another than the biggest is kept when it holds this many times the ink
PEN_SHARE = 0.1  # the boldest stroke a digit's ink is counted at, of its longest side (a fine pen's 1 was 0.08,
# the wedge of hard shadow beside it 0.32: bolder strokes still count, at this width)
BLOB_FILL, BLOB_DEPTH, BLOB_ASPECT = 0.7, 0.8, 2.5  # a blob fills this much of its box, is this thick for
# its shorter side, and is no longer than this for its width: a stain or a thumb (a 6 with its loop inked in
# fills far less of its box; a 1 is longer)


def odd(n: float) -> int:
    return max(3, int(n) // 2 * 2 + 1)


# ------------------------------------------------------------------- the light


def ink_channel(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32 in [0, 1]: luma, where ink of every colour shows. (The darkest
    channel shows coloured ink better, but a JPEG keeps colour at half resolution, in blocks that
    a shadow's strong colour turns into false ink.)"""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255


def even_light(grey: np.ndarray) -> np.ndarray:
    """Dark ink on light paper, (H, W) float32 -> ink strength in [0, 1] with the lighting divided out.

    The paper's brightness is a morphological closing with a kernel wider than any stroke: it
    removes the ink and keeps every change of light, soft or hard (a shadow's edge is a step,
    which a closing reproduces exactly). Dividing by it leaves 0 on paper, in sun and shade alike.
    """
    smooth = cv2.GaussianBlur(grey, (0, 0), 1.0)  # noise would bias the closing's maxima upwards
    k = _light_kernel(smooth, dark_ink=True)
    strength = _divide(smooth, k)
    # Once the strokes are seen, a closing just wider than them follows the paper more closely: its
    # grain and mottling, a curved shadow's edge. Only clear ink is measured, and only to narrow.
    clear = (strength > max(CLEAR_INK, 4 * noise_level(strength))).astype(np.uint8)
    depth = cv2.distanceTransform(clear, cv2.DIST_L2, 3)[clear > 0]
    if depth.size:
        narrow = odd(max(2.5 * 2 * float(np.percentile(depth, 95)) + 3, 9))
        if narrow < k:
            strength = _divide(smooth, narrow)
    return strength


def _divide(smooth: np.ndarray, k: int) -> np.ndarray:
    """Ink strength: 1 - brightness over the paper's, the paper being a closing of side k."""
    paper = cv2.morphologyEx(smooth, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)),
                             borderType=cv2.BORDER_REFLECT)
    return np.clip(1 - smooth / np.maximum(paper, 1e-3), 0, 1)


def _light_kernel(smooth: np.ndarray, dark_ink: bool) -> int:
    """A kernel side for the lighting model: LIGHT_KERNEL of the image, or wider than its widest
    strokes (a thick marker on a tight crop). Strokes are measured on a local-mean threshold, leaving
    out what touches the frame: a shadow's edge or a vignette comes in from outside, a digit does not.
    Capped, so that the light's own changes still show."""
    side = max(smooth.shape)
    u8 = np.round(smooth * 255).astype(np.uint8)
    mask = cv2.adaptiveThreshold(u8, 1, cv2.ADAPTIVE_THRESH_MEAN_C,
                                 cv2.THRESH_BINARY_INV if dark_ink else cv2.THRESH_BINARY, odd(side / 4), 8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats = components_with_stats(mask)
    x, y, w, h = (stats[:, i] for i in range(4))
    framed = (x == 0) | (y == 0) | (x + w == mask.shape[1]) | (y + h == mask.shape[0])
    depth = cv2.distanceTransform(mask, cv2.DIST_L2, 3)[~framed[labels] & (labels > 0)]
    width = 2 * float(np.percentile(depth, 95)) if depth.size else 0.0
    return odd(min(max(LIGHT_KERNEL * side, 2.5 * width + 3), side / 3))


def light_on_dark(grey: np.ndarray) -> np.ndarray:
    """Light ink on dark ground (chalk, a screenshot), (H, W) float32 -> ink strength: the ground is
    a morphological opening, and subtracted."""
    smooth = cv2.GaussianBlur(grey, (0, 0), 1.0)
    k = _light_kernel(smooth, dark_ink=False)
    ground = cv2.morphologyEx(smooth, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)),
                              borderType=cv2.BORDER_REFLECT)
    return np.clip(smooth - ground, 0, 1)


def dark_ink(grey: np.ndarray) -> bool:
    """Are there dark strokes (a black top-hat) rather than bright ones, on a small copy? A shadow's
    edge or the desk is neither. The thinnest features are looked at first: they are thinner than
    the cells of squared paper, which are bright between their lines. Where a scale shows too few
    of either to tell (a bold or faint stroke, and beside it a sliver of light pinched between the
    stroke and a shadow's edge), bolder ones are looked at; where none does, the ink is dark, as on
    almost every sheet of paper."""
    s = SMALL_SIDE / max(grey.shape)
    small = cv2.resize(grey, (max(1, round(grey.shape[1] * s)), max(1, round(grey.shape[0] * s))),
                       interpolation=cv2.INTER_AREA) if s < 1 else grey
    for width in POLARITY_WIDTHS:
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (odd(max(small.shape) * width),) * 2)
        dark = cv2.morphologyEx(small, cv2.MORPH_BLACKHAT, kernel)
        bright = cv2.morphologyEx(small, cv2.MORPH_TOPHAT, kernel)
        dark, bright = dark[dark > INK_CONTRAST], bright[bright > INK_CONTRAST]
        shown = max(dark.size, bright.size)
        dark, bright = float(dark.sum()), float(bright.sum())
        if shown >= POLARITY_EVIDENCE * small.size and max(dark, bright) >= 2 * min(dark, bright):
            return dark > bright
    return True


def noise_level(strength: np.ndarray) -> float:
    """The paper's noise: a robust spread of neighbour differences (edges and ink are outliers)."""
    diff = np.diff(strength[::3], axis=1)[:, ::3]
    return 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2)


# ------------------------------------------------------------------- choosing the digit


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components: labels (H, W) int32, stats (n, 5) (x, y, w, h, area) and, per
    component, twice its deepest point (the widest stroke it holds), index 0 the background."""
    n, labels, stats = components_with_stats(mask)
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    deepest = np.zeros(n, np.float32)
    ink = labels > 0
    np.maximum.at(deepest, labels[ink], depth[ink])
    return labels, stats, 2 * deepest


def touches_frame(stats: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which components (rows of connectedComponentsWithStats) reach the frame's edge."""
    x, y, bw, bh = (stats[:, i] for i in range(4))
    return (x <= 1) | (y <= 1) | (x + bw >= shape[1] - 1) | (y + bh >= shape[0] - 1)


def off_frame(mask: np.ndarray) -> np.ndarray:
    """`mask` less its components that reach the frame's edge."""
    labels, stats, _ = components(mask)
    inner = ~touches_frame(stats, mask.shape)
    inner[0] = False
    return inner[labels]


def stroke_like(stats: np.ndarray, width: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which components (1..n; index 0 is False) may be pen strokes: not specks, not blobs (too
    thick for their size: a thumb, a hole, a stain), and not long thin lines left over from rules
    or a paper's edge."""
    h, w = shape
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    longest = np.maximum(bw, bh)
    ok = np.ones(len(stats), bool)
    ok[0] = False
    inside = ~touches_frame(stats, shape)
    inside[0] = False
    # Specks are small beside the biggest ink inside the frame: a desk's grain along the edge sets no scale.
    big = area[inside].max() if inside.any() else area[1:].max(initial=0)
    ok &= area >= max(4, SPECK * big)
    shortest = np.maximum(np.minimum(bw, bh), 1)
    ok &= ~((area >= BLOB_FILL * bw * bh) & (width >= BLOB_DEPTH * shortest) & (longest <= BLOB_ASPECT * shortest)
            & (shortest > 8))
    line = ((bw > 0.6 * w) & (bh < 0.08 * h)) | ((bh > 0.6 * h) & (bw < 0.08 * w))
    return ok & ~line


def choose(labels: np.ndarray, stats: np.ndarray, width: np.ndarray, keep: np.ndarray, several: bool) -> np.ndarray:
    """The ink that is the digit (or, `several`, the number): bool (n,) over components.

    A person frames the digit: its strokes are long, near the middle of the frame, and do not touch the
    border (a sheet's edge, a cut-off scrawl). `width` is each component's widest stroke (`components`).
    The few longest such components are each grown by the pieces near them that stay clear of the frame's
    edge (a 5's detached bar, a stroke broken by a grid's line); for a number, by the
    components of a like height along its line too, one after another. The growth that holds the
    most ink, weighted towards the middle, is the digit: a digit in pieces outweighs its biggest piece.
    """
    h, w = labels.shape
    x, y, bw, bh, area = (stats[:, i].astype(np.float64) for i in range(5))
    cx, cy = x + bw / 2, y + bh / 2
    border = touches_frame(stats, labels.shape)
    off = np.hypot((cx - w / 2) / w, (cy - h / 2) / h)
    # Ink is weighed as if no stroke were bolder than PEN_SHARE of its component's longest side: a wedge of
    # hard shadow holds more pixels than a fine pen's digit, but is no stroke (a 1 was read as the wedge, a 7).
    ink = area * np.minimum(1, PEN_SHARE * np.maximum(bw, bh) / np.maximum(width, 1))
    score = np.where(keep, ink * np.exp(-(off / 0.35) ** 2), -1)
    if (keep & ~border).any():  # ink cut by the frame (a desk's grain, a sheet's edge) only when nothing else
        score[border] = -1
    if score.max() <= 0:
        return np.zeros(len(stats), bool)
    anchors = [int(i) for i in np.argsort(-score)[:1 if several else ANCHORS] if score[i] > 0]
    grown, framed = zip(*(_grow(a, stats, keep, border, several) for a in anchors))
    # Another growth must hold clearly more ink than the biggest piece's, and stay clear of the frame's
    # edge (ink that runs into it is the desk, or a sheet's edge, not a framed digit).
    weight = [float(np.maximum(score, 0)[chosen].sum()) * (i == 0 or not edge)
              for i, (chosen, edge) in enumerate(zip(grown, framed))]
    best = int(np.argmax(weight))
    return grown[best] if weight[best] > ANCHOR_MARGIN * weight[0] else grown[0]


def _grow(anchor: int, stats: np.ndarray, keep: np.ndarray, border: np.ndarray,
          several: bool) -> tuple[np.ndarray, bool]:
    """The components that join `anchor`, one after another: (bool (n,), whether ink that reaches the frame's
    edge came within their reach)."""
    x, y, bw, bh = (stats[:, i].astype(np.float64) for i in range(4))
    chosen = np.zeros(len(stats), bool)
    chosen[anchor] = True
    edge = bool(border[anchor])
    grown = True
    while grown:
        grown = False
        top, bottom = y[chosen].min(), (y + bh)[chosen].max()
        left, right = x[chosen].min(), (x + bw)[chosen].max()
        height = bottom - top
        for i in np.nonzero(keep & ~chosen)[0]:
            gap_x = max(left - (x[i] + bw[i]), x[i] - right, 0)
            gap_y = max(top - (y[i] + bh[i]), y[i] - bottom, 0)
            # A number's pieces are near one digit, not the whole line: else each piece joined widens
            # the reach, and stray ink (a grid's leftovers) joins piece by piece.
            reach = 0.25 * (bh[anchor] if several else height)
            # Ink that reaches the frame's edge (a sheet's outline, a grid line the rule finder missed) is no
            # piece of a framed digit, however near its box comes: its box may hold the whole digit.
            near = gap_x <= reach and gap_y <= reach
            edge |= bool(near and border[i])
            near &= border[anchor] or not border[i]
            in_line = (several and gap_x <= 1.2 * height and gap_y <= 0.1 * height
                       and 0.3 * height <= bh[i] <= 1.8 * height and not border[i])
            if near or in_line:
                chosen[i] = grown = True
    return chosen, edge
