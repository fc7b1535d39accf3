"""Bring a person's image of a digit (or of a written number) into MNIST's form.

MNIST digits are white ink on black, size-normalized into a 20x20 box that keeps the
aspect ratio (grey levels from anti-aliasing), then centred by centre of mass in 28x28.
Feeding anything else to the network is the classic demo bug, so the CLI, the REST API
and the web page all go through this one module:

    decode -> luminance (alpha, 16-bit, palette, CMYK) -> polarity -> denoise, background,
    threshold, specks -> crop at full resolution -> one resize to the 20x20 box -> centre

    mnist-cnn predict my_digit.jpg --save-processed processed/
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

MAX_BYTES = 64 * 2**20  # refuse bigger files before decoding them
MAX_PIXELS = 40_000_000  # our own limit, below Pillow's decompression-bomb limit (~89 MP)
WORK_SIDE = 1024  # ink is found on a copy at most this big; the crop itself is taken at full resolution
BOX, FIELD = 20, 28  # MNIST: the digit's box, and the field it is centred in
CENTRE = 14.0  # mean centre of mass of the MNIST test digits, in pixel-index coordinates (measured)
MIN_CONTRAST = 0.10  # ink must stand this far (of full scale) above the paper, or the image is empty
LEVEL_PCT, FLOOR, THRESH = 50, 0.25, 0.5
SPECK = 0.03  # components smaller than this fraction of the largest one are specks


class ImageError(ValueError):
    """An input image we cannot use, with the reason phrased for a person."""


# ------------------------------------------------------------------- decode


def decode(raw: bytes) -> Image.Image:
    """Bytes of any format Pillow reads -> an upright, fully loaded image (first frame if animated)."""
    if not raw:
        raise ImageError("the file is empty")
    if len(raw) > MAX_BYTES:
        raise ImageError(f"the file is {len(raw) / 2**20:.0f} MiB; the limit is {MAX_BYTES / 2**20:.0f} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own limit: refuse, not warn
            img = Image.open(io.BytesIO(raw))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"the image is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); "
                                 f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels")
            img.seek(0)  # an animation is read as its first frame
            img.load()
            return ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image (or not in a format Pillow can read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a possible decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
        raise ImageError(f"the image is truncated or corrupt ({type(exc).__name__}: {exc})") from None


def open_image(source: str | Path | bytes) -> Image.Image:
    """`decode` for a path or raw bytes."""
    if isinstance(source, (bytes, bytearray)):
        return decode(bytes(source))
    path = Path(source)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ImageError(f"the file is {path.stat().st_size / 2**20:.0f} MiB; "
                             f"the limit is {MAX_BYTES / 2**20:.0f} MiB")
        return decode(path.read_bytes())
    except OSError as exc:
        raise ImageError(f"cannot read it: {exc.strerror or exc}") from None


# ------------------------------------------------------------------- pixels


def luminance(img: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1], 0 = black. Transparent images are composited onto paper first."""
    if img.mode.startswith("I"):  # 16- or 32-bit grey
        a = np.asarray(img, dtype=np.float32)
        return np.clip(a / (65535.0 if a.max() > 255 else 255.0), 0, 1)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        return np.clip(a / max(1.0, float(a.max())), 0, 1)
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # keeps a palette's transparency
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    grey = np.asarray(img.convert("L"), dtype=np.float32) / 255
    if "A" not in img.getbands():
        return grey
    alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255
    if alpha.min() > 0.99:
        return grey
    # A canvas drawing: the strokes are in alpha, and transparent pixels' colour is
    # arbitrary. Composite onto the paper that contrasts with the visible strokes.
    visible = alpha > 0.5
    dark_ink = not visible.any() or float(grey[visible].mean()) < 0.5
    return grey * alpha + (1.0 if dark_ink else 0.0) * (1 - alpha)


def _median3(x: np.ndarray) -> np.ndarray:
    """3x3 median filter (edges replicated): removes salt-and-pepper noise, keeps stroke edges."""
    p = np.pad(x, 1, mode="edge")
    h, w = x.shape
    return np.median(np.stack([p[i:i + h, j:j + w] for i in range(3) for j in range(3)]), axis=0)


def _background(x: np.ndarray) -> np.ndarray | float:
    """The paper's level under the (bright) ink: one number, or a smooth map when the lighting is uneven."""
    h, w = x.shape
    cells = min(8, max(h, w) // 32)  # blocks of >= 32 px
    if cells < 3:
        return float(np.median(x))
    ys, xs = np.linspace(0, h, cells + 1).astype(int), np.linspace(0, w, cells + 1).astype(int)
    # A block's 5th percentile is its paper if a twentieth of it is paper; the minimum over
    # neighbouring blocks covers blocks that lie wholly inside a thick stroke.
    grid = np.array([[np.percentile(x[ys[i]:ys[i + 1], xs[j]:xs[j + 1]], 5) for j in range(cells)]
                     for i in range(cells)])
    grid = -_maxpool3(-grid)
    if grid.max() - grid.min() < 0.08:  # even lighting: one level is steadier than a map
        return float(np.median(x))
    up = Image.fromarray(grid.astype(np.float32), "F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def _maxpool3(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, 1, mode="edge")
    h, w = x.shape
    return np.max(np.stack([p[i:i + h, j:j + w] for i in range(3) for j in range(3)]), axis=0)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (0 = background, 1..n) by union-find over row runs."""
    h, w = mask.shape
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)  # runs in row-major order; ends are exclusive
    ends = np.nonzero(edges == -1)[1]
    parent = list(range(len(starts)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(h + 1))
    for r in range(1, h):
        i, j = first[r - 1], first[r]
        while i < first[r] and j < first[r + 1]:
            if starts[j] <= ends[i] and starts[i] <= ends[j]:  # touching, diagonals included
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(len(starts))], dtype=np.int64)
    _, run_label = np.unique(roots, return_inverse=True)
    labels = np.zeros(h * w, dtype=np.int32)
    lengths = ends - starts
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels[np.repeat(rows * w + starts, lengths) + offsets] = np.repeat(run_label + 1, lengths)
    return labels.reshape(h, w), int(run_label.max() + 1) if len(starts) else 0


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the True pixels, ends exclusive."""
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


# --------------------------------------------------------------------- ink


@dataclass
class Page:
    """Where the ink is: found on a working copy reduced `factor` times, kept next to the full image."""

    full: np.ndarray  # (H, W) full-resolution luminance
    invert: bool  # dark ink on light paper
    factor: int  # working copy = full reduced this many times
    ink: np.ndarray  # working copy: ink-positive, denoised, paper subtracted
    background: np.ndarray | float  # paper level on the working copy
    level: float  # a typical stroke's strength above the paper (maps to white)
    threshold: float  # ink / paper split, on `ink`
    labels: np.ndarray  # components of the kept ink (0 = none)
    count: int


def find_ink(img: Image.Image) -> Page | None:
    """Locate the ink, or None when there is none (a blank or uniform image)."""
    full = luminance(img)
    f = max(1, math.ceil(max(full.shape) / WORK_SIDE))
    h, w = full.shape[0] // f * f, full.shape[1] // f * f
    if h == 0 or w == 0:
        return None
    small = full[:h, :w].reshape(h // f, f, w // f, f).mean((1, 3))  # block means: also a denoiser
    ring = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    border = float(np.median(ring))  # the page's edge is almost always paper
    invert = border - small.min() > small.max() - border
    x = 1 - small if invert else small
    if f == 1 and min(x.shape) >= 64:  # only where strokes are wide enough to survive a median
        x = _median3(x)
    background = _background(x)
    d = x - background
    spread = 1.4826 * float(np.median(np.abs(d - np.median(d))))  # the paper's noise
    peak = float(d.max())
    if peak < max(MIN_CONTRAST, 8 * spread):
        return None
    level = float(np.percentile(d[d > 0.3 * peak], LEVEL_PCT))
    threshold = max(THRESH * level, 4 * spread)
    labels, n = label_components(d > threshold)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = areas >= max(2, SPECK * areas.max())
    keep &= ~_frames(labels, n, keep)
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[1:][keep] = np.arange(1, keep.sum() + 1)
    return Page(full, invert, f, d, background, level, threshold, lut[labels], int(keep.sum()))


def _frames(labels: np.ndarray, n: int, keep: np.ndarray) -> np.ndarray:
    """Components that touch the edge and span most of it (a paper's edge, a frame, a table), unless
    they are all the ink there is (a drawing that fills its canvas)."""
    h, w = labels.shape
    frames = np.zeros(n, dtype=bool)
    for i in np.nonzero(keep)[0]:
        y0, y1, x0, x1 = bbox(labels == i + 1)
        touches = y0 == 0 or x0 == 0 or y1 == h or x1 == w
        frames[i] = touches and (y1 - y0 > 0.9 * h or x1 - x0 > 0.9 * w)
    return frames if (keep & ~frames).any() else np.zeros(n, dtype=bool)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Grow a mask by r pixels (a square), as two 1-D max-pools."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    t = torch.nn.functional.max_pool2d(t, (1, 2 * r + 1), stride=1, padding=(0, r))
    return torch.nn.functional.max_pool2d(t, (2 * r + 1, 1), stride=1, padding=(r, 0))[0, 0].numpy() > 0


def render(page: Page, mask: np.ndarray) -> torch.Tensor:
    """The ink under `mask` (working-copy coordinates) as an MNIST digit: (28, 28) uint8."""
    y0, y1, x0, x1 = bbox(mask)
    r = max(1, math.ceil(max(y1 - y0, x1 - x0) / BOX))  # about one output pixel: room for anti-aliased edges
    hs, ws = page.ink.shape
    y0, y1, x0, x1 = max(0, y0 - r), min(hs, y1 + r), max(0, x0 - r), min(ws, x1 + r)
    keep = _dilate(mask[y0:y1, x0:x1], r)
    f = page.factor
    if f == 1:  # the working copy is the full image, already denoised
        ink = page.ink[y0:y1, x0:x1]
    else:  # crop at full resolution, so the only downscale is the one to the 20x20 box
        crop = page.full[y0 * f:y1 * f, x0 * f:x1 * f]
        ink = (1 - crop if page.invert else crop) - _upsample(page.background, (y0, y1, x0, x1), f)
        keep = keep.repeat(f, 0).repeat(f, 1)
    v = np.clip((ink / page.level - FLOOR) / (1 - FLOOR), 0, 1) * keep  # grey levels kept, specks and paper zeroed
    by0, by1, bx0, bx1 = bbox(v > (page.threshold / page.level - FLOOR) / (1 - FLOOR))
    scale = BOX / max(by1 - by0, bx1 - bx0)
    m = math.ceil(1.5 / scale)  # keep 1.5 output pixels of faint edge around the box
    by0, bx0, by1, bx1 = max(0, by0 - m), max(0, bx0 - m), by1 + m, bx1 + m
    patch = v[by0:by1, bx0:bx1]
    size = (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale)))
    # Area averaging (BOX) when shrinking: MNIST's own anti-aliasing is about that sharp; a
    # bilinear kernel spans two output pixels and blurs every stroke. Bilinear when enlarging.
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(patch.astype(np.float32), "F").resize(size, method))
    return centre(torch.from_numpy(np.clip(small, 0, 1).astype(np.float32)))


def _upsample(background, box, f: int):
    if isinstance(background, float):
        return background
    y0, y1, x0, x1 = box
    return np.asarray(background[y0:y1, x0:x1], dtype=np.float32).repeat(f, 0).repeat(f, 1)


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


def to_mnist(img: Image.Image) -> torch.Tensor | None:
    """One digit -> (28, 28) uint8, white ink on black, as MNIST; None when the image has no ink."""
    page = find_ink(img)
    if page is None or page.count == 0:
        return None
    return render(page, page.labels > 0)


# ------------------------------------------------------------- multi-digit


def segment_digits(img: Image.Image) -> list[torch.Tensor]:
    """A written number -> its digits left to right, each in `to_mnist` form ([] when no ink)."""
    page = find_ink(img)
    if page is None or page.count == 0:
        return []
    return [render(page, mask) for mask in digit_masks(page.labels, page.count)]


def digit_masks(labels: np.ndarray, count: int) -> list[np.ndarray]:
    """Group components into digits: merge a digit's broken strokes, split touching digits."""
    boxes = [bbox(labels == i) for i in range(1, count + 1)]
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    groups = [[i] for i in np.argsort([b[2] for b in boxes])]  # left to right
    merged = True
    while merged:  # pieces that share most of their columns belong to one digit (the bar of a 5, a broken 4)
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if _overlap(_span(boxes, groups[a]), _span(boxes, groups[b])) >= 0.5:
                    groups[a] += groups.pop(b)
                    merged = True
                    break
            if merged:
                break
    spans = [_span(boxes, g) for g in groups]
    sizes = np.array([areas[g].sum() for g in groups])
    heights = np.array([y1 - y0 for y0, y1, _, _ in spans])
    height = float(np.median(heights[sizes >= 0.25 * sizes.max()]))  # a digit's height in this number
    # A short, light group is a piece of a digit (a 5's detached bar), not a digit: attach it to
    # the digit it overlaps most, or that is nearest; far from every digit, it is a stray mark.
    piece = (heights < 0.5 * height) & (sizes < 0.3 * np.median(sizes))
    digits = [k for k in range(len(groups)) if not piece[k]] or list(range(len(groups)))
    members = {k: list(groups[k]) for k in digits}
    for k in set(range(len(groups))) - set(digits):
        best = max(digits, key=lambda d: (_overlap(spans[d], spans[k]), -_gap(spans[d], spans[k])))
        if _gap(spans[best], spans[k]) < 0.3 * height:
            members[best] += groups[k]
    masks = []
    for k in digits:
        y0, y1, x0, x1 = _span(boxes, members[k])
        masks.extend(_split(np.isin(labels, np.array(members[k]) + 1), max(y1 - y0, height), x0, x1))
    return masks


def _span(boxes, group):
    b = np.array([boxes[i] for i in group])
    return int(b[:, 0].min()), int(b[:, 1].max()), int(b[:, 2].min()), int(b[:, 3].max())


def _overlap(a, b) -> float:
    """Shared columns as a fraction of the narrower box's width."""
    shared = min(a[3], b[3]) - max(a[2], b[2])
    return shared / max(1, min(a[3] - a[2], b[3] - b[2]))


def _gap(a, b) -> int:
    return max(a[2], b[2]) - min(a[3], b[3])


def _split(mask: np.ndarray, height: int, x0: int, x1: int) -> list[np.ndarray]:
    """Split a blob wider than any single digit at the thinnest columns near the expected cuts."""
    # MNIST digits are at most ~1.4x as wide as tall (95th percentile of the widest class, a 5).
    if (x1 - x0) < 1.5 * height:
        return [mask]
    n = max(2, round((x1 - x0) / (0.85 * height)))
    ink = mask.sum(0)
    cuts = [x0]
    for k in range(1, n):
        c, half = x0 + k * (x1 - x0) / n, 0.3 * (x1 - x0) / n
        lo, hi = int(c - half), int(c + half) + 1
        cuts.append(lo + int(np.argmin(ink[lo:hi] + 1e-3 * np.abs(np.arange(lo, hi) - c))))
    cuts.append(x1)
    pieces = []
    for a, b in zip(cuts, cuts[1:]):
        piece = np.zeros_like(mask)
        piece[:, a:b] = mask[:, a:b]
        if piece.any():
            pieces.append(piece)
    return pieces
