"""Golden tests of each preprocessing step on small synthetic images, and one test per bad input."""

from __future__ import annotations

import io
import struct
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from mnist_cnn import images, photo, preprocess, sheet
from mnist_cnn.imageops import components_with_stats, dilate, label_components, stroke_width
from mnist_cnn.predict import Predictor
from mnist_cnn.images import ImageError, decode, luminance
from mnist_cnn.preprocess import to_mnist
from mnist_cnn.segment import segment_digits


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def page(ink: np.ndarray, size=(160, 200), at=(30, 50), paper=0.9, dark=0.1) -> Image.Image:
    """Dark ink (amounts in [0, 1]) on light paper, as an 8-bit grey image."""
    lum = np.full(size, paper, dtype=np.float32)
    y, x = at
    h, w = ink.shape
    lum[y:y + h, x:x + w] = paper - (paper - dark) * ink
    return Image.fromarray(np.round(lum * 255).astype(np.uint8))


def seven(scale: int = 5) -> np.ndarray:
    """A blocky 7 (14 x 10 cells), enlarged: asymmetric, so flips and rotations show."""
    cells = np.zeros((14, 10), dtype=np.float32)
    cells[0:2, :] = 1
    for r in range(2, 14):
        c = 9 - (r - 2) * 8 // 12
        cells[r, max(0, c - 1):c + 1] = 1
    return np.kron(cells, np.ones((scale, scale), dtype=np.float32))


def com(x: torch.Tensor) -> tuple[float, float]:
    v = x.float()
    i = torch.arange(28.0)
    return float((v.sum(1) * i).sum() / v.sum()), float((v.sum(0) * i).sum() / v.sum())


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |a - b| in grey levels, allowing the one-pixel shift that integer centring may differ by."""
    return min(float((torch.roll(a.float(), (dy, dx), (0, 1)) - b.float()).abs().mean())
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def box(x: torch.Tensor, level: int = 128) -> tuple[int, int]:
    ys, xs = np.nonzero(x.numpy() >= level)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


# ------------------------------------------------------------------- decode


def test_decode_reads_formats_and_applies_exif_orientation():
    img = page(seven())
    assert np.array_equal(np.asarray(decode(png(img))), np.asarray(img))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    upright = decode(png(img, exif=exif.tobytes()))
    assert np.array_equal(np.asarray(upright), np.asarray(img.transpose(Image.Transpose.ROTATE_270)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    assert decode(buf.getvalue()).size == img.size


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_images_with_non_finite_pixels_are_refused_in_words(bad):
    a = np.full((40, 40), 200.0, dtype=np.float32)
    a[10:30, 18:22] = 20.0
    a[0, 0] = bad
    buf = io.BytesIO()
    Image.fromarray(a, "F").save(buf, "TIFF")
    with pytest.raises(ImageError, match="not numbers"):
        to_mnist(decode(buf.getvalue()))


def test_heic_photos_are_read_and_a_missing_extra_is_named(monkeypatch):
    pillow_heif = pytest.importorskip("pillow_heif", reason="the heic extra (pillow-heif) is part of the dev extra")
    rgb = Image.fromarray(np.stack([np.asarray(page(seven(6), size=(200, 240), at=(40, 60)))] * 3, axis=2))
    pillow_heif.register_heif_opener()  # only to write the test file
    buf = io.BytesIO()
    rgb.save(buf, "HEIF", quality=90)
    raw = buf.getvalue()
    assert distance(to_mnist(decode(raw)), to_mnist(rgb)) < 6
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if the extra were not installed
    with pytest.raises(ImageError, match=r"mnist-cnn\[heic\]"):
        decode(raw)


def test_animated_image_uses_its_first_frame():
    digit, blank = page(seven()), Image.new("L", (200, 160), 230)
    buf = io.BytesIO()
    digit.save(buf, "GIF", save_all=True, append_images=[blank], duration=100)
    assert to_mnist(decode(buf.getvalue())) is not None
    buf = io.BytesIO()
    blank.save(buf, "GIF", save_all=True, append_images=[digit], duration=100)
    assert to_mnist(decode(buf.getvalue())) is None


@pytest.mark.parametrize("raw, words", [
    (b"", "empty"),
    (b"hello, I am not a picture\n" * 10, "not an image"),
])
def test_empty_and_non_images_are_refused_in_words(raw, words):
    with pytest.raises(ImageError, match=words):
        decode(raw)


def test_truncated_and_corrupt_images_are_refused():
    raw = png(page(seven()))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode(raw[: len(raw) // 2])
    corrupt = bytearray(raw)
    corrupt[60:90] = b"\xff" * 30  # inside the compressed pixel data
    with pytest.raises(ImageError):
        decode(bytes(corrupt))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size but carries (almost) no pixels: how a decompression bomb looks."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_huge_images_and_decompression_bombs_are_refused():
    with pytest.raises(ImageError, match="megapixels"):  # over our limit, under Pillow's
        decode(_png_header_only(8000, 6000))
    with pytest.raises(ImageError, match="decompression bomb"):  # over Pillow's own limit
        decode(_png_header_only(30000, 30000))
    small_file = png(Image.new("1", (7000, 6000)))  # a real 42-megapixel image in a few kB
    assert len(small_file) < 10_000
    with pytest.raises(ImageError, match="megapixels"):
        decode(small_file)
    with pytest.raises(ImageError, match="MiB"):
        decode(b"\0" * (images.MAX_BYTES + 1))


# ---------------------------------------------------------------- luminance


def test_luminance_of_16_bit_palette_cmyk_and_alpha():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    assert np.allclose(luminance(Image.fromarray(ramp)), ramp / 65535, atol=1e-6)
    grey = page(seven(1), size=(20, 20), at=(3, 5))
    assert np.allclose(luminance(grey.convert("P")), luminance(grey), atol=1 / 255)
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 255))  # black
    cmyk.putpixel((1, 0), (0, 0, 0, 0))  # white
    assert np.allclose(luminance(cmyk), [[0, 1]], atol=1 / 255)
    alpha = np.round(seven(1) * 255).astype(np.uint8)
    black_strokes = np.zeros(alpha.shape + (4,), np.uint8)
    black_strokes[..., 3] = alpha  # a browser canvas: colour (0,0,0), ink in alpha
    assert np.allclose(luminance(Image.fromarray(black_strokes)), 1 - alpha / 255, atol=1e-6)
    white_strokes = black_strokes.copy()
    white_strokes[..., :3] = 255
    assert np.allclose(luminance(Image.fromarray(white_strokes)), alpha / 255, atol=1e-6)


def test_transparent_canvas_gives_the_same_digit_as_paper():
    alpha = np.round(seven() * 255).astype(np.uint8)
    canvas = np.zeros(alpha.shape + (4,), np.uint8)
    canvas[..., 3] = alpha
    on_paper = page(seven(), size=alpha.shape, at=(0, 0), paper=1.0, dark=0.0)
    a, b = to_mnist(Image.fromarray(canvas)), to_mnist(on_paper)
    assert (a.int() - b.int()).abs().max() <= 1


# --------------------------------------------------- polarity, crop, centre


def test_polarity_is_detected():
    dark_on_light = page(seven())
    light_on_dark = Image.fromarray(255 - np.asarray(dark_on_light))
    a, b = to_mnist(dark_on_light), to_mnist(light_on_dark)
    assert a is not None and (a.int() - b.int()).abs().max() <= 1
    assert a[0:4].sum() == 0 and a.max() == 255  # white ink on black: the border is black


def _stroke_across_a_shadow(width: int, ink: float, ground: float, light_in_shade: float) -> np.ndarray:
    """An 800x600 grey photo: a stroke down the middle, `ink` brighter (> 0) or darker (< 0) than the
    ground, crossing the steep edge of a hard shadow over the lower half."""
    yy, xx = np.mgrid[0:600, 0:800]
    light = cv2.GaussianBlur(np.where(yy > 210 + 0.6 * (xx - 400), light_in_shade, 1.0).astype(np.float32), (0, 0), 2)
    stroke = np.zeros((600, 800), np.float32)
    cv2.line(stroke, (400, 120), (390, 420), 1.0, thickness=width)
    return light * (ground + ink * cv2.GaussianBlur(stroke, (0, 0), 1.5))


def test_a_bold_stroke_across_a_hard_shadow_is_dark_ink():
    """A bold pencil stroke is wider than the thinnest features looked at, and where it crosses a shadow's
    steep edge it pinches a sliver of lit paper: that sliver alone read as light ink on a dark ground (a 1
    read as 2). Bolder features show the stroke; chalk's thin bright strokes still read as light ink."""
    assert photo.dark_ink(_stroke_across_a_shadow(30, -0.28, 0.92, 0.4))
    assert not photo.dark_ink(_stroke_across_a_shadow(6, 0.5, 0.2, 0.6))


def test_crop_resize_keeps_aspect_and_centres_by_mass():
    bar = np.ones((60, 30), dtype=np.float32)  # a 2:1 upright rectangle, off-centre on the page
    out = to_mnist(page(bar, size=(200, 300), at=(120, 10)))
    assert box(out) == (20, 10)  # longer side 20, aspect kept
    cy, cx = com(out)
    assert abs(cy - preprocess.CENTRE) <= 0.5 and abs(cx - preprocess.CENTRE) <= 0.5
    assert out[box_slice(out)].float().mean() > 240  # solid ink stays white


def box_slice(x):
    ys, xs = np.nonzero(x.numpy() >= 128)
    return slice(ys.min() + 1, ys.max()), slice(xs.min() + 1, xs.max())


def test_position_and_scale_do_not_matter():
    a = to_mnist(page(seven(5), size=(200, 200), at=(10, 20)))
    b = to_mnist(page(seven(5), size=(200, 200), at=(90, 130)))
    assert torch.equal(a, b)  # pure translation: identical
    c = to_mnist(page(seven(12), size=(300, 300), at=(40, 100)))
    assert box(c)[0] == box(a)[0] == 20
    assert distance(a, c) < 8  # only the resampling phase differs (a 10% mis-scale gives 10)


def test_grey_levels_are_kept():
    out = to_mnist(page(seven(7)))
    grey = ((out > 0) & (out < 255)).sum()
    assert grey >= 20  # anti-aliased edges, not a binary image


def test_stroke_width_of_bars():
    for w in (1, 3, 6):
        bar = np.zeros((120, 20), dtype=bool)
        bar[10:110, 5:5 + w] = True
        assert stroke_width(bar) == pytest.approx(w, rel=0.1)


def test_stroke_width_constant_is_mnists_median(test_split):
    widths = [stroke_width(d) for d in (test_split[0][:1000] >= 128).numpy()]
    assert float(np.median(widths)) == pytest.approx(preprocess.STROKE, abs=0.1)


def test_fine_pen_strokes_are_thickened_to_mnist_width(monkeypatch):
    img = Image.new("L", (1500, 1200), 235)
    ImageDraw.Draw(img).line([(500, 200), (900, 200), (650, 1000)], fill=30, width=6)  # a 7, 800 px tall
    out = to_mnist(img)
    assert stroke_width(out.numpy() >= 128) >= 0.8 * preprocess.STROKE
    normal = page(seven(5))  # strokes already MNIST-wide are left alone
    before = to_mnist(normal)
    monkeypatch.setattr(preprocess, "THIN", 0.0)
    assert torch.equal(before, to_mnist(normal))
    assert stroke_width(to_mnist(img).numpy() >= 128) < 0.5 * preprocess.STROKE


def test_a_narrow_8s_loops_stay_open_when_thickened():
    """A fine pen's narrow 8 on a big page: its loops are 2 px wide at 28x28, and thickening the pen to
    MNIST's stroke filled them (a blob, read as 1 at 100% in a phone photo). The paper the ink encloses
    stays paper, so the loops show, and a 1 for this ink is contradicted."""
    for half_width, pen in ((12, 4), (18, 5), (24, 6)):
        img = np.full((700, 500), 255, np.uint8)
        cv2.ellipse(img, (250, 230), (half_width, 95), 8, 0, 360, 0, pen, cv2.LINE_AA)
        cv2.ellipse(img, (236, 425), (int(half_width * 1.2), 100), 8, 0, 360, 0, pen, cv2.LINE_AA)
        out = to_mnist(Image.fromarray(img))
        loops = preprocess._holes((out.numpy() >= 128).astype(np.uint8))
        assert (loops >= preprocess.MIN_LOOP).sum() == 2, (half_width, loops)
        assert preprocess.contradicts(out, 1) is not None


def test_centre_puts_a_point_at_mnists_centre_of_mass():
    patch = torch.zeros(5, 3)
    patch[4, 0] = 1
    out = preprocess.centre(patch)
    assert out[round(preprocess.CENTRE), round(preprocess.CENTRE)] == 255 and out.sum() == 255


def test_centre_is_mnists_measured_centre_of_mass(test_split):
    x = test_split[0].float()
    i = torch.arange(28.0)
    mass = x.sum((1, 2))
    assert float(((x.sum(2) * i).sum(1) / mass).mean()) == pytest.approx(preprocess.CENTRE, abs=0.05)
    assert float(((x.sum(1) * i).sum(1) / mass).mean()) == pytest.approx(preprocess.CENTRE, abs=0.05)


def test_mnist_digits_come_back_almost_unchanged(test_split):
    x = test_split[0][:50]
    back = torch.stack([to_mnist(Image.fromarray(d.numpy())) for d in x])
    assert (back.float() - x.float()).abs().mean() < 8  # grey levels 0-255


# ---------------------------------------------------------- empty and noise


@pytest.mark.parametrize("img", [
    Image.new("L", (64, 64), 255),
    Image.new("RGB", (50, 80), (120, 130, 140)),
    Image.new("L", (1, 1), 0),
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)),
    Image.fromarray(np.clip(np.random.default_rng(0).normal(200, 6, (120, 160)), 0, 255).astype(np.uint8)),
], ids=["white", "grey", "one-pixel", "transparent", "noisy-paper"])
def test_images_without_ink_are_empty(img):
    assert to_mnist(img) is None
    assert segment_digits(img) == []


def test_photo_noise_specks_and_uneven_light_are_cleaned():
    clean = to_mnist(page(seven(6), size=(200, 240), at=(40, 60)))
    rng = np.random.default_rng(0)
    lum = np.asarray(page(seven(6), size=(200, 240), at=(40, 60)), dtype=np.float32) / 255
    noisy = lum + rng.normal(0, 0.04, lum.shape)
    salt = rng.random(lum.shape) < 0.01
    noisy[salt] = rng.choice([0.0, 1.0], salt.sum())  # salt-and-pepper
    noisy[5:8, 5:8] = 0.1  # specks in the corners
    noisy[185:189, 225:228] = 0.1
    noisy -= np.linspace(0, 0.55, lum.shape[1])[None, :] ** 2  # a shadow: darker paper than some ink
    out = to_mnist(Image.fromarray(np.clip(noisy * 255, 0, 255).astype(np.uint8)))
    assert box(out) == box(clean)  # specks did not move the crop
    assert distance(out, clean) < 6


def test_drawings_skip_the_photo_steps_and_read_the_same(monkeypatch):
    """Paper of one exact value (a canvas, a screenshot) needs no denoising or lighting model."""
    drawing = page(seven(6), size=(200, 240), at=(40, 60))
    lum = np.asarray(drawing, dtype=np.float32) / 255
    photo = lum + np.random.default_rng(0).normal(0, 0.01, lum.shape)  # the same page, faintly noisy
    via_photo = to_mnist(Image.fromarray(np.clip(np.round(photo * 255), 0, 255).astype(np.uint8)))

    def skipped(*args):
        raise AssertionError("a drawing went through the photo steps")
    monkeypatch.setattr(preprocess, "_photo_ink", skipped)
    assert box(to_mnist(drawing)) == box(via_photo) and distance(to_mnist(drawing), via_photo) < 3


@pytest.mark.parametrize("shape", ["even", "gradient", "lamp", "hard shadow"])
def test_even_light_divides_out_the_lighting_under_the_ink(shape):
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    light = {"even": 0.9 + 0 * xx, "gradient": 0.5 + 0.3 * xx + 0.1 * yy,
             "lamp": 0.5 + 0.4 * np.exp(-((xx - 0.8) ** 2 + (yy - 0.2) ** 2) / 0.3),
             "hard shadow": np.where(yy + 0.2 * xx > 0.6, 0.45, 0.9)}[shape]  # crossing the strokes
    ink = np.zeros((h, w), dtype=bool)
    ink[60:200, 100:112] = ink[60:72, 100:220] = True  # strokes that take 80% of the light
    grey = (light * np.where(ink, 0.2, 1.0)).astype(np.float32)
    strength = photo.even_light(grey)
    inner = np.zeros_like(ink)
    inner[62:198, 102:110] = True  # away from the strokes' blurred edges, and from the shadow's
    inner &= np.abs(yy + 0.2 * xx - 0.6) * h > 4
    assert np.abs(strength[inner] - 0.8).max() < 0.05  # the same ink in sun and shade
    paper = ~cv2.dilate(ink.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    paper[:, :8] = paper[:, -8:] = False  # where a shadow's edge leaves the frame, a few pixels are not
    assert strength[paper].max() < 0.05  # the shadow's edge is a change of light, not ink


def test_dilate_matches_a_brute_force_max_filter():
    rng = np.random.default_rng(2)
    a = rng.random((19, 27)).astype(np.float32)
    for r in (1, 2, 5, 9):
        padded = np.pad(a, 2 * r)
        brute = np.array([[padded[i:i + 2 * r + 1, j:j + 2 * r + 1].max() for j in range(27 + 2 * r)]
                          for i in range(19 + 2 * r)])
        assert np.array_equal(dilate(a, r, grow=True), brute)
        assert np.array_equal(dilate(a, r), brute[r:-r, r:-r])


def test_label_components_matches_flood_fill():
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.random((23, 31)) < 0.35
        labels, n = label_components(mask)
        assert n == _flood_count(mask) and labels.max() == n
        assert np.array_equal(labels > 0, mask)
        for i in range(1, n + 1):  # each label is one flood-filled component
            y, x = map(int, np.argwhere(labels == i)[0])
            assert np.array_equal(_flood(mask, y, x), labels == i)


def test_components_with_stats_are_opencvs_own():
    """The faster labelling (BBDT) gives the labels, in the same order, and the stats that
    cv2.connectedComponentsWithStats gives: the photo steps choose by label and by stats."""
    rng = np.random.default_rng(3)
    for fill in (0.01, 0.35, 0.7):
        mask = rng.random((61, 83)) < fill
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        m, ours, our_stats = components_with_stats(mask)
        assert m == n and np.array_equal(ours, labels) and np.array_equal(our_stats, stats)


def _flood(mask, y, x):
    seen = np.zeros_like(mask)
    stack = [(y, x)]
    while stack:
        y, x = stack.pop()
        if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] and not seen[y, x]:
            seen[y, x] = True
            stack += [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return seen


def _flood_count(mask):
    left, n = mask.copy(), 0
    while left.any():
        y, x = map(int, np.argwhere(left)[0])
        left &= ~_flood(mask, y, x)
        n += 1
    return n


# ------------------------------------------------------------- multi-digit


def test_segment_orders_merges_broken_strokes_and_ignores_stray_marks():
    ink = np.zeros((120, 420), dtype=np.float32)
    ink[10:80, 10:60] = seven()  # a 7
    ink[10:80, 150:160] = 1  # a 1
    ink[10:16, 260:320] = 1  # the detached bar of a 5 ...
    ink[20:80, 260:270] = 1  # ... and its body
    ink[50:56, 260:310] = 1
    ink[74:80, 260:310] = 1
    ink[60:80, 304:310] = 1
    ink[110:113, 400:403] = 1  # a stray dot far from everything
    digits = segment_digits(page(ink, size=(160, 460), at=(20, 20)))
    assert len(digits) == 3
    assert torch.equal(digits[0], to_mnist(page(seven())))  # the same as the digit alone
    assert box(digits[1])[0] == 20 and box(digits[1])[1] <= 4  # the 1: tall and thin


def test_touching_digits_are_split():
    ink = np.zeros((70, 200), dtype=np.float32)
    ring = np.zeros((70, 56), dtype=np.float32)
    ring[:8, :], ring[-8:, :], ring[:, :8], ring[:, -8:] = 1, 1, 1, 1  # a boxy 0
    ink[:, 0:56], ink[:, 52:108], ink[:, 104:160] = ring, ring, ring  # 000, each touching the next
    digits = segment_digits(page(ink, size=(120, 260), at=(25, 30)))
    assert len(digits) == 3


def _boxes(*boxes) -> tuple[np.ndarray, np.ndarray]:
    """Components drawn as filled boxes (x, y, w, h) on a 600x800 frame: (labels, stats)."""
    labels = np.zeros((600, 800), np.int32)
    for i, (x, y, w, h) in enumerate(boxes, 1):
        labels[y:y + h, x:x + w] = i
    stats = np.array([(0, 0, 800, 600, 0)] + [(x, y, w, h, w * h) for x, y, w, h in boxes], np.int64)
    return labels, stats


def _choose(labels, stats, several: bool, widths=None) -> np.ndarray:
    """photo.choose over every component; each box stands for ink drawn with an 8-px pen (or thinner)."""
    keep = np.ones(len(stats), bool)
    keep[0] = False
    widths = np.minimum(np.minimum(stats[:, 2], stats[:, 3]), 8) if widths is None else np.asarray(widths)
    return photo.choose(labels, stats, widths, keep, several)


def _choose_number(labels, stats) -> np.ndarray:
    return _choose(labels, stats, several=True)


DIGITS = [(300, 300, 40, 60), (360, 302, 40, 60), (420, 304, 40, 60)]  # three digits 60 px high along a line


def test_a_number_does_not_take_in_the_sheets_edge():
    """An edge beside the line, in reach, but three times the digits' height, is no digit of it."""
    chosen = _choose_number(*_boxes(*DIGITS, (260, 240, 6, 180)))
    assert chosen[1:4].all() and not chosen[4], chosen


def test_stray_marks_do_not_join_a_number_piece_by_piece():
    """Grid leftovers below a digit, each 21 px below the one before: the first is near the digit
    (10 px) and joins it, but each further one is only near the grown ink, not a digit."""
    strays = [(430, 374, 10, 20), (430, 415, 10, 20), (430, 456, 10, 20), (430, 497, 10, 20)]
    chosen = _choose_number(*_boxes(*DIGITS, *strays))
    assert chosen[1:5].all() and not chosen[5:].any(), chosen


def test_coloured_paper_in_a_hard_shadow_is_paper_not_desk():
    """Yellow squared paper under a hand's shadow, lit only in one corner: the shade is the paper's
    colour at half the light, and holds the middle of the frame and the digit. Taking the lit corner
    for the sheet read the grid there as a 3 at 97%."""
    lit, shade = np.array([236, 212, 140]), np.array([118, 106, 70])
    yy, xx = np.mgrid[:600, :800]
    rgb = np.where((xx * 500 + yy * 300 < 300 * 500)[..., None], lit, shade).astype(np.float64)
    rgb[(xx % 60 < 2) | (yy % 60 < 2)] *= 0.8  # the grid
    img = Image.fromarray(rgb.astype(np.uint8))
    ImageDraw.Draw(img).line([(500, 200), (500, 400)], fill=(25, 25, 40), width=12)  # a 1, in the shade
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img) + np.random.default_rng(0).normal(0, 3, (600, 800, 3))
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    assert sheet.find_sheet(np.asarray(img)) is None
    assert Predictor.from_path().predict_image(img).digit == 1


def _yellow_sheet_on(desk, shade_middle: bool = False) -> np.ndarray:
    """Yellow paper (an 800x600 frame's middle, tilted a little) on a desk of colour `desk`, with a
    hard shadow over the frame's middle when asked: (H, W, 3) uint8, blurred and noisy."""
    img = Image.new("RGB", (800, 600), tuple(desk))
    ImageDraw.Draw(img).polygon([(150, 90), (660, 70), (680, 520), (130, 540)], fill=(236, 212, 140))
    rgb = np.asarray(img).astype(np.float64)
    if shade_middle:
        yy, xx = np.mgrid[:600, :800]
        paper = (rgb == (236, 212, 140)).all(2)
        rgb[paper & (xx > 330)] *= 0.35
    rgb = cv2.GaussianBlur(rgb, (0, 0), 1.5) + np.random.default_rng(0).normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_a_wooden_desk_beside_yellow_paper_is_desk():
    """Wood of the paper's chroma and more than half its lightness passed for paper, so the "sheet"
    filled the frame and the desk's grain was read: its hue, 30 degrees from the paper's, tells it."""
    found = sheet.find_sheet(_yellow_sheet_on((160, 105, 60)))
    assert found is not None
    mask, corners = found
    assert mask[300, 400] and not mask[10, 10] and not mask[590, 790] and corners is not None


def test_a_sheet_shaded_over_the_middle_is_the_paper_with_its_shade():
    """Yellow paper on a dark desk, a hand's shadow over most of it and the frame's middle: the sheet
    is the lit paper with its shaded part (the paper's hue, a third as bright), and the desk stays out."""
    found = sheet.find_sheet(_yellow_sheet_on((30, 30, 34), shade_middle=True))
    assert found is not None
    mask, _ = found
    assert mask[300, 400] and mask[500, 600] and not mask[10, 10] and not mask[590, 790]


def test_white_paper_in_a_deep_shadow_over_the_middle_is_no_desk():
    """White squared paper filling the frame, a hard shadow over its right part and the middle, where
    the digit is: the shade is as colourless as the paper and not darker than a shadow gets, so no desk
    shows (taken for one, the lit strip was flattened as the sheet and the digit left out of it)."""
    page = np.full((600, 800, 3), 236, np.uint8)
    page[::40] = page[:, ::40] = (170, 185, 225)
    cv2.putText(page, "9", (360, 380), cv2.FONT_HERSHEY_SIMPLEX, 5, (20, 20, 20), 14)
    page = page.astype(np.float64)
    page[:, 260:] *= 0.45  # the shade: a fifth of the light, in linear terms
    noise = np.random.default_rng(0).normal(0, 2, page.shape)
    rgb = np.clip(cv2.GaussianBlur(page, (0, 0), 1.0) + noise, 0, 255).astype(np.uint8)
    assert sheet.find_sheet(rgb) is None
    assert Predictor.from_path().predict_image(Image.fromarray(rgb)).digit == 9


def _choose_digit(labels, stats, widths=None) -> np.ndarray:
    return _choose(labels, stats, several=False, widths=widths)


def test_a_digit_in_pieces_outweighs_its_biggest_piece():
    """A 5 whose grid-cut body (three pieces, close together) lies further from its bar than a
    quarter of the bar's height: the bar is the biggest piece, but the body holds more ink, and
    grown from the body the digit takes its bar too."""
    bar, stem, bowl, tail = (380, 200, 100, 40), (352, 272, 20, 67), (382, 338, 39, 73), (327, 379, 48, 34)
    chosen = _choose_digit(*_boxes(bar, stem, bowl, tail))
    assert chosen[1:].all(), chosen


def test_ink_running_into_the_frame_does_not_outweigh_a_framed_digit():
    """The desk's grain beside the sheet: more ink than the digit, in pieces that reach the frame's
    edge. The digit is what the person framed."""
    digit = (420, 250, 50, 80)
    desk = [(0, 100, 150, 400)] + [(160 + 45 * (i % 3), 110 + 100 * (i // 3), 40, 90) for i in range(12)]
    chosen = _choose_digit(*_boxes(digit, *desk))
    assert chosen[1] and not chosen[2:].any(), chosen


def test_a_line_from_the_frames_edge_does_not_join_the_digit_whose_box_it_holds():
    """A grid line the rule finder missed, bent at the sheet's corner, runs from the frame's edge to just
    above the digit: its box comes within reach (and holds the digit's). Joined, it made the crop the
    whole sheet, and a 2 on squared paper was read as 3 at 99%."""
    labels = np.zeros((600, 800), np.int32)
    labels[250:330, 420:470] = 1  # the digit
    labels[240:246, 0:520] = labels[0:246, 514:520] = 2  # the line, one component reaching the frame's edge
    stats = np.array([(0, 0, 800, 600, 0), (420, 250, 50, 80, 4000), (0, 0, 520, 246, 520 * 6 + 240 * 6)])
    chosen = _choose_digit(labels, stats)
    assert chosen[1] and not chosen[2], chosen


def test_a_wedge_of_shadow_does_not_outweigh_a_fine_pen_stroke():
    """A hard shadow's wedge low in the frame holds six times the pixels of a 1 in a fine pen beside the
    middle, but it is a solid region, not a stroke: the 1 is the digit (weighed by its pixels, the
    wedge was, and the photo it comes from was read as a 7 at 97%)."""
    mask = np.zeros((1024, 1024), np.uint8)
    cv2.line(mask, (700, 560), (830, 320), 1, 20)  # the 1
    cv2.fillPoly(mask, [np.array([(300, 760), (640, 990), (330, 1000)])], 1)  # the wedge
    labels, stats, widths = photo.components(mask.astype(bool))
    chosen = photo.choose(labels, stats, widths, photo.stroke_like(stats, widths, mask.shape), several=False)
    assert chosen.tolist() == [False, True, False], (stats, widths)
