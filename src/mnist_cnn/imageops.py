"""Array operations on greyscale images and ink masks, in numpy: small filters, a least-squares
paper plane, connected components and their boxes, dilation, stroke width.

They are the building blocks of `preprocess` and `segment`, kept apart from the
thresholds and decisions that use them.
"""

from __future__ import annotations

import math

import numpy as np


def median3(x: np.ndarray) -> np.ndarray:
    """3x3 median filter (edges replicated): removes salt-and-pepper noise, keeps stroke edges."""
    return pool3(x, np.median)


def pool3(x: np.ndarray, op) -> np.ndarray:
    """`op` (np.min, np.max) over each pixel's 3x3 neighbourhood, edges replicated."""
    p = np.pad(x, 1, mode="edge")
    h, w = x.shape
    return op(np.stack([p[i:i + h, j:j + w] for i in range(3) for j in range(3)]), axis=0)


def paper_plane(x: np.ndarray) -> np.ndarray:
    """Least-squares plane through the paper: bright ink is dropped as an outlier, three times."""
    h, w = x.shape
    step = max(1, int(math.sqrt(h * w / 20000)))  # ~20k samples are plenty for three numbers
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    a = np.stack([np.ones(ys.size), ys.ravel() / h, xs.ravel() / w], 1)
    v = x[::step, ::step].ravel().astype(np.float64)
    paper = np.ones(len(v), dtype=bool)
    for _ in range(3):
        coef = np.linalg.lstsq(a[paper], v[paper], rcond=None)[0]
        r = v - a @ coef
        centre = np.median(r[paper])
        paper = r <= centre + 2.5 * 1.4826 * np.median(np.abs(r[paper] - centre)) + 1e-3
    yy, xx = np.mgrid[0:h, 0:w]
    return (coef[0] + coef[1] * yy / h + coef[2] * xx / w).astype(np.float32)


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


def component_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) boxes (y0, y1, x0, x1) of labels 1..n, ends exclusive, in one pass over the ink."""
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs] - 1
    out = np.zeros((n, 4), dtype=np.int64)
    out[:, 0], out[:, 2] = labels.shape
    np.minimum.at(out[:, 0], lab, ys)
    np.maximum.at(out[:, 1], lab, ys + 1)
    np.minimum.at(out[:, 2], lab, xs)
    np.maximum.at(out[:, 3], lab, xs + 1)
    return out


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the True pixels, ends exclusive."""
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def dilate(a: np.ndarray, r: int, grow: bool = False) -> np.ndarray:
    """Max over a (2r+1)-square around each pixel; `grow` also extends the array by r on each side.

    Running maxima by doubling windows: O(log r) array passes however large r is."""
    a = np.pad(a, 2 * r if grow else r)
    for axis in (0, 1):
        m, p, k = a, 1, 2 * r + 1
        while 2 * p <= k:  # m[i] = max(a[i:i + 2p]) along the axis
            n = m.shape[axis]
            m = np.maximum(m.take(range(n - p), axis), m.take(range(p, n), axis))
            p *= 2
        n = a.shape[axis] - k + 1  # max(a[i:i + k]) = max(m[i], m[i + k - p])
        a = np.maximum(m.take(range(n), axis), m.take(range(k - p, k - p + n), axis))
    return a


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: area over length, the length being half the perimeter."""
    p = np.pad(mask, 1).astype(np.int8)
    perimeter = np.abs(np.diff(p, axis=0)).sum() + np.abs(np.diff(p, axis=1)).sum()  # pixel edges
    return 2 * float(mask.sum()) / max(1, int(perimeter))
