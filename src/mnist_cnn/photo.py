"""The photo steps: a phone photo of a page -> where the ink is, on flat and evenly lit paper.

Each step is a pure function of arrays, built on OpenCV, and is named after what it does:

    find_sheet -> flatten_sheet -> even_light -> rule_lines / remove_rules -> stroke_like -> choose

`preprocess.find_ink` runs them for photos and scans; drawings (paper of one exact value) skip
them. Ink is "strength": 0 on paper, 1 for ink that takes all the light.

    mnist-cnn predict photo_of_a_seven.jpg --save-processed processed/
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SHEET_SIDE = 256  # the sheet is looked for on a copy this big: its outline is a large feature
SHEET_MIN, SHEET_MAX = 0.12, 0.96  # as a fraction of the frame: smaller is no sheet, larger is no desk
DESK_DARK = 0.5  # of the paper's lightness (L*; 0.15 of its luminance): darker is desk (a hard shadow can reach 0.6)
DESK_CHROMA = 14.0  # Lab chroma units from the paper's own colour: a wooden desk, a coloured mat
LIGHT_KERNEL = 1 / 20  # of the longer side, the least width of the closing that finds the paper (which is
# 2.5 times the widest strokes): wide enough for any pen, narrow enough to follow a curved shadow's edge
RULE_SPAN = 0.6  # a ruled line is straight over at least this fraction of the frame's shorter side...
RULE_PIECE, RULE_BEND, RULE_TURN, RULE_GAP = 0.2, 0.006, 8.0, 0.02  # it may be found in pieces this long (of the shorter
# side) that continue one another: no further than this (of the longer side) off each other's lines, at
# most this many degrees apart (a sheet that does not lie flat bends its rules)
RULE_THICK = 0.02  # ...and at most this thick, blur included (fraction of the longer side, >= 3 px)
RULE_SOLID = 0.35  # a rule's centre line is inked at least this much of its length (gaps where it is faint)
RULE_DARKER = 1.4  # pen ink on a rule is kept when the pen's ink is this much stronger than the print
INK_CONTRAST = 0.06  # ink stands at least this far from the paper (of full scale), to tell its polarity
CLEAR_INK = 0.15  # ink strength that is surely ink, to measure the strokes by
SPECK = 0.04  # components under this fraction of the largest are specks
BLOB_FILL, BLOB_DEPTH, BLOB_ASPECT = 0.7, 0.8, 2.5  # a blob fills this much of its box, is this thick for
# its shorter side, and is no longer than this for its width: a stain or a thumb (a 6 with its loop inked in
# fills far less of its box; a 1 is longer)


def odd(n: float) -> int:
    return max(3, int(n) // 2 * 2 + 1)


# ------------------------------------------------------------------- the sheet


def find_sheet(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(H, W, 3) uint8 -> (mask of the sheet, its four corners or None), or None when no desk shows.

    Paper is the bright region of one colour: the desk is darker than even a shadowed page
    (DESK_DARK), or of another colour (a wooden desk). The sheet is the largest paper-like region,
    made convex; its corners are given when its outline is a clean quadrilateral.
    """
    h, w = rgb.shape[:2]
    s = SHEET_SIDE / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    light, chroma = lab[..., 0], np.hypot(lab[..., 1] - 128, lab[..., 2] - 128)
    bright = float(np.percentile(light, 90))
    paper_chroma = float(np.median(chroma[light >= 0.85 * bright]))
    paper = ((light > DESK_DARK * bright) & (np.abs(chroma - paper_chroma) < DESK_CHROMA)).astype(np.uint8)
    paper = cv2.morphologyEx(paper, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))  # ink is not desk
    paper = cv2.morphologyEx(paper, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))  # nor are desk highlights
    n, labels, stats, _ = cv2.connectedComponentsWithStats(paper, connectivity=4)
    if n < 2:
        return None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours((labels == biggest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    if not SHEET_MIN < cv2.contourArea(hull) / (small.shape[0] * small.shape[1]) < SHEET_MAX:
        return None
    mask = np.zeros(small.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    quad = cv2.approxPolyDP(hull, 0.03 * cv2.arcLength(hull, True), True)
    corners = _order(quad.reshape(-1, 2).astype(np.float32) / s) if len(quad) == 4 else None
    return mask, corners


def _order(pts: np.ndarray) -> np.ndarray:
    """Four points -> top-left, top-right, bottom-right, bottom-left."""
    by_sum, by_diff = pts.sum(1), pts[:, 1] - pts[:, 0]
    return np.array([pts[np.argmin(by_sum)], pts[np.argmin(by_diff)], pts[np.argmax(by_sum)],
                     pts[np.argmax(by_diff)]], dtype=np.float32)


def flatten_sheet(img: np.ndarray, corners: np.ndarray, margin: float = 0.015) -> np.ndarray:
    """Warp the sheet inside `corners` (tl, tr, br, bl) to a rectangle, trimming `margin` of each side
    so that no sliver of desk or of the paper's edge comes along."""
    tl, tr, br, bl = corners
    w = int(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl)))
    h = int(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr)))
    mx, my = margin * w, margin * h
    target = np.array([[-mx, -my], [w - 1 + mx, -my], [w - 1 + mx, h - 1 + my], [-mx, h - 1 + my]], np.float32)
    warp = cv2.getPerspectiveTransform(corners, target)
    return cv2.warpPerspective(img, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


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
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
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
    """Are there thin dark strokes (a black top-hat) rather than thin bright ones, on a small copy?
    A shadow's edge or the desk is neither. The features are thinner than the cells of squared
    paper, which are bright between their lines."""
    s = SHEET_SIDE / max(grey.shape)
    small = cv2.resize(grey, (max(1, round(grey.shape[1] * s)), max(1, round(grey.shape[0] * s))),
                       interpolation=cv2.INTER_AREA) if s < 1 else grey
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (odd(max(small.shape) / 50),) * 2)
    dark = cv2.morphologyEx(small, cv2.MORPH_BLACKHAT, kernel)
    bright = cv2.morphologyEx(small, cv2.MORPH_TOPHAT, kernel)
    return float(dark[dark > INK_CONTRAST].sum()) >= float(bright[bright > INK_CONTRAST].sum())


def noise_level(strength: np.ndarray) -> float:
    """The paper's noise: a robust spread of neighbour differences (edges and ink are outliers)."""
    diff = np.diff(strength[::3], axis=1)[:, ::3]
    return 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2)


# ------------------------------------------------------------------- ruled lines


def rule_lines(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of ruled lines and grid lines in an ink mask: bool (H, W) -> (the rules that run
    across, the rules that run down), each bool (H, W).

    A rule runs across the sheet, at any tilt the camera gave it, and nearly straight: a sheet that
    does not lie flat bends it a little. A probabilistic Hough transform finds its straight pieces,
    and the pieces that continue one another make a rule when together they span RULE_SPAN of the
    frame (a digit's strokes are far shorter). A rule's pixels are those within its thickness,
    measured across it, of each piece's line; a piece too thick for a printed rule is left alone,
    and a pen stroke along the rule is cut no wider than the rule's other pieces are.
    """
    h, w = mask.shape
    m = mask.astype(np.uint8)
    across, down = np.zeros_like(mask), np.zeros_like(mask)
    span, piece = RULE_SPAN * min(h, w), RULE_PIECE * min(h, w)
    gap = max(3, int(RULE_GAP * max(h, w)))
    segments = cv2.HoughLinesP(m, 1, np.pi / 360, threshold=int(piece * 0.6), minLineLength=int(piece),
                               maxLineGap=gap)
    if segments is None:
        return across, down
    segments = segments.reshape(-1, 4).astype(np.float64)
    segments = segments[_distinct(segments)]
    rule = _long_lines(segments, span, max(3.0, RULE_BEND * max(h, w)), gap)
    pieces, parent = _shorter(segments[rule >= 0], max(40.0, 0.5 * piece))
    thick = max(3.0, RULE_THICK * max(h, w))
    measured = [_measure(m, p, thick) for p in pieces]
    halves = np.array([np.nan if r is None else r[3] for r in measured])
    chain = rule[rule >= 0][parent]
    typical = {c: np.nanmedian(halves[chain == c]) for c in np.unique(chain) if np.isfinite(halves[chain == c]).any()}
    for (x0, y0, x1, y1), r, c in zip(pieces, measured, chain):
        if r is None:
            continue
        ys, xs, dist, half = r
        half = min(half, float(typical[c]))  # a stroke written along the rule is cut no wider than the rule
        near = m[ys, xs].astype(bool) & (dist <= half + 1.5)  # the line and its blurred skirts
        (across if abs(x1 - x0) >= abs(y1 - y0) else down)[ys[near], xs[near]] = True
    return across, down


def _measure(m: np.ndarray, segment, thick: float):
    """The pixels about one straight piece of a rule, and how far its ink reaches across it:
    (ys, xs, distance across, half-width), or None where it is no printed line (too thick, too
    patchy, or the edge of a thicker stroke)."""
    h, w = m.shape
    x0, y0, x1, y1 = segment
    length = math.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    reach = int(thick) + 3  # only the piece's own box is looked at (a full-frame pass each cost most of the time)
    bx0, by0 = max(0, int(min(x0, x1)) - reach), max(0, int(min(y0, y1)) - reach)
    bx1, by1 = min(w, int(max(x0, x1)) + reach + 1), min(h, int(max(y0, y1)) + reach + 1)
    band = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
    cv2.line(band, (int(x0) - bx0, int(y0) - by0), (int(x1) - bx0, int(y1) - by0), 1, thickness=int(2 * thick + 3))
    ys, xs = np.nonzero(band)
    ys, xs = ys + by0, xs + bx0
    signed = (xs - x0) * uy - (ys - y0) * ux  # across the line
    inked = m[ys, xs].astype(bool)
    if (core := inked & (np.abs(signed) <= thick)).any():  # a bent rule strays from the straight chord
        signed = signed - float(np.median(signed[core]))
    dist = np.abs(signed)
    half = _half_width(dist, inked)
    if 2 * half > thick + 3 or inked[dist <= 1].mean() < RULE_SOLID:  # a thick stroke, or a row of speckle
        return None
    beyond = (dist > half + 1) & (dist <= half + 4)
    if any(inked[beyond & side].mean() > 0.5 for side in (signed > 0, signed < 0) if (beyond & side).any()):
        return None  # ink goes on past the line: the edge of a thick stroke, not a rule
    return ys, xs, dist, half


def _shorter(segments: np.ndarray, most: float) -> tuple[np.ndarray, np.ndarray]:
    """The segments (n, 4) cut into equal pieces at most `most` long, so that each is measured
    where it lies (a bent rule's chord strays from it in the middle): (pieces (k, 4), the segment
    each came from (k,))."""
    out, parent = [], []
    for i, (x0, y0, x1, y1) in enumerate(segments):
        k = max(1, math.ceil(math.hypot(x1 - x0, y1 - y0) / most))
        t = np.linspace(0, 1, k + 1)
        xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        out += [(xs[j], ys[j], xs[j + 1], ys[j + 1]) for j in range(k)]
        parent += [i] * k
    return np.array(out).reshape(-1, 4), np.array(parent, dtype=int)


def _relations(segments: np.ndarray):
    """For segments (n, 4): unit directions (n, 2), lengths (n,), and for each pair [i, j] and each of
    j's two ends, how far that end lies along i's line from i's middle and how far across it."""
    d = segments[:, 2:] - segments[:, :2]
    length = np.linalg.norm(d, axis=1)
    u = d / length[:, None]
    mid = (segments[:, :2] + segments[:, 2:]) / 2
    ends = np.stack([segments[:, :2], segments[:, 2:]], 1)  # (n, 2 ends, 2)
    rel = ends[None, :, :, :] - mid[:, None, None, :]  # [i, j, end]: from i's middle to j's end
    along = rel[..., 0] * u[:, None, None, 0] + rel[..., 1] * u[:, None, None, 1]
    across = np.abs(rel[..., 0] * u[:, None, None, 1] - rel[..., 1] * u[:, None, None, 0])
    return u, length, along, across


def _distinct(segments: np.ndarray) -> np.ndarray:
    """Which segments are not lying along a longer one (the Hough transform finds a thick line many times
    over): bool (n,)."""
    _, length, along, across = _relations(segments)
    inside = ((np.abs(along) <= length[:, None, None] / 2 + 2) & (across <= 2)).all(2)  # [i, j]: j within i
    longer = (length[:, None] > length[None, :]) | ((length[:, None] == length[None, :])
                                                    & (np.arange(len(length))[:, None] < np.arange(len(length))))
    return ~(inside & longer).any(0)


def _long_lines(segments: np.ndarray, span: float, near: float, most_gap: float) -> np.ndarray:
    """Which line each segment (n, 4: x0, y0, x1, y1) belongs to, where that line spans `span`
    (-1 where it does not). A segment continues another when they are at almost one angle and its
    nearer end lies within `near` of the other's line and `most_gap` of its end, so that a bent
    rule's pieces chain; the chain's extent along the line, gaps left out, is measured."""
    u, length, along, across = _relations(segments)
    nearer = np.argmin(np.abs(along), axis=2)[..., None]
    gap = np.maximum(np.abs(np.take_along_axis(along, nearer, 2)[..., 0]) - length[:, None] / 2, 0)
    follows = (np.take_along_axis(across, nearer, 2)[..., 0] <= near) & (gap <= most_gap)
    chain = _chains((np.abs(u @ u.T) > math.cos(math.radians(RULE_TURN))) & follows & follows.T)
    for c in np.unique(chain):
        members = np.nonzero(chain == c)[0]
        axis = u[members[np.argmax(length[members])]]
        extent = np.sort(np.stack([segments[members, :2] @ axis, segments[members, 2:] @ axis], 1), 1)
        covered, reach = 0.0, -np.inf
        for a, b in extent[np.argsort(extent[:, 0])]:  # the union of the pieces' extents along the line
            covered += max(0.0, b - max(a, reach))
            reach = max(reach, b)
        if covered < span:
            chain[members] = -1
    return chain


def _chains(joined: np.ndarray) -> np.ndarray:
    """Connected components of a symmetric adjacency matrix: a label per node."""
    label = np.arange(len(joined))
    while True:  # spread the smallest label along edges until nothing changes (chains are short)
        new = np.minimum(label, np.where(joined, label[None, :], len(joined)).min(1))
        if (new == label).all():
            return label
        label = new


def _half_width(dist: np.ndarray, inked: np.ndarray) -> float:
    """How far from its centre a line's ink reaches, from the share of inked pixels at each distance:
    the line is where that share stands well above the paper's speckle further out."""
    bins = np.minimum(dist.astype(int), int(dist.max()))
    share = np.bincount(bins, inked) / np.maximum(np.bincount(bins), 1)
    outside = float(np.median(share[-3:]))
    line = share > outside + 0.5 * (share[0] - outside)
    return float(np.argmin(line) if not line.all() else len(line)) + 1.0


def remove_rules(mask: np.ndarray, rules: tuple[np.ndarray, np.ndarray], strength: np.ndarray,
                 level: float) -> np.ndarray:
    """The ink mask without its rules, with the strokes that crossed a rule joined again.

    A stroke crossing a rule that runs across is ink just above and just below it: a closing
    down the page bridges the gap, and only rule pixels that it fills come back (and likewise,
    sideways, for rules that run down the page). A stroke written along a rule (a 2's base on
    a line) is told from it by its darker ink: pen ink of strength `level` over a fainter print.
    """
    across, down = rules
    both = across | down
    if not both.any():
        return mask
    rest = (mask & ~both).astype(np.uint8)
    out = rest.astype(bool)
    for lines, vertical in ((across, True), (down, False)):
        if lines.any():
            k = odd(max(5.0, 3 * _thickness(lines)))
            # Only ink that reaches away from the rule bridges it, not the rule's own frayed edges; the
            # bridge is half as wide as it is long, for strokes that cross the rule at a slant.
            reach, bridge = ((5, 1), (k, k // 2 + 1)) if vertical else ((1, 5), (k // 2 + 1, k))
            reaching = cv2.morphologyEx(rest, cv2.MORPH_OPEN, np.ones(reach, np.uint8))
            out |= lines & cv2.morphologyEx(reaching, cv2.MORPH_CLOSE, np.ones(bridge, np.uint8)).astype(bool)
    printed = float(np.percentile(strength[both], 90))
    if level > RULE_DARKER * printed:
        out |= mask & both & (strength > (printed + level) / 2)
    return out


def _thickness(lines: np.ndarray) -> float:
    """A typical thickness of thin lines: twice their deeper pixels' distance to the paper."""
    depth = cv2.distanceTransform(lines.astype(np.uint8), cv2.DIST_L2, 3)[lines]
    return 2 * float(np.percentile(depth, 90))


# ------------------------------------------------------------------- choosing the digit


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components: labels (H, W) int32, stats (n, 5) (x, y, w, h, area) and, per
    component, twice its deepest point (the widest stroke it holds), index 0 the background."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    deepest = np.zeros(n, np.float32)
    ink = labels > 0
    np.maximum.at(deepest, labels[ink], depth[ink])
    return labels, stats, 2 * deepest


def touches_frame(stats: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which components (rows of connectedComponentsWithStats) reach the frame's edge."""
    x, y, bw, bh = (stats[:, i] for i in range(4))
    return (x <= 1) | (y <= 1) | (x + bw >= shape[1] - 1) | (y + bh >= shape[0] - 1)


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


def choose(labels: np.ndarray, stats: np.ndarray, keep: np.ndarray, several: bool) -> np.ndarray:
    """The ink that is the digit (or, `several`, the number): bool (n,) over components.

    A person frames the digit: the anchor is the biggest stroke-like component, weighted towards the
    middle of the frame, and preferring ones that do not touch the border (a sheet's edge, a cut-off
    scrawl). Pieces near it join it (a 5's detached bar, a broken stroke); for a number, components
    of a like height along the same line join it too, one after another.
    """
    h, w = labels.shape
    x, y, bw, bh, area = (stats[:, i].astype(np.float64) for i in range(5))
    cx, cy = x + bw / 2, y + bh / 2
    border = touches_frame(stats, labels.shape)
    off = np.hypot((cx - w / 2) / w, (cy - h / 2) / h)
    score = np.where(keep, area * np.exp(-(off / 0.35) ** 2), -1)
    if (keep & ~border).any():  # ink cut by the frame (a desk's grain, a sheet's edge) only when nothing else
        score[border] = -1
    if score.max() <= 0:
        return np.zeros(len(stats), bool)
    chosen = np.zeros(len(stats), bool)
    chosen[int(np.argmax(score))] = True
    grown = True
    while grown:
        grown = False
        top, bottom = y[chosen].min(), (y + bh)[chosen].max()
        left, right = x[chosen].min(), (x + bw)[chosen].max()
        height = bottom - top
        for i in np.nonzero(keep & ~chosen)[0]:
            gap_x = max(left - (x[i] + bw[i]), x[i] - right, 0)
            gap_y = max(top - (y[i] + bh[i]), y[i] - bottom, 0)
            near = gap_x <= 0.25 * height and gap_y <= 0.25 * height
            in_line = (several and gap_x <= 1.2 * height and gap_y <= 0.1 * height
                       and bh[i] >= 0.3 * height and not border[i])
            if near or in_line:
                chosen[i] = grown = True
    return chosen
