"""Batched, pure tensor-in/tensor-out transforms that run on the training device.

Random numbers come from a CPU `torch.Generator`, so a seed gives the same
augmentation on every device. Drawing (`draw_augmentation`) is apart from applying
(`apply_augmentation`), so that training draws a whole epoch's parameters at once and
moves them to the device in one copy, not one per step.

    python -c "import torch; from mnist_cnn.augment import random_affine as f; \
        print(f(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0), translate=2).shape)"
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images (B, 28, 28) -> normalized float (B, 1, 28, 28) on the same device.

    Only uint8 is taken: a float image may be in [0, 1] or in [0, 255], and dividing either by
    255 without knowing which once classified every digit as a 1 (`inputs.as_pixels` converts).
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float takes uint8 images (0..255), not {x.dtype}; convert them with "
                        "inputs.as_pixels, which checks their range")
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
    """Randomly shift, rotate, zoom and shear a float batch (B, C, H, W)."""
    return affine(x, affine_matrices(len(x), generator, translate, rotate, scale, shear, x.shape[-1]))


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp a float batch (B, C, H, W) by `affine_grid` matrices (B, 2, 3).

    Areas brought in from outside are filled with the image's background, which is
    each image's minimum (0 before normalization, -mean/std after).
    """
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + background


def random_translate(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Integer shifts by pad-and-crop: cheaper than `random_affine` when shifting is all we want."""
    return translate(x, translate_offsets(len(x), generator, pixels), pixels)


def translate_offsets(n: int, generator: torch.Generator, pixels: int) -> torch.Tensor:
    """(n, 2) random crop offsets (dy, dx) in [0, 2 * pixels] for `translate`."""
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    return torch.stack([dy, dx], 1)


def translate(x: torch.Tensor, offsets: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shift each image of a float batch (B, C, H, W) by offsets (B, 2) - pixels, filling with its background."""
    b, _, h, w = x.shape
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = F.pad(x - background, (pixels,) * 4)
    offsets = offsets.to(x.device)
    dy, dx = offsets[:, 0], offsets[:, 1]
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


def draw_augmentation(n: int, generator: torch.Generator, cfg) -> torch.Tensor | None:
    """The random parameters of a recipe's augmentation for n images (None: the recipe has none).

    Affine matrices (n, 2, 3) when it rotates, zooms or shears, else crop offsets (n, 2) when it
    only translates; drawn from `generator` on the CPU, whatever device they are applied on.
    """
    if cfg.rotate or cfg.scale or cfg.shear:
        return affine_matrices(n, generator, cfg.translate, cfg.rotate, cfg.scale, cfg.shear)
    if cfg.translate:
        return translate_offsets(n, generator, int(cfg.translate))
    return None


def apply_augmentation(x: torch.Tensor, params: torch.Tensor | None, cfg) -> torch.Tensor:
    """A float batch augmented with parameters from `draw_augmentation` (on any device)."""
    if params is None:
        return x
    if cfg.rotate or cfg.scale or cfg.shear:
        return affine(x, params)
    return translate(x, params, int(cfg.translate))
