"""Synthetic phone photos of handwritten digits and numbers on real paper.

A digit (an MNIST *test* digit, a UCI 8x8 digit or a handwriting font, rewritten with
a ballpoint, gel pen or pencil: see photo_digits.py) lies on plain, lined or squared
paper, sometimes near the sheet's edge with the desk showing, and is photographed
with a phone: perspective tilt, uneven light, soft and hard shadows, white balance,
defocus or motion blur, sensor noise, sharpening, JPEG. Every random factor is
recorded in a conditions dict, so accuracy can be broken down per condition.
Deterministic for a given numpy Generator; nothing happens at import.

    python benchmarks/photo_synth.py --write-fixtures /tmp/photo_fixtures
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def _sibling(name: str):
    """A module next to this file: importable by name when a script in benchmarks/ runs, else (this
    file imported by its path) loaded from its path and registered, so its own imports find it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


digits, scene = _sibling("photo_digits"), _sibling("photo_scene")

ensure_fonts, load_sources, Sources, smooth_noise = (digits.ensure_fonts, digits.load_sources, digits.Sources,
                                                      digits.smooth_noise)

# Each condition's values and how often a photo gets each (a `conditions` dict may force any of them).
CHOICES = {
    "source": {"mnist": 0.5, "uci": 0.15, "font": 0.35},  # UCI's 8x8 digits are coarse: some 3s read as ")"
    "paper": {"plain": 0.35, "lined": 0.4, "squared": 0.25},
    "ink": {"blue": 0.45, "black": 0.3, "pencil": 0.25},
    "light": {"even": 0.2, "gradient": 0.2, "vignette": 0.15, "soft shadow": 0.2, "hard shadow": 0.25},
    "desk": {"no": 0.65, "yes": 0.35},  # asked for; `desk_shown` records what the frame really shows
    "desk_surface": {"wood": 0.35, "grey": 0.25, "dark": 0.25, "white": 0.15},
    "tilt": {"no": 0.3, "yes": 0.7},
    "blur": {"none": 0.5, "defocus": 0.3, "motion": 0.2},
    "white_balance": {"neutral": 0.4, "warm": 0.35, "cool": 0.25},
}
WHITE_BALANCE = {"neutral": (1.0, 1.0, 1.0), "warm": (1.0, 0.93, 0.8), "cool": (0.88, 0.96, 1.0)}  # residual casts
ASPECTS = ((4 / 3, 0.5), (3 / 4, 0.3), (16 / 9, 0.1), (1.0, 0.1))  # width / height, and how often
CANVAS_MAX = 4.0  # the flat sheet is rendered with at most this many times the photo's pixels
RENDER_MAX_MP = 3.0  # bigger photos are rendered at this size and upsampled before the sensor's noise
CURL_SHARE = 0.35  # photos of a sheet that does not lie flat


def pick(rng, conditions: dict, key: str):
    if key in conditions:
        return conditions[key]
    values = list(CHOICES[key])
    return values[rng.choice(len(values), p=list(CHOICES[key].values()))]


# ------------------------------------------------------------------ the writing


def layout(glyphs: list[np.ndarray], pen: float, rng) -> list[np.ndarray]:
    """Glyph centre lines (each about 1 high) -> the same written left to right on one baseline,
    each digit a small visible gap (ink to ink, row by row) after the ones before it."""
    placed, step = [], max(pen, 0.02)
    rows = np.arange(-3, 3, step)
    right = np.full(len(rows), -np.inf)  # the rightmost ink so far in each row

    def extent(pts, fn, fill, reach=1):  # per row, the extreme x of the ink within `reach` rows
        out = np.full(len(rows), fill)
        fn.at(out, np.clip(((pts[:, 1] + 3) / step).astype(int), 0, len(rows) - 1), pts[:, 0])
        return fn.reduce(np.stack([np.roll(out, i) for i in range(-reach, reach + 1)]), 0)

    for g in glyphs:
        g = g + [0.0, -g[:, 1].max() + rng.uniform(-0.06, 0.06)]  # sit on the baseline, roughly
        if placed:  # clear of the ink before by `gap` across and above/below (no tucking under a tail)
            gap = rng.uniform(0.12, 0.45)
            left = extent(g, np.minimum, np.inf, int(np.ceil((2 * pen + gap) / step)))
            both = np.isfinite(left) & np.isfinite(right)
            overlap = (right[both] - left[both]).max() if both.any() else right.max() - g[:, 0].min()
            g = g + [overlap + 2 * pen + gap, 0.0]
        right = np.maximum(right, extent(g, np.maximum, -np.inf))
        placed.append(g)
    centre = (np.min([g.min(0) for g in placed], 0) + np.max([g.max(0) for g in placed], 0)) / 2
    return [g - centre for g in placed]


def write(rng, sources: Sources, conditions: dict, n_digits: int):
    """-> (glyph points in units of digit height, centred on the ink, label, pen radius in those units)."""
    source = pick(rng, conditions, "source")
    if source == "font" and not sources.fonts:
        source = "mnist"
    font = sources.fonts[rng.integers(len(sources.fonts))] if source == "font" else None
    labels = [int(rng.integers(1 if i == 0 and n_digits > 1 and rng.random() < 0.9 else 0, 10))
              for i in range(n_digits)]
    slant, width = rng.uniform(-0.15, 0.35), rng.uniform(0.85, 1.1)  # one writer's hand for the whole number
    glyphs = [digits.handwriting(rng, digits.digit_strokes(rng, sources, d, source, font),
                                 slant + rng.uniform(-0.05, 0.05), (width, rng.uniform(0.92, 1.08)))
              for d in labels]
    ink = pick(rng, conditions, "ink")
    pen = rng.uniform(*digits.PEN_WIDTH[ink]) / 2
    conditions.update(source=source, font=font.stem if font else None, ink=ink, pen_width=round(2 * pen, 3))
    return layout(glyphs, pen, rng), "".join(map(str, labels)), pen


# ------------------------------------------------------------------ the camera


def frame_shape(rng, megapixels: float | None) -> tuple[int, int]:
    mp = megapixels if megapixels else rng.uniform(0.5, 2.0)
    aspect = ASPECTS[rng.choice(len(ASPECTS), p=[a[1] for a in ASPECTS])][0]
    return int(np.sqrt(mp * 1e6 * aspect)), int(np.sqrt(mp * 1e6 / aspect))


def frame_camera(rng, conditions: dict, wh, box_mm: np.ndarray, single: bool):
    """Where the phone points: a camera homography framing the ink box (mm, centred on 0) the way a
    person frames a photo of a digit or a number, off-centre but clearly its subject."""
    w, h = wh
    bw, bh = box_mm[1] - box_mm[0]
    if single:  # the digit is 10-50% of the shorter side
        ppm = rng.uniform(0.12, 0.45) * min(w, h) / bh  # (rotation adds a little)
    else:  # the number is 30-80% of the width, each digit at least 6% of the shorter side
        ppm = np.clip(rng.uniform(0.30, 0.80) * w / bw, 0.06 * min(w, h) / bh, 0.35 * min(w, h) / bh)
    tilted = pick(rng, conditions, "tilt") == "yes"
    tilt = rng.uniform(8, 35) if tilted else rng.uniform(0, 2)
    roll = rng.uniform(-4, 4) if rng.random() < 0.7 else rng.uniform(-15, 15)
    axis, focal = rng.uniform(0, np.pi), rng.uniform(0.75, 1.5) * max(w, h)
    corners = np.array([box_mm[0], [box_mm[1][0], box_mm[0][1]], box_mm[1], [box_mm[0][0], box_mm[1][1]]])
    for _ in range(12):  # shrink until the ink, off-centre, fits in the frame with a margin
        slack = np.maximum(0, [w / 2 - ppm * bw / 2 - 0.05 * w, h / 2 - ppm * bh / 2 - 0.05 * h])
        centre = np.array([w / 2, h / 2]) + rng.uniform(-0.7, 0.7, 2) * slack
        m = scene.camera(wh, centre, ppm, roll, tilt, axis, focal)
        px = scene.apply(m, corners)
        if (px.min(0) >= [0.03 * w, 0.03 * h]).all() and (px.max(0) <= [0.97 * w, 0.97 * h]).all():
            break
        ppm *= 0.88
    conditions.update(tilt="yes" if tilted else "no", tilt_deg=round(tilt, 1), roll_deg=round(roll, 1),
                      digit_frac=round(float(np.ptp(px[:, 1]) / min(w, h)), 3))
    return m, ppm, px


# ------------------------------------------------------------------ the scene and the capture


def flat_scene(rng, conditions: dict, glyphs_mm, pen_mm: float, m: np.ndarray, ppm: float, wh,
               bend=None) -> np.ndarray:
    """The desk, the sheet and the writing as the phone sees them: (h, w, 3) reflectance in the photo,
    seen through `bend` (see curl) if the sheet is not flat."""
    w, h = wh
    a = 2 + (max(np.abs(d).max() for d in bend) if bend else 0)  # px around the frame the view may reach
    frame_mm = scene.apply(np.linalg.inv(m), np.array([[-a, -a], [w + a, -a], [w + a, h + a], [-a, h + a]]))
    box = np.array([np.min([g.min(0) for g in glyphs_mm], 0) - pen_mm,
                    np.max([g.max(0) for g in glyphs_mm], 0) + pen_mm])
    sheet = scene.place_sheet(rng, conditions, frame_mm, box)
    lo, hi = frame_mm.min(0) - 2, frame_mm.max(0) + 2
    q = ppm * min(1.0, np.sqrt(CANVAS_MAX * w * h / np.prod((hi - lo) * ppm)))  # px per mm on the sheet
    size = np.ceil((hi - lo) * q).astype(int)
    (sx0, sy0), (sx1, sy1) = np.clip(np.round((sheet - lo) * q).astype(int), 0, size)
    surface = pick(rng, conditions, "desk_surface")
    img = np.empty((size[1], size[0], 3), np.float32)
    if sx0 > 0 or sy0 > 0 or sx1 < size[0] or sy1 < size[1]:  # some desk in the frame
        img[:] = scene.desk_layer(rng, (size[1], size[0]), q, surface, (sx0, sy0, sx1, sy1))
    if sx1 > sx0 and sy1 > sy0:
        colour = np.asarray(scene.PAPERS_RGB[rng.choice(len(scene.PAPERS_RGB), p=scene.PAPER_SHARES)])
        colour = colour * rng.uniform(0.97, 1.02, 3)
        paper = scene.paper_layer(rng, (sy1 - sy0, sx1 - sx0), q, colour)
        horizontal, vertical = [], []
        scene.rules(rng, conditions, sheet, box, horizontal, vertical)
        scene.draw_lines(paper, horizontal, lo[1] + sy0 / q, q, 0)
        scene.draw_lines(paper, vertical, lo[0] + sx0 / q, q, 1)
        img[sy0:sy1, sx0:sx1] = paper
    ink = conditions["ink"]
    dark, pale = (np.asarray(t, np.float32) for t in digits.INK_TRANSMITTANCE[ink])
    fade = rng.uniform(0, 1)
    trans = dark + (pale - dark) * fade
    conditions["ink_contrast"] = round(float(1 - trans.mean()), 2)
    pen_px = pen_mm * q
    for g in glyphs_mm:
        px = (g - lo) * q
        x0, y0 = np.floor(px.min(0) - pen_px - 3).astype(int)
        x1, y1 = np.ceil(px.max(0) + pen_px + 3).astype(int)
        cov = digits.pen_layer(rng, px - [x0, y0], (y1 - y0, x1 - x0), pen_px, ink)
        img[y0:y1, x0:x1] *= 1 - cov[..., None] * (1 - trans)
    seen = cv2.fillConvexPoly(np.zeros((h // 4 + 1, w // 4 + 1), np.uint8),
                              np.round(scene.apply(m, np.array([sheet[0], [sheet[1][0], sheet[0][1]], sheet[1],
                                                          [sheet[0][0], sheet[1][1]]])) / 4).astype(np.int32), 1)
    desk = 1 - float(seen.mean())
    conditions.update(desk_surface=surface, desk_fraction=round(desk, 3), desk_shown="yes" if desk > 0.01 else "no")
    to_canvas = np.array([[1 / q, 0, lo[0]], [0, 1 / q, lo[1]], [0, 0, 1]])
    if bend is None:
        return cv2.warpPerspective(img, m @ to_canvas, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    inv = np.linalg.inv(m @ to_canvas)  # photo px -> canvas px, at each pixel moved by the bend
    x = np.arange(w, dtype=np.float32)[None, :] + bend[0]
    y = np.arange(h, dtype=np.float32)[:, None] + bend[1]
    den = inv[2, 0] * x + inv[2, 1] * y + inv[2, 2]
    return cv2.remap(img, ((inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]) / den).astype(np.float32),
                     ((inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]) / den).astype(np.float32),
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def curl(rng, conditions: dict, wh) -> tuple[np.ndarray, np.ndarray] | None:
    """A sheet that does not lie quite flat (a notebook's page, a curled corner): (dx, dy), how far
    (photo px) each pixel's view of the sheet moves, so that rules and strokes bend; None if flat."""
    conditions["curl"] = bool(conditions["curl"] if "curl" in conditions else rng.random() < CURL_SHARE)
    if not conditions["curl"]:
        return None
    w, h = wh
    amp = rng.uniform(0.002, 0.008) * min(w, h)
    small = (h // 8 + 1, w // 8 + 1)
    return tuple(cv2.resize(smooth_noise(rng, small, max(small) / 1.5) * amp, (w, h)) for _ in range(2))


def depth_of_field(m: np.ndarray, ink_px: np.ndarray, wh, scale: float) -> np.ndarray:
    """(h, w): how far each pixel of the (w, h) photo lies out of the plane in focus (the ink's), as
    |1/Z - 1/Z_ink| / (1/Z_ink). On a tilted sheet 1/Z is linear in the pixel coordinates."""
    r = np.linalg.inv(m)[2]  # of the homography for the photo rendered `scale` times smaller
    inv_z = (r[0] * scale * np.arange(wh[0], dtype=np.float32)[None, :]
             + r[1] * scale * np.arange(wh[1], dtype=np.float32)[:, None] + r[2])
    return np.abs(inv_z / float(r @ [*ink_px.mean(0), 1]) - 1)


def capture(rng, conditions: dict, radiance: np.ndarray, ink_h_px: float, out_of_focus: np.ndarray) -> np.ndarray:
    """Scene radiance -> the phone's 8-bit RGB: white balance, exposure, depth of field, blur, noise,
    sharpening, tone curve."""
    h, w = radiance.shape[:2]
    mp = np.sqrt(w * h / 1e6)  # blur and noise grain scale with the sensor's pixel count
    wb = pick(rng, conditions, "white_balance")
    gains = np.asarray(WHITE_BALANCE[wb]) * rng.uniform(0.97, 1.03, 3)
    target = rng.uniform(0.6, 0.97)  # auto exposure aims at mid-grey: a white page often comes out grey
    exposure = target / np.percentile(radiance[::4, ::4] @ gains / 3, 97)
    img = cv2.GaussianBlur(radiance * (gains * exposure).astype(np.float32), (0, 0), rng.uniform(0.3, 0.8) * mp)
    sigma = np.minimum(out_of_focus * rng.uniform(3, 12) * mp, 6 * mp)  # focused on the ink, close up
    if sigma.max() > 0.7:  # the far side of a tilted sheet is out of focus
        img += (sigma / sigma.max())[..., None] * (cv2.GaussianBlur(img, (0, 0), float(sigma.max())) - img)
    blur = pick(rng, conditions, "blur")
    size = 0.0
    if blur == "defocus":  # a disc, as an out-of-focus lens makes
        size = min(rng.uniform(1.0, 3.0) * mp, 0.04 * ink_h_px)
        r = int(np.ceil(size))
        disc = (np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= size).astype(np.float32)
        img = cv2.filter2D(img, -1, disc / disc.sum())
    elif blur == "motion":  # a shaking hand: a short straight smear
        size = min(rng.uniform(3, 10) * mp, 0.07 * ink_h_px)
        r, ang = int(np.ceil(size / 2)), rng.uniform(0, np.pi)
        line = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
        cv2.line(line, (int(r - np.cos(ang) * size / 2), int(r - np.sin(ang) * size / 2)),
                 (int(r + np.cos(ang) * size / 2), int(r + np.sin(ang) * size / 2)), 1.0, 1, cv2.LINE_AA)
        img = cv2.filter2D(img, -1, line / line.sum())
    noise = min(0.03, (0.003 + 0.02 * rng.random() ** 2) * 0.9 / target)  # at bright paper (mostly low: phones denoise),
    # more where the exposure is short of white (more gain); shot noise grows with the light
    grain = rng.standard_normal((h, w), dtype=np.float32) * np.sqrt(np.clip(img[..., 1], 0, 1) / 0.8)
    chroma = cv2.resize(rng.standard_normal((h // 2, w // 2, 3), dtype=np.float32), (w, h))  # coarser colour noise
    img = img + (grain[..., None] + chroma * rng.uniform(0.3, 1.2)) * noise
    sharpen = bool(rng.random() < 0.6)
    if sharpen:  # phones sharpen: halos along strokes and edges
        img = cv2.addWeighted(img, 1 + (k := rng.uniform(0.3, 1.0)),
                              cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 1.8) * mp), -k, 0)
    tone = np.clip(np.linspace(0, 1, 256) ** rng.uniform(0.85, 1.15) * 255 + 0.5, 0, 255).astype(np.uint8)
    conditions.update(white_balance=wb, exposure=round(target, 2), depth_blur_px=round(float(sigma.max()), 1),
                      blur=blur, blur_px=round(size, 1), noise=round(noise, 3), sharpen=sharpen)
    return cv2.LUT(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), tone)  # the tone curve, after the sensor


# ------------------------------------------------------------------ the API


def digit_height_mm(rng, conditions: dict) -> float:
    """How tall people write a digit on this paper (and, for lined paper, its rule spacing)."""
    paper = conditions["paper"] = pick(rng, conditions, "paper")
    if paper == "lined":  # between 0.6 and 1.2 rule spacings
        conditions["rule_mm"] = round(rng.uniform(*scene.RULE_MM), 2)
        return conditions["rule_mm"] * rng.uniform(0.6, 1.2)
    return rng.uniform(1.0, 2.4) * scene.GRID_MM if paper == "squared" else rng.uniform(10, 30)


def render(rng, kind: str = "digit", conditions: dict | None = None, sources: Sources | None = None,
           size: float | None = None) -> tuple[np.ndarray, str, dict]:
    """One photo before its JPEG step: (h, w, 3) uint8 RGB, the label ('7' or '3141'), the conditions.
    `conditions` forces any of CHOICES' keys (and 'n_digits', 'curl', 'glare', 'jpeg_quality');
    `size` is megapixels (default 0.5-2)."""
    cond = dict(conditions or {})
    sources = sources if sources is not None else load_sources()
    n = 1 if kind == "digit" else int(cond.get("n_digits") or rng.integers(2, 6))
    glyphs, label, pen = write(rng, sources, cond, n)
    h_mm = digit_height_mm(rng, cond)
    glyphs_mm = [g * h_mm for g in glyphs]
    box = np.array([np.min([g.min(0) for g in glyphs_mm], 0), np.max([g.max(0) for g in glyphs_mm], 0)])
    cond["desk"] = pick(rng, cond, "desk")
    wh = frame_shape(rng, size)
    scale = min(1.0, np.sqrt(RENDER_MAX_MP * 1e6 / (wh[0] * wh[1])))
    work = (round(wh[0] * scale), round(wh[1] * scale))
    m, ppm, ink_px = frame_camera(rng, cond, work, box + [[-pen * h_mm], [pen * h_mm]], kind == "digit")
    cond["light"] = pick(rng, cond, "light")
    light, glare = scene.lighting(rng, cond["light"], cond, work, ink_px)
    radiance = flat_scene(rng, cond, glyphs_mm, pen * h_mm, m, ppm, work, curl(rng, cond, work)) * light
    radiance += glare[..., None]
    if work != wh:  # a big photo (12 MP): the scene is upsampled, the sensor works at full size
        radiance = cv2.resize(radiance, wh, interpolation=cv2.INTER_CUBIC)
    rgb = capture(rng, cond, radiance, float(np.ptp(ink_px[:, 1])) / scale, depth_of_field(m, ink_px, wh, scale))
    cond.update(kind=kind, n_digits=n, digit_mm=round(h_mm, 1), width=wh[0], height=wh[1],
                jpeg_quality=int(cond.get("jpeg_quality") or rng.integers(60, 96)))
    return rgb, label, json.loads(json.dumps(cond, default=lambda o: o.item()))  # plain Python values


def jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality))  # 4:2:0 chroma, as phones save
    return buf.getvalue()


def make_photo(rng, kind: str = "digit", conditions: dict | None = None, sources: Sources | None = None,
               size: float | None = None) -> tuple[Image.Image, str, dict]:
    """A phone photo of a handwritten digit (kind='digit') or a number of 2-5 digits (kind='number'):
    (PIL RGB image decoded from its JPEG, label string, conditions dict)."""
    rgb, label, cond = render(rng, kind, conditions, sources, size)
    return Image.open(io.BytesIO(jpeg(rgb, cond["jpeg_quality"]))).convert("RGB"), label, cond


FIXTURE_BYTES = 150_000


def write_fixtures(folder, n: int = 30, seed: int = 0, sources: Sources | None = None) -> dict:
    """About `n` small JPEG photos (at most 1 MP and ~150 KB each) covering every condition's values,
    a quarter of them numbers, and labels.json: file name -> {label, kind, conditions}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = sources if sources is not None else load_sources()
    balanced = {key: rng.permutation(np.resize(list(values), n)) for key, values in CHOICES.items()}
    labels = {}
    for i in range(n):
        forced = {key: str(v[i]) for key, v in balanced.items()} | {"glare": i % 7 == 3}
        kind = "number" if i % 4 == 1 else "digit"
        rgb, label, cond = render(rng, kind, forced, sources, size=rng.uniform(0.5, 1.0))
        raw = jpeg(rgb, cond["jpeg_quality"])
        while len(raw) > FIXTURE_BYTES and cond["jpeg_quality"] > 60:  # keep the set small
            cond["jpeg_quality"] = max(60, cond["jpeg_quality"] - 8)
            raw = jpeg(rgb, cond["jpeg_quality"])
        name = f"photo_{i:02d}.jpg"
        (folder / name).write_bytes(raw)
        labels[name] = {"label": label, "kind": kind, "conditions": cond}
    (folder / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return labels


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write-fixtures", metavar="DIR", help="write a small labelled photo set to DIR")
    p.add_argument("--n", type=int, default=30, help="photos to write")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.write_fixtures:
        p.error("nothing to do: give --write-fixtures DIR")
    labels = write_fixtures(args.write_fixtures, args.n, args.seed)
    print(f"wrote {len(labels)} photos and labels.json to {args.write_fixtures}")


if __name__ == "__main__":
    main()
