"""What the library takes as an image, taken at face value or refused, never guessed at.

Pixels are uint8 (0..255) or floating point in [0, 1]; any other dtype, a float outside [0, 1]
(0..255 floats, say) and NaN are refused with the reason, since each has two readings and the
wrong one quietly classifies every digit as the same class. A picture (anything that
`preprocess` brings into MNIST's form) may be a path, raw bytes, a PIL image, a numpy array
(H, W) or (H, W, C), or a torch tensor (H, W) or (C, H, W), C being 1, 3 or 4.

    python -c "import numpy as np; from mnist_cnn.inputs import as_pixels; print(as_pixels(np.ones((2, 2))))"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import InputError

CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}  # PIL's mode for an image of that many channels


def as_pixels(x, what: str = "image") -> torch.Tensor:
    """uint8 pixels (a CPU tensor, same shape) from uint8, or from floats in [0, 1] (scaled by 255, rounded)."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise InputError(_dtype_message(what, x.dtype))
        x = np.ascontiguousarray(x)
        x = torch.from_numpy(x if x.flags.writeable else x.copy())  # np.asarray(a PIL image) is read-only
    if not isinstance(x, torch.Tensor):
        raise InputError(f"the {what} is a {type(x).__name__}, not an array of pixels")
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise InputError(_dtype_message(what, x.dtype))
    if x.numel() and not torch.isfinite(x).all():
        raise InputError(f"the {what} has pixels that are not numbers (NaN or infinite)")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise InputError(f"the {what} is float with values in [{float(x.min()):g}, {float(x.max()):g}]; float "
                         "pixels must be in [0, 1] (for 0..255 values, convert to uint8 first)")
    return (x.float() * 255).round().to(torch.uint8)


def _dtype_message(what: str, dtype) -> str:
    return (f"the {what} has dtype {dtype}; pixels are uint8 (0..255) or float (0..1), so convert 0..255 "
            "integers to uint8 first (x.astype(np.uint8), x.to(torch.uint8))")


def to_image(x) -> Image.Image:
    """A picture of a digit or number, as a PIL image for `preprocess` (`images` decodes and checks files)."""
    from . import images

    if isinstance(x, Image.Image):
        return x
    if isinstance(x, (str, Path)):
        return images.open_image(Path(x))
    if isinstance(x, (bytes, bytearray, memoryview)):
        return images.decode(bytes(x))
    if isinstance(x, torch.Tensor) and x.dim() == 3:  # torch's layout is (C, H, W)
        x = x.permute(1, 2, 0)
    if not isinstance(x, (np.ndarray, torch.Tensor)):
        raise InputError(f"cannot read a {type(x).__name__} as an image: give a path, bytes, a PIL image, "
                         "a numpy array (H, W) or (H, W, C), or a torch tensor (H, W) or (C, H, W)")
    pixels = as_pixels(x).numpy()
    if pixels.ndim == 3 and pixels.shape[2] in CHANNELS:
        return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, CHANNELS[pixels.shape[2]])
    if pixels.ndim == 2:
        return Image.fromarray(pixels, "L")
    raise InputError(f"an image array has shape (H, W) or (H, W, C) with C = 1, 3 or 4 (a tensor: (C, H, W)), "
                     f"not {tuple(x.shape)}")
