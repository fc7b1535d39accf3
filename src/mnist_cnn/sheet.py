"""The sheet in a phone photo: where the paper is when the desk shows, and the paper warped flat.

The first of the photo steps (photo.py names them all), a pure function of arrays built on OpenCV:
a paper's edge or the desk's grain must never become ink.

    mnist-cnn predict photo_of_a_sheet_on_a_desk.jpg --save-processed processed/
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SHEET_SIDE = 256  # the sheet is looked for on a copy this big: its outline is a large feature
SHEET_MIN, SHEET_MAX = 0.12, 0.96  # as a fraction of the frame: smaller is no sheet, larger is no desk
SHADE_DARK, SHADE_HUE, SHADE_CHROMA = 0.3, 15.0, 0.25  # paper in a hard shadow: lightness (of the paper's)
# down to this, hue within this many degrees, chroma per lightness within this fraction of the paper's
SHEET_CENTRE = 0.5  # the sheet holds at least this much of the frame's middle fifth (the digit's place)
DESK_DARK = 0.5  # of the paper's lightness (L*; 0.15 of its luminance): darker is desk (a hard shadow can reach 0.6)
DESK_CHROMA = 14.0  # Lab chroma units from the paper's own colour: a wooden desk, a coloured mat
DESK_HUE = 20.0  # degrees from coloured paper's hue: a wooden desk beside yellow paper, of a like chroma


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
    lit = light >= 0.85 * bright
    paper_chroma = float(np.median(chroma[lit]))
    paper = (light > DESK_DARK * bright) & (np.abs(chroma - paper_chroma) < DESK_CHROMA)
    if paper_chroma >= DESK_CHROMA:
        # Coloured paper: a desk of a like chroma (wood beside yellow paper) differs in hue, and the
        # paper in a hard shadow keeps its hue, its chroma dimmed in step with its light.
        hue = np.degrees(np.arctan2(lab[..., 2] - 128, lab[..., 1] - 128))
        paper &= np.abs((hue - float(np.median(hue[lit])) + 180) % 360 - 180) < DESK_HUE
        paper |= _shaded_like(lab, lab[lit], bright)
    found = _largest_region(paper)
    if found is None:
        return None
    region, hull = found
    ch, cw = small.shape[0] // 2, small.shape[1] // 2
    middle = np.s_[ch - ch // 5:ch + ch // 5 + 1, cw - cw // 5:cw + cw // 5 + 1]
    if _filled(hull, small.shape)[middle].mean() < SHEET_CENTRE and _shaded_paper(lab[middle], lab[region], bright):
        return None  # people frame the paper: the middle is the same paper, in a shadow
    mask = cv2.resize(_filled(hull, small.shape), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    quad = cv2.approxPolyDP(hull, 0.03 * cv2.arcLength(hull, True), True)
    corners = _order(quad.reshape(-1, 2).astype(np.float32) / s) if len(quad) == 4 else None
    return mask, corners


def _largest_region(paper: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The largest paper-like region of a bool mask, and its convex hull, or None when that hull is
    no sheet's size (no desk shows, or no sheet does)."""
    paper = cv2.morphologyEx(paper.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))  # ink is not desk
    paper = cv2.morphologyEx(paper, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))  # nor are desk highlights
    n, labels, stats, _ = cv2.connectedComponentsWithStats(paper, connectivity=4)
    if n < 2:
        return None
    region = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    if not SHEET_MIN < cv2.contourArea(hull) / paper.size < SHEET_MAX:
        return None
    return region, hull


def _filled(hull: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    return mask


def _colour(px: np.ndarray) -> tuple[float, float, float]:
    """Lab pixels (..., 3) -> the median's lightness, chroma and hue (degrees)."""
    px = px.reshape(-1, 3)
    light, a, b = (float(np.median(px[:, i])) - (0 if i == 0 else 128) for i in range(3))
    return light, math.hypot(a, b), math.degrees(math.atan2(b, a))


def _shade_of(light, chroma, hue, paper: tuple[float, float, float], bright: float):
    """Whether lightness, chroma and hue (floats or arrays) are the paper's colour in a shadow: darker,
    but not as dark as a dark desk, of the paper's hue, with its chroma dimmed in step with its lightness."""
    paper_light, paper_chroma, paper_hue = paper
    turn = np.abs((hue - paper_hue + 180) % 360 - 180)
    ratio = chroma / np.maximum(light, 1e-3) - paper_chroma / paper_light
    dimmed = np.abs(ratio) < SHADE_CHROMA * paper_chroma / paper_light
    return (light >= SHADE_DARK * bright) & (turn < SHADE_HUE) & dimmed


def _shaded_paper(region: np.ndarray, paper: np.ndarray, bright: float) -> bool:
    """Whether Lab pixels (..., 3) look, as a whole, like the paper's Lab pixels in a shadow. Paper without a
    colour to follow into the shadow (white, grey) is taken to be there when the region is as colourless and
    not darker than a shadow gets: a frame's middle is the paper people photograph, not a grey desk."""
    colour = _colour(paper)
    if colour[1] < DESK_CHROMA:
        light, chroma, _ = _colour(region)
        return bool(light >= SHADE_DARK * bright and chroma < DESK_CHROMA)
    return bool(_shade_of(*_colour(region), colour, bright))


def _shaded_like(lab: np.ndarray, paper: np.ndarray, bright: float) -> np.ndarray:
    """Which pixels of a Lab image (H, W, 3) float32 look like the paper's Lab pixels in a shadow: bool (H, W)."""
    light, a, b = lab[..., 0], lab[..., 1] - 128, lab[..., 2] - 128
    return _shade_of(light, np.hypot(a, b), np.degrees(np.arctan2(b, a)), _colour(paper), bright)


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
