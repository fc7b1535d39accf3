"""Batched, pure tensor-in/tensor-out transforms that run on the training device.

Random numbers come from a CPU `torch.Generator`, so a seed gives the same
augmentation on every device; the results then follow the input to its device.

    python -c "import torch; from mnist_cnn.augment import random_affine as f; \
        print(f(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0), translate=2).shape)"
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images (B, 28, 28) -> normalized float (B, 1, 28, 28) on the same device."""
    x = (x.float() / 255.0 - mean) / std
    return x.unsqueeze(1) if x.dim() == 3 else x


def _uniform(n: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2 - 1) * bound


def affine_matrices(n: int, generator: torch.Generator, translate: float = 0.0, rotate: float = 0.0,
                    scale: float = 0.0, shear: float = 0.0, size: int = 28) -> torch.Tensor:
    """(n, 2, 3) random affine matrices in `affine_grid`'s normalized coordinates.

    translate is in pixels, rotate and shear in degrees, scale relative (0.1 = +-10%).
    """
    angle = _uniform(n, math.radians(rotate), generator)
    shear_ = _uniform(n, math.radians(shear), generator)
    zoom = 1 + _uniform(n, scale, generator)
    # affine_grid maps output coordinates to input ones in [-1, 1], so a shift of
    # t pixels is 2t/size there; inverting the zoom makes `zoom > 1` enlarge digits.
    shift = torch.stack([_uniform(n, translate, generator), _uniform(n, translate, generator)], 1) * 2 / size
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear_)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / zoom
    theta[:, 0, 1] = (-sin + cos * tan) / zoom
    theta[:, 1, 0] = sin / zoom
    theta[:, 1, 1] = (cos + sin * tan) / zoom
    theta[:, :, 2] = shift
    return theta


def random_affine(x: torch.Tensor, generator: torch.Generator, translate: float = 0.0, rotate: float = 0.0,
                  scale: float = 0.0, shear: float = 0.0) -> torch.Tensor:
    """Randomly shift, rotate, zoom and shear a float batch (B, C, H, W).

    Areas brought in from outside are filled with the image's background, which is
    each image's minimum (0 before normalization, -mean/std after).
    """
    theta = affine_matrices(len(x), generator, translate, rotate, scale, shear, x.shape[-1])
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + background


def random_translate(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Integer shifts by pad-and-crop: cheaper than `random_affine` when shifting is all we want."""
    b, _, h, w = x.shape
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = F.pad(x - background, (pixels,) * 4)
    dy = torch.randint(0, 2 * pixels + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pixels + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    return padded[batch, torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols] + background


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Deterministic integer shift (for test-time augmentation), filling with the background."""
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    out = torch.roll(x - background, shifts=(dy, dx), dims=(2, 3))
    if dy > 0:
        out[:, :, :dy] = 0
    elif dy < 0:
        out[:, :, dy:] = 0
    if dx > 0:
        out[:, :, :, :dx] = 0
    elif dx < 0:
        out[:, :, :, dx:] = 0
    return out + background


def augment_batch(x: torch.Tensor, generator: torch.Generator, cfg) -> torch.Tensor:
    """Apply a recipe's augmentation (its translate/rotate/scale/shear fields) to a float batch."""
    if cfg.rotate or cfg.scale or cfg.shear:
        return random_affine(x, generator, cfg.translate, cfg.rotate, cfg.scale, cfg.shear)
    if cfg.translate:
        return random_translate(x, generator, int(cfg.translate))
    return x
