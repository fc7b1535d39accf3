"""Ruled and squared paper: the printed lines found in an ink mask, and taken out of it.

The photo steps of `photo.py` run these between evening the light and choosing the digit: a rule
is a long, thin, nearly straight line (a sheet that does not lie flat bends it a little), found
by a probabilistic Hough transform in pieces that continue one another; the strokes that cross
it are joined again when it goes.

    mnist-cnn predict digit_on_squared_paper.jpg --save-processed processed/
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .photo import odd

RULE_SPAN = 0.6  # a ruled line is straight over at least this fraction of the frame's shorter side...
RULE_CHORD = 0.85  # ...or, where the frame cuts its line short (near a corner), over this share of what the frame holds of it
RULE_PIECE, RULE_BEND, RULE_TURN, RULE_BREAK = 0.2, 0.006, 8.0, 0.04  # it may be found in pieces this long (of the
# shorter side) that continue one another: no further than this (of the longer side) off each other's lines, at
# most this many degrees apart (a sheet that does not lie flat bends its rules), across breaks up to this
# long (of the longer side: where a crossing rule or a faint stretch interrupts it)
RULE_THICK = 0.02  # ...and at most this thick, blur included (fraction of the longer side, >= 3 px)
RULE_SOLID = 0.35  # a rule's centre line is inked at least this much of its length (gaps where it is faint)
RULE_INKED = 0.8  # a rule is inked along this share of its length, end to end (a faint one has gaps)
RULE_DARKER = 1.4  # pen ink on a rule is kept when the pen's ink is this much stronger than the print
RULE_THIN = 0.5  # a rule measures as a thin line, paper on both sides, along this share of its pieces at least


def rule_lines(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of ruled lines and grid lines in an ink mask: bool (H, W) -> (the rules that run
    across, the rules that run down), each bool (H, W).

    A rule runs across the sheet, at any tilt the camera gave it, and nearly straight: a sheet that
    does not lie flat bends it a little. A probabilistic Hough transform finds its straight pieces,
    and the pieces that continue one another make a rule when together they span RULE_SPAN of the
    frame (a digit's strokes are far shorter), and measure as a thin line along most of it (a line
    through a row of digits does only here and there). A rule's pixels are those within its thickness,
    measured across it, of each piece's line; a piece too thick for a printed rule is left alone,
    and a pen stroke along the rule is cut no wider than the rule's other pieces are.
    """
    h, w = mask.shape
    m = mask.astype(np.uint8)
    across, down = np.zeros_like(mask), np.zeros_like(mask)
    # A rule's length is measured against the frame's shorter side, so that rules across a sheet that
    # fills only part of a frame are found; but in a long strip (a number photographed or cut out on
    # its own) that is short beside the line, and the aligned tops of a row of digits would pass for
    # a rule: along a strip, a rule runs at least half its length.
    scale = np.array([max(min(h, w), 0.5 * w), max(min(h, w), 0.5 * h)])  # for rules across, and down
    span, piece = RULE_SPAN * scale, RULE_PIECE * scale
    segments = cv2.HoughLinesP(m, 1, np.pi / 360, threshold=int(piece.min() * 0.6), minLineLength=int(piece.min()),
                               maxLineGap=max(3, int(RULE_BREAK * max(h, w))))
    if segments is None:
        return across, down
    segments = segments.reshape(-1, 4).astype(np.float64)
    downward = np.abs(segments[:, 3] - segments[:, 1]) > np.abs(segments[:, 2] - segments[:, 0])
    segments = segments[_distinct(segments) & (_lengths(segments) >= piece[downward.astype(int)])]
    if not len(segments):
        return across, down
    rule, extended, need = _long_lines(segments, span, max(3.0, RULE_BEND * max(h, w)),
                                       max(3, int(RULE_BREAK * max(h, w))), (h, w))
    pieces, parent = _shorter(segments[rule >= 0], max(40.0, 0.5 * piece.min()))
    far = extended[rule >= 0][parent]
    thick = max(3.0, RULE_THICK * min(max(h, w), 4 / 3 * min(h, w)))  # a strip's length sets no print's width
    measured = [_measure(m, p, thick) for p in pieces]
    halves = np.array([np.nan if r is None else r[3] for r in measured])
    chain = rule[rule >= 0][parent]
    # A rule is printed along most of its length. A row of dots (dotted paper), or the tops of a row of
    # digits, chains across its gaps, and where it runs through a stroke it looks like a line, but
    # from end to end it is mostly paper.
    inked = cv2.dilate(m, np.ones((3, 3), np.uint8))
    printed = {c: _inked_share(inked, pieces[(chain == c) & ~far], need[c]) >= RULE_INKED for c in np.unique(chain)}
    # A line through the middle of a row of digits chains across them too, and is inked along its length;
    # but only here and there (a 3's middle bar, a 9's loop) is it a thin line with paper on either side,
    # where a printed rule is one everywhere but under the strokes that cross it.
    line = np.array([r is not None for r in measured])
    printed = {c: ok and line[(chain == c) & ~far].mean() >= RULE_THIN for c, ok in printed.items()}
    own = np.isfinite(halves) & ~far  # the thickness of the rule as found, before pieces past breaks joined it
    typical = {c: np.median(halves[(chain == c) & own]) for c in np.unique(chain) if (own & (chain == c)).any()}
    for (x0, y0, x1, y1), r, c, beyond in zip(pieces, measured, chain, far):
        if r is None or not printed[c] or c not in typical or (beyond and r[3] > typical[c] + 1.5):
            continue  # no line; or, past a break, a stroke thicker than the rule (a 2's base along its line)
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
        signed = signed - _median(signed[core])
    dist = np.abs(signed)
    half = _half_width(dist, inked)
    if 2 * half > thick + 3 or inked[dist <= 1].mean() < RULE_SOLID:  # a thick stroke, or a row of speckle
        return None
    beyond = (dist > half + 1) & (dist <= half + 4)
    if any(inked[beyond & side].mean() > 0.5 for side in (signed > 0, signed < 0) if (beyond & side).any()):
        return None  # ink goes on past the line: the edge of a thick stroke, not a rule
    return ys, xs, dist, half


def _lengths(segments: np.ndarray) -> np.ndarray:
    return np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])


def _inked_share(m: np.ndarray, segments: np.ndarray, span: float) -> float:
    """Of the stretch of a line that segments (n, 4) along it cover, the share of its length, pixel by
    pixel, where one of them runs over ink in `m` (gaps between them count as paper): the best share over
    any stretch as long as its rule must be (`span`), since a rule may fade out past one end of it, where
    the light falls off or a shadow lies (a grid's lines thin there into a row of dots at their crossings),
    and is no less printed where it shows."""
    if not len(segments):
        return 0.0
    d = segments[np.argmax(_lengths(segments))]
    axis = (d[2:] - d[:2]) / max(float(np.hypot(*(d[2:] - d[:2]))), 1e-9)
    inked, every = [], []
    for x0, y0, x1, y1 in segments:
        t = np.linspace(0, 1, max(2, int(math.hypot(x1 - x0, y1 - y0))))
        xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        at = np.round(xs * axis[0] + ys * axis[1]).astype(int)
        rows = np.clip(np.round(ys).astype(int), 0, m.shape[0] - 1)
        hit = m[rows, np.clip(np.round(xs).astype(int), 0, m.shape[1] - 1)]
        inked.append(at[hit > 0])
        every.append(at)
    every = np.concatenate(every)
    start, extent = every.min(), every.max() - every.min() + 1
    along = np.zeros(extent)
    along[np.unique(np.concatenate(inked)) - start] = 1
    stretch = int(min(extent, max(1.0, span)))
    total = np.concatenate([[0], np.cumsum(along)])
    return float((total[stretch:] - total[:-stretch]).max()) / stretch  # the most inked pixels in any stretch


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


def _long_lines(segments: np.ndarray, span: np.ndarray, near: float, most_gap: float,
                shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Which line each segment (n, 4: x0, y0, x1, y1) belongs to, where that line spans `span` (two
    lengths: for a line across, and for a line down), or RULE_CHORD of its chord across the frame of
    `shape` where that is shorter (-1 where it does not); which segments joined it past a break
    (`_extend`); and, for each line, the length it had to span. A segment continues
    another when they are at almost one angle and its nearer end lies within `near` of the other's
    line and `most_gap` of its end, so that a bent rule's pieces chain; the chain's extent along the
    line, gaps left out, is measured."""
    u, length, along, across = _relations(segments)
    nearer = np.argmin(np.abs(along), axis=2)[..., None]
    gap = np.maximum(np.abs(np.take_along_axis(along, nearer, 2)[..., 0]) - length[:, None] / 2, 0)
    follows = (np.take_along_axis(across, nearer, 2)[..., 0] <= near) & (gap <= most_gap)
    chain = _chains((np.abs(u @ u.T) > math.cos(math.radians(RULE_TURN))) & follows & follows.T)
    need = {}
    for c in np.unique(chain):
        members = np.nonzero(chain == c)[0]
        longest = members[np.argmax(length[members])]
        axis = u[longest]
        # A rule that leaves the frame near a corner (a grid's outermost line, the page tilted) is short in
        # the frame, and its leftover pieces would pass for strokes: it spans most of what the frame holds.
        chord = _chord((segments[longest, :2] + segments[longest, 2:]) / 2, axis, shape)
        need[c] = min(span[int(abs(axis[1]) > abs(axis[0]))], RULE_CHORD * chord)
        extent = np.sort(np.stack([segments[members, :2] @ axis, segments[members, 2:] @ axis], 1), 1)
        covered, reach = 0.0, -np.inf
        for a, b in extent[np.argsort(extent[:, 0])]:  # the union of the pieces' extents along the line
            covered += max(0.0, b - max(a, reach))
            reach = max(reach, b)
        if covered < need[c]:
            chain[members] = -1
    found = chain >= 0
    chain = _extend(chain, u, length, along, across, near)
    return chain, (chain >= 0) & ~found, need


def _chord(point: np.ndarray, axis: np.ndarray, shape: tuple[int, int]) -> float:
    """The length of the line through `point` along unit `axis` that lies within a frame of `shape` (h, w)."""
    lo, hi = -np.inf, np.inf
    for p, a, size in ((point[0], axis[0], shape[1]), (point[1], axis[1], shape[0])):
        if abs(a) < 1e-9:
            continue
        t0, t1 = sorted(((0 - p) / a, (size - 1 - p) / a))
        lo, hi = max(lo, t0), min(hi, t1)
    return float(max(0.0, hi - lo))


def _extend(chain: np.ndarray, u, length, along, across, near: float) -> np.ndarray:
    """Segments that lie on a found rule's line, however far from it, join that rule: a hard shadow's
    edge can break a rule for more than `most_gap`, and the pieces beyond it are no less printed."""
    parallel = np.abs(u @ u.T) > math.cos(math.radians(RULE_TURN))
    nearer = np.argmin(np.abs(along), axis=2)[..., None]
    gap = np.maximum(np.abs(np.take_along_axis(along, nearer, 2)[..., 0]) - length[:, None] / 2, 0)
    on_line = parallel & (across.max(2) <= near)  # [i, j]: both of j's ends on i's line
    while True:
        candidates = on_line & (chain[:, None] >= 0) & (chain[None, :] < 0)
        joining = np.nonzero(candidates.any(0))[0]
        if not len(joining):
            return chain
        for j in joining:  # the nearest rule along the line (a bent rule strays from far pieces' lines)
            owners = np.nonzero(candidates[:, j])[0]
            chain[j] = chain[owners[np.argmin(gap[owners, j])]]


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
    outside = _median(share[-3:])
    line = share > outside + 0.5 * (share[0] - outside)
    return float(np.argmin(line) if not line.all() else len(line)) + 1.0


def _median(values: np.ndarray) -> float:
    """np.median of a non-empty 1-d array, by one partition: it runs twice per rule piece, and np.median's
    own overhead cost more than the work (the same value: the middle one, or the mean of the two)."""
    k = values.size // 2
    if values.size % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2)


def remove_rules(mask: np.ndarray, rules: tuple[np.ndarray, np.ndarray], strength: np.ndarray,
                 level: float) -> np.ndarray:
    """The ink mask without its rules, with the strokes that crossed a rule joined again.

    A stroke crossing a rule that runs across is ink just above and just below it: a closing
    down the page bridges the gap, and only rule pixels that it fills come back (and likewise,
    sideways, for rules that run down the page). A stroke written along a rule (a 2's base on
    a line) is told from it by its darker ink: pen ink of strength `level` over a fainter print,
    or, however faint the pen, where pen and print darken each other (`_inked_over`).
    """
    across, down = rules
    both = across | down
    if not both.any():
        return mask
    thickness = tuple(_thickness(lines) if lines.any() else 0.0 for lines in rules)
    rest = (mask & ~both).astype(np.uint8)
    out = rest.astype(bool)
    for lines, thick, vertical in ((across, thickness[0], True), (down, thickness[1], False)):
        if lines.any():
            k = odd(max(5.0, 3 * thick))
            # Only ink that reaches away from the rule bridges it, not the rule's own frayed edges; the
            # bridge is half as wide as it is long, for strokes that cross the rule at a slant.
            reach, bridge = ((5, 1), (k, k // 2 + 1)) if vertical else ((1, 5), (k // 2 + 1, k))
            reaching = cv2.morphologyEx(rest, cv2.MORPH_OPEN, np.ones(reach, np.uint8))
            out |= lines & cv2.morphologyEx(reaching, cv2.MORPH_CLOSE, np.ones(bridge, np.uint8)).astype(bool)
    printed = float(np.percentile(strength[both], 90))
    if level > RULE_DARKER * printed:
        out |= mask & both & (strength > (printed + level) / 2)
    return out | (mask & _inked_over(strength, rules, thickness, level))


def _inked_over(strength: np.ndarray, rules: tuple[np.ndarray, np.ndarray], thickness: tuple[float, float],
                level: float) -> np.ndarray:
    """Rule pixels with pen ink on them, however faint the pen: bool (H, W), for the rules (across,
    down) of the given thicknesses.

    Ink over print takes light from what the print left (1 - (1 - rule)(1 - pen)), so where a stroke
    runs along a rule (a 6's base written on its line, in a pencil as grey as the print) the rule is
    darker than along the rest of its length. Each place along a rule is measured by its darkest pixel
    across it, against the median of those along that rule; a place darker by half a pen stroke's worth
    comes back, across the rule's whole width. Grid crossings, where two rules darken each other, are
    left out, and so are runs shorter than the rule is thick (noise).
    """
    across, down = rules
    out = np.zeros_like(across)
    for lines, other, thick, runs_down in ((across, down, thickness[0], False), (down, across, thickness[1], True)):
        only = lines & ~other
        ys, xs = np.nonzero(only)
        if not len(ys):
            continue
        thick = odd(max(3.0, thick))
        cross = np.ones((1, 2 * thick + 1) if runs_down else (2 * thick + 1, 1), np.uint8)
        darkest = cv2.dilate(np.where(only, strength, 0).astype(np.float32), cross)[ys, xs]
        rule = _one_line_each(only, runs_down)[ys // 4, xs // 4]
        typical = _medians(rule, darkest, int(rule.max()) + 1)[rule]
        over = np.zeros_like(only)
        over[ys, xs] = darkest > 1 - (1 - typical) * (1 - 0.5 * level)
        out |= cv2.morphologyEx(over.astype(np.uint8), cv2.MORPH_OPEN,
                                np.ones((thick, 1) if runs_down else (1, thick), np.uint8)).astype(bool)
    return out


def _one_line_each(lines: np.ndarray, runs_down: bool) -> np.ndarray:
    """A label for each rule, on a copy a quarter the size: int32 (H/4, W/4). One rule's pieces, parted
    where strokes cross it, are one line again after a long closing along it."""
    small = cv2.resize(lines.astype(np.float32), (-(-lines.shape[1] // 4), -(-lines.shape[0] // 4)),
                       interpolation=cv2.INTER_AREA) > 0  # any rule pixel in the 4x4 block
    gap = odd(max(small.shape) / 4)
    joined = cv2.morphologyEx(small.astype(np.uint8), cv2.MORPH_CLOSE,
                              np.ones((gap, 1) if runs_down else (1, gap), np.uint8))
    return cv2.connectedComponents(joined)[1]


def _medians(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """The (upper) median of `values` for each label in 0..n-1: (n,), 0 for a label without values."""
    order = np.lexsort((values, labels))
    counts = np.bincount(labels, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.zeros(n, values.dtype)
    has = counts > 0
    out[has] = values[order][starts[has] + counts[has] // 2]
    return out


def _thickness(lines: np.ndarray) -> float:
    """A typical thickness of thin lines: twice their deeper pixels' distance to the paper."""
    depth = cv2.distanceTransform(lines.astype(np.uint8), cv2.DIST_L2, 3)[lines]
    return 2 * float(np.percentile(depth, 90))
