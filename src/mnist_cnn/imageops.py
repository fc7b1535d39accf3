"""Array operations on ink masks and grey images: connected components and their boxes, dilation,
stroke width (OpenCV where it has the operation).

They are the building blocks of `preprocess` and `segment`, kept apart from the
thresholds and decisions that use them.
"""

from __future__ import annotations

import cv2
import numpy as np


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (0 = background, 1..n) and n."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return labels, n - 1


def components_with_stats(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components with their stats: n (background included), labels (H, W) int32 and
    stats (n, 5) (x, y, w, h, area), as cv2.connectedComponentsWithStats gives them. The block-based
    algorithm (BBDT) labels in the same order, and on one thread takes a third of the time."""
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask.astype(np.uint8), 8, cv2.CV_32S,
                                                                          cv2.CCL_BBDT)
    return n, labels, stats


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
    """Max over a (2r+1)-square around each pixel (zeros outside); `grow` also extends the array by r
    on each side. Masks stay masks."""
    x = np.pad(a, r) if grow else a
    x = x.astype(np.uint8) if x.dtype == bool else x
    out = cv2.dilate(x, np.ones((2 * r + 1, 2 * r + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool) if a.dtype == bool else out


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels: area over length, the length being half the perimeter."""
    p = np.pad(mask, 1).astype(np.int8)
    perimeter = np.abs(np.diff(p, axis=0)).sum() + np.abs(np.diff(p, axis=1)).sum()  # pixel edges
    return 2 * float(mask.sum()) / max(1, int(perimeter))
