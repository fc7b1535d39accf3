"""Synthetic lines of handwritten digits, made on the fly from MNIST digits with batched torch ops.

Each line is 1-10 digits side by side in a 28-px-tall strip: every digit gets its own scale, slant and
vertical jitter, and neighbours are set apart, touching, or overlapping by up to a third of a digit's
width, so that the sequence reader learns where one digit ends and the next begins when the ink of
the two is one piece. Only the digits handed in are used (training digits for training, validation
digits for selection, test digits for benchmarks/numbers.py).

    python -c "import torch; from mnist_cnn.lines import make_lines; \
        print(make_lines(torch.zeros(9, 28, 28, dtype=torch.uint8), torch.arange(9), 4, 3, \
        torch.Generator().manual_seed(0))[0].shape)"
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FIELD = 28  # MNIST's field: a line is as tall as one digit's
PAD = 4  # blank columns at each end of a line (as the page's line crop leaves)
# How neighbours sit, as shares of all gaps: apart (2-8 px), touching (-2..1 px), overlapping (0.1-0.35
# of the narrower digit's width). The rest of the variety is per digit.
APART, TOUCHING = 0.35, 0.35
SCALE, SLANT, JITTER = 0.15, 0.3, 2.0  # +-relative size, +-shear (x per y), +-vertical shift in pixels


def _uniform(shape, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def make_lines(x: torch.Tensor, y: torch.Tensor, batch: int, length: int, g: torch.Generator,
               gaps: str = "mixed") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lines (B, 28, W) float in [0, 1], labels (B, length) int64, digit centres (B, length) in columns).

    `x` are MNIST digits (N, 28, 28) uint8 and `y` their labels; `gaps` is "mixed" (training), or one
    of "apart", "touching", "overlap" for a benchmark set.
    """
    n = batch * length
    idx = torch.randint(len(x), (n,), generator=g)
    digits = x[idx].float().div(255).unsqueeze(1)  # (n, 1, 28, 28)
    # One affine warp per digit: its own scale and vertical jitter, and the line's slant.
    zoom = 1 + _uniform(n, -SCALE, SCALE, g)
    slant = _uniform(batch, -SLANT, SLANT, g).repeat_interleave(length)
    shift = _uniform(n, -JITTER, JITTER, g) * 2 / FIELD
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 1], theta[:, 1, 2] = 1 / zoom, slant / zoom, 1 / zoom, shift
    grid = F.affine_grid(theta, list(digits.shape), align_corners=False)
    digits = F.grid_sample(digits, grid, align_corners=False).squeeze(1)  # (n, 28, 28)
    # Each digit's ink columns, then the gap before the next one.
    inked = digits.amax(1) > 0.1  # (n, 28)
    cols = torch.arange(FIELD)
    first = torch.where(inked, cols, FIELD).amin(1).clamp(max=FIELD - 1)
    last = torch.where(inked, cols, -1).amax(1).clamp(min=first)
    width = (last - first + 1).float().view(batch, length)
    kind = {"apart": 0.0, "touching": 0.5, "overlap": 0.9}.get(gaps)
    r = torch.rand(batch, length, generator=g) if kind is None else torch.full((batch, length), kind)
    narrower = torch.minimum(width, width.roll(-1, 1))
    gap = torch.where(r < APART, _uniform((batch, length), 2, 8, g),
                      torch.where(r < APART + TOUCHING, _uniform((batch, length), -2, 1, g),
                                  -narrower * _uniform((batch, length), 0.1, 0.35, g)))
    if kind == 0.5:  # the benchmark's "half-touching" set: about half of the gaps touch, the rest stand apart
        gap = torch.where(torch.rand(batch, length, generator=g) < 0.5, gap, _uniform((batch, length), 2, 8, g))
    step = (width + gap).clamp(min=1)  # from one digit's left edge to the next one's
    left = PAD + torch.cat([torch.zeros(batch, 1), step[:, :-1].cumsum(1)], 1).round().long()  # (B, L)
    right = (left + width.long()).amax(1)
    total = int(right.max()) + PAD
    # Paste: each digit's 28 columns land at left - first; overlapping ink keeps the darker stroke.
    start = left.view(n) - first
    where = (start[:, None] + cols).clamp(0, total + FIELD - 1)  # (n, 28): faint edges may pile at the ends
    canvas = torch.zeros(batch, FIELD, total + FIELD)
    src = digits.view(batch, length, FIELD, FIELD).permute(0, 2, 1, 3).reshape(batch, FIELD, n // batch * FIELD)
    index = where.view(batch, 1, length * FIELD).expand(batch, FIELD, length * FIELD)
    canvas.scatter_reduce_(2, index, src, "amax")
    centres = left.float() + width / 2
    return canvas[:, :, :total], y[idx].view(batch, length), centres


def thicken(lines: torch.Tensor, g: torch.Generator, share: float = 0.25) -> torch.Tensor:
    """A random `share` of the lines with bolder strokes (a 3x3 grey dilation), as a felt pen writes."""
    bold = F.max_pool2d(lines.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
    pick = torch.rand(len(lines), 1, 1, generator=g) < share
    return torch.where(pick, 0.5 * (lines + bold), lines)


def soften(lines: torch.Tensor, g: torch.Generator, share: float = 0.3) -> torch.Tensor:
    """A random `share` of the lines blurred (a 3x3 [1, 2, 1] kernel) and another `share` with a harder grey
    floor (levels below 0-0.3 cut, the rest stretched): a page scaled 3-6x with blur and JPEG and read back
    comes to the reader softer, or with its faint edges cut by the page's ink floor."""
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
    blurred = F.conv2d(lines.unsqueeze(1), kernel, padding=1).squeeze(1)
    pick = torch.rand(len(lines), 1, 1, generator=g)
    floor = _uniform((len(lines), 1, 1), 0.0, 0.3, g)
    hard = ((lines - floor) / (1 - floor)).clamp(0, 1)
    return torch.where(pick < share, blurred, torch.where(pick < 2 * share, hard, lines))
