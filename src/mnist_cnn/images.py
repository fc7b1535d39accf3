"""Image files -> upright, decoded Pillow images, and their luminance: the one door images come in by.

Every format Pillow reads (and HEIC/HEIF with the optional extra), EXIF orientation applied, the
first frame of an animation, and a phone's huge JPEG decoded at a fraction of its size. What cannot
be used -- empty, truncated, a bomb, too big -- is refused with an `ImageError` a person can read.

    img = images.open_image("photo.heic")
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import UserError

MAX_BYTES = 64 * 2**20  # refuse bigger files before decoding them
MAX_PIXELS = 40_000_000  # our own limit, below Pillow's decompression-bomb limit (~89 MP)
DECODE_SIDE = 900  # bigger images are decoded (JPEG: at 1/2, 1/4 or 1/8) or reduced to no less than this
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}  # ISO-BMFF "ftyp" brands


class ImageError(UserError, ValueError):
    """An input image we cannot use, with the reason phrased for a person."""


def decode(raw: bytes) -> Image.Image:
    """Bytes of any format Pillow reads -> an upright, fully loaded image (first frame if animated)."""
    if not raw:
        raise ImageError("the file is empty")
    if len(raw) > MAX_BYTES:
        raise ImageError(f"the file is {len(raw) / 2**20:.0f} MiB; the limit is {MAX_BYTES / 2**20:.0f} MiB")
    if raw[4:8] == b"ftyp" and raw[8:12] in HEIF_BRANDS:
        _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own limit: refuse, not warn
            img = Image.open(io.BytesIO(raw))
            # A phone's JPEG is decoded at 1/2, 1/4 or 1/8 of its size, never smaller than DECODE_SIDE:
            # the ink is found at about preprocess.WORK_SIDE, and a 12-megapixel decode would cost most of the time.
            scale = DECODE_SIDE / max(img.size)
            if img.format == "JPEG" and scale < 0.5:
                img.draft(None, (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"the image is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels); "
                                 f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels")
            img.seek(0)  # an animation is read as its first frame
            img.load()
            if max(img.size) >= 2 * DECODE_SIDE:  # other formats: smaller as soon as they are decoded
                img = img.reduce(max(img.size) // DECODE_SIDE)
            return ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image (or not in a format Pillow can read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a possible decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on corrupt data
        raise ImageError(f"the image is truncated or corrupt ({type(exc).__name__}: {exc})") from None


def _register_heif() -> None:
    """Teach Pillow HEIC/HEIF (an iPhone's photos) through the optional pillow-heif, when one arrives."""
    try:
        import pillow_heif
    except ImportError:
        raise ImageError("this is a HEIC/HEIF photo; reading it needs the optional extra: "
                         "pip install 'mnist-cnn[heic]' (or save the photo as JPEG)") from None
    pillow_heif.register_heif_opener()


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


def luminance(img: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1], 0 = black. Transparent images are composited onto paper first."""
    if img.mode.startswith("I"):  # 16- or 32-bit grey
        a = np.asarray(img, dtype=np.float32)
        return np.clip(a / (65535.0 if a.max() > 255 else 255.0), 0, 1)
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ImageError("the image has pixels that are not numbers (NaN or infinite)")
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
