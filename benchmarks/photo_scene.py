"""The flat world a phone photographs, for photo_synth.py: the sheet, its rules, the desk, the camera.

Everything is in millimetres on the desk plane, the ink's centre at the origin;
layers are rendered at q pixels per millimetre and are reflectances in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

from photo_digits import smooth_noise  # photo_synth loads photo_digits first when imported by file path

SHEETS_MM = ((210, 297), (148, 210), (216, 279), (170, 220))  # A4, A5, letter, exercise book
RULE_MM, GRID_MM = (7.0, 9.0), 5.0
PAPERS_RGB = ((0.96, 0.96, 0.95), (0.95, 0.96, 0.98), (0.96, 0.93, 0.85), (0.88, 0.87, 0.83),
              (0.97, 0.94, 0.70))  # white, bluish white, cream, recycled grey, legal-pad yellow
PAPER_SHARES = (0.35, 0.2, 0.2, 0.13, 0.12)
DESKS_RGB = {"wood": ((0.70, 0.52, 0.33), (0.42, 0.27, 0.16), (0.58, 0.33, 0.22)),
             "grey": ((0.55, 0.55, 0.56), (0.45, 0.46, 0.48)), "dark": ((0.12, 0.11, 0.10), (0.08, 0.09, 0.12)),
             "white": ((0.86, 0.86, 0.85), (0.80, 0.81, 0.83))}
GLARE_SHARE = 0.12  # photos with a lamp's reflection on the paper


def camera(wh, centre_px, px_per_mm: float, roll_deg: float, tilt_deg: float, tilt_axis: float, focal: float):
    """Homography sheet mm (origin at the ink's centre) -> photo pixels: a camera rolled by `roll_deg`
    and tilted by `tilt_deg` about an axis at `tilt_axis` radians, placing the ink's centre at
    `centre_px` with `px_per_mm` there (its area kept, whatever the foreshortening)."""
    w, h = wh
    cos, sin = np.cos(np.radians(roll_deg)) * px_per_mm, np.sin(np.radians(roll_deg)) * px_per_mm
    fronto = np.array([[cos, -sin, w / 2], [sin, cos, h / 2], [0, 0, 1]])  # the sheet seen square on
    k = np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]])
    rot, _ = cv2.Rodrigues(np.array([np.cos(tilt_axis), np.sin(tilt_axis), 0.0]) * np.radians(tilt_deg))
    m = k @ rot @ np.linalg.inv(k) @ fronto
    o, dx, dy = apply(m, np.array([[0.0, 0], [1, 0], [0, 1]]))  # the ink's centre, 1 mm right, 1 mm down:
    # move it back to `centre_px` and undo the tilt's change of scale there
    (a, b), (c, d) = dx - o, dy - o
    scale = px_per_mm / np.sqrt(abs(a * d - b * c))
    return np.array([[scale, 0, centre_px[0] - scale * o[0]], [0, scale, centre_px[1] - scale * o[1]],
                     [0, 0, 1]]) @ m


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Homography of (N, 2) points."""
    p = np.c_[pts, np.ones(len(pts))] @ m.T
    return p[:, :2] / p[:, 2:]


def place_sheet(rng, conditions: dict, frame_mm: np.ndarray, box_mm: np.ndarray) -> np.ndarray:
    """The sheet's rectangle [[x0, y0], [x1, y1]] in mm around the ink (centred on 0): inside the
    whole frame (`frame_mm`, the photo's corners on the desk plane) when no desk should show, else
    with one edge or a corner between the ink and the frame's border."""
    size = np.array(SHEETS_MM[rng.integers(len(SHEETS_MM))], float)
    margin = max(5.0, 0.3 * float(np.ptp(box_mm[:, 1])))
    lo_ink, hi_ink = box_mm[0] - margin, box_mm[1] + margin  # the sheet reaches at least this far
    lo_frame, hi_frame = frame_mm.min(0), frame_mm.max(0)
    x0, sides = np.empty(2), (("left", "right"), ("top", "bottom"))
    edges = set()
    if conditions["desk"] == "yes":  # one edge in the frame, or a corner (two edges)
        edges = {sides[a][rng.integers(2)] for a in ([0, 1] if rng.random() < 0.4 else [rng.integers(2)])}
    # A number written large is wider than an A5 sheet, and its first digits were drawn on the desk beyond
    # the sheet's edge, where no reader should look for them, while the label still held them: a sheet is
    # at least as large as the writing and its margins.
    for a in (0, 1):  # x, then y
        if sides[a][0] in edges:  # the sheet's left (top) edge between the ink and the frame's border
            x0[a] = lo_ink[a] - rng.uniform(0.05, 0.85) * max(0.0, lo_ink[a] - lo_frame[a])
            size[a] = max(size[a], hi_ink[a] - x0[a])
        elif sides[a][1] in edges:
            end = hi_ink[a] + rng.uniform(0.05, 0.85) * max(0.0, hi_frame[a] - hi_ink[a])
            size[a] = max(size[a], end - lo_ink[a])
            x0[a] = end - size[a]
        else:  # the whole frame on the sheet if it fits, the ink somewhere in the middle otherwise
            size[a] = max(size[a], hi_ink[a] - lo_ink[a])
            lo, hi = hi_frame[a] - size[a], lo_frame[a]
            x0[a] = rng.uniform(lo, hi) if lo < hi else (lo_ink[a] + hi_ink[a] - size[a]) / 2
    return np.array([x0, x0 + size])


def paper_layer(rng, shape, q: float, colour) -> np.ndarray:
    """(h, w, 3) reflectance of a sheet at q px/mm: off-white, with fibres and cloudiness."""
    h, w = shape
    tex = (cv2.GaussianBlur(rng.standard_normal(shape, dtype=np.float32), (0, 0), max(0.5, 0.04 * q))
           * rng.uniform(0.01, 0.03) + smooth_noise(rng, shape, 1.5 * q) * rng.uniform(0.002, 0.008)
           + smooth_noise(rng, shape, 40 * q) * rng.uniform(0.002, 0.01))
    fibres = np.zeros(shape, np.float32)
    n = int(h * w / q ** 2 * 0.3)  # about one fibre per 3 square mm
    start = rng.uniform([0, 0], [w, h], (n, 2))
    ends = start + rng.normal(0, 1.2 * q, (n, 2))
    for sign, part in ((1, slice(0, n // 2)), (-1, slice(n // 2, n))):
        lines = np.stack([start[part], ends[part]], 1).astype(np.int32)
        cv2.polylines(fibres, list(lines), False, sign * rng.uniform(0.01, 0.03), 1, cv2.LINE_AA)
    tex += cv2.GaussianBlur(fibres, (0, 0), 0.6)
    return np.asarray(colour, np.float32) * (1 + tex[..., None])


def desk_layer(rng, shape, q: float, surface: str, sheet_px) -> np.ndarray:
    """(h, w, 3) reflectance of the desk around the sheet (x0, y0, x1, y1 in pixels): wood grain, grey
    laminate, a dark or a white top, with the sheet's thin soft shadow where it lies a little raised."""
    h, w = shape
    options = DESKS_RGB[surface]
    colour = np.asarray(options[rng.integers(len(options))], np.float32) * rng.uniform(0.85, 1.1)
    tex = smooth_noise(rng, shape, 8 * q) * 0.015 + rng.standard_normal(shape, dtype=np.float32) * 0.015
    if surface == "wood":  # fine grain lines along x, wavy, in broader light and dark bands; plank seams
        straight = np.arange(h, dtype=np.float32)[:, None] / q
        y = straight + 1.5 * smooth_noise(rng, shape, 60 * q)
        lines = cv2.resize(rng.standard_normal((max(2, int(h / (0.35 * q))), 1), dtype=np.float32), (1, h))
        fine = lines[(y * q).astype(int) % h, 0]  # the grain lines, following the wavy rows
        bands = np.sin(2 * np.pi * y / rng.uniform(6, 20))
        seam = np.abs(straight % rng.uniform(90, 160) - rng.uniform(0, 90)) < 0.4
        tex = tex + 0.07 * fine + 0.08 * bands - 0.35 * seam
    (x0, y0, x1, y1), blur = sheet_px, rng.uniform(0.5, 2.0) * q
    shift = rng.normal(0, 1.2, 2) * q  # the shadow falls a little away from the light
    profile = [cv2.GaussianBlur(((np.arange(n) >= a + d) & (np.arange(n) < b + d)).astype(np.float32)[None],
                                (0, 0), blur)[0] for n, a, b, d in ((w, x0, x1, shift[0]), (h, y0, y1, shift[1]))]
    shade = 1 - rng.uniform(0.2, 0.5) * np.outer(profile[1], profile[0])
    return colour * (np.clip(1 + tex, 0.3, 1.5) * shade)[..., None]


def rules(rng, conditions: dict, sheet: np.ndarray, box_mm: np.ndarray, layer_y, layer_x) -> None:
    """Ruled lines, a margin line or a 5 mm grid, as (position mm, width mm, RGB, opacity) lists
    appended to layer_y (horizontal lines) and layer_x (vertical lines); also sets `placement`."""
    paper, bh = conditions["paper"], float(np.ptp(box_mm[:, 1]))
    placement = "free"
    if paper == "lined":
        spacing = conditions["rule_mm"]
        colour = (0.5, 0.68, 0.95) if rng.random() < 0.7 else (0.62, 0.62, 0.64)
        if rng.random() < 0.75:  # written on a rule (the bottom a little above or below it)
            anchor, placement = box_mm[1][1] + rng.uniform(-0.1, 0.12) * spacing, "on rule"
        else:
            anchor, placement = rng.uniform(-0.3, 0.3) * bh, "across rule"
        top = sheet[0][1] + rng.uniform(15, 32)  # the first rule, unless the writing is higher up
        top = min(top, anchor) if anchor - sheet[0][1] > 5 else top
        ys = anchor + spacing * np.arange(np.ceil((top - anchor) / spacing), (sheet[1][1] - 8 - anchor) / spacing)
        if not np.isclose(ys, anchor).any():
            placement = "free"  # the ink is in the sheet's top margin, above the first rule
        layer_y += [(y, rng.uniform(0.15, 0.3), colour, rng.uniform(0.4, 0.85)) for y in ys]
        margin = rng.random() < 0.4
        if margin:  # left of the writing, where the book's margin is (if the writing leaves room)
            x = min(sheet[0][0] + rng.uniform(20, 35), box_mm[0][0] - rng.uniform(3, 15))
            layer_x.append((x, rng.uniform(0.2, 0.4), (0.95, 0.45, 0.5), rng.uniform(0.6, 0.9)))
            margin = bool(x > sheet[0][0] + 5)
        conditions["margin_line"] = margin
    elif paper == "squared":
        colour = (0.5, 0.66, 0.9) if rng.random() < 0.5 else (0.6, 0.6, 0.62)
        width, alpha = rng.uniform(0.1, 0.2), rng.uniform(0.25, 0.6)
        for lines, a in ((layer_y, 1), (layer_x, 0)):
            first = rng.uniform(0, GRID_MM)
            if a == 1 and rng.random() < 0.5:  # digits written on a grid line
                first, placement = box_mm[1][1] + rng.uniform(-0.08, 0.08) * GRID_MM, "on line"
            k = np.arange(np.ceil((sheet[0][a] - first) / GRID_MM), (sheet[1][a] - first) / GRID_MM)
            lines += [(first + GRID_MM * i, width, colour, alpha) for i in k]
    conditions["placement"] = placement


def draw_lines(img: np.ndarray, lines, origin: float, q: float, axis: int) -> None:
    """Multiply anti-aliased straight lines (position mm, width mm, RGB, opacity) into img, all lines
    across `axis` (0: horizontal lines, 1: vertical), whose first pixel is at `origin` mm."""
    coords = (np.arange(img.shape[axis], dtype=np.float32) + 0.5) / q + origin
    factor = np.ones((len(coords), 3), np.float32)
    for pos, width, rgb, alpha in lines:
        near = np.abs(coords - pos) * q < width * q / 2 + 1
        cov = np.clip(width * q / 2 + 0.5 - np.abs(coords[near] - pos) * q, 0, 1)[:, None] * alpha
        factor[near] *= 1 - cov * (1 - np.asarray(rgb, np.float32))
    img *= factor[:, None, :] if axis == 0 else factor[None, :, :]


def lighting(rng, kind: str, conditions: dict, wh, ink_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) illumination of `kind`: even, a gradient, vignetting, a soft shadow or a hard-edged one;
    and (h, w) glare, sometimes: a lamp's reflection off the paper, light added to the image."""
    w, h = (wh[0] + 1) // 2, (wh[1] + 1) // 2  # the light is smooth: work at half resolution
    d, ink_px = min(w, h), ink_px / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)) / np.hypot(w, h) + 0.5  # 0..1
    field = 1 - rng.uniform(0, 0.06) * ramp  # no light is perfectly even
    if kind == "gradient":
        field *= 1 - rng.uniform(0.15, 0.45) * ramp
    elif kind == "vignette":
        r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
        field *= 1 - rng.uniform(0.2, 0.5) * r2 ** rng.uniform(1, 2)
    elif kind == "soft shadow":  # a broad blurred dark region: a head or a body between lamp and desk
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (rng.uniform(0.2, 0.5) * d) ** 2))
        field *= 1 - rng.uniform(0.2, 0.45) * blob
    elif kind == "hard shadow":  # the phone's or the hand's shadow: a fairly sharp, slightly wavy edge
        crossing = bool(rng.random() < 0.5)
        for _ in range(50):
            phi, p0 = rng.uniform(0, 2 * np.pi), rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
            if crossing:
                p0 = ink_px.min(0) + rng.uniform(0.2, 0.8, 2) * np.ptp(ink_px, 0)
            normal = np.array([np.cos(phi), np.sin(phi)])
            sides = np.sign((ink_px - p0) @ normal)
            if crossing or abs(sides.sum()) == len(sides):
                break
        conditions["shadow_on_digit"] = bool(abs(sides.sum()) < len(sides))
        sd = (xx - p0[0]) * normal[0] + (yy - p0[1]) * normal[1]
        sd += smooth_noise(rng, (h, w), d / 3) * rng.uniform(0, 0.01) * d
        soft = rng.uniform(0.002, 0.015) * d
        shade = np.clip(0.5 + sd / (2 * soft), 0, 1)
        if rng.random() < 0.3:  # a band: the phone's shadow, both its edges in the frame
            shade *= np.clip(0.5 - (sd - rng.uniform(0.15, 0.4) * d) / (2 * soft), 0, 1)
        field *= 1 - rng.uniform(0.2, 0.5) * shade
    field = np.clip(field, 0.05, 1)
    glare = np.zeros_like(field)
    conditions["glare"] = bool(conditions["glare"] if "glare" in conditions else rng.random() < GLARE_SHARE)
    if conditions["glare"]:  # light reflected off the paper's surface: added, whatever the ink below
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        glare = rng.uniform(0.2, 0.6) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (rng.uniform(0.08, 0.3) * d) ** 2))
    field, glare = (cv2.resize(f, wh, interpolation=cv2.INTER_LINEAR) for f in (field, glare))
    return np.stack([field ** 1.05, field, field ** 0.93], 2), glare  # shade is lit by the bluer sky
