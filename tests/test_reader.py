"""The number reader: CTC decoding on hand-made probabilities, its checkpoint, and the shipped reader on
touching numbers of known MNIST test digits.

tests/data/mnist_test_digits.png holds 20 MNIST test digits side by side: two of each digit, 0 to 9
(test indices 3, 10 | 2, 5 | 1, 35 | 18, 30 | 4, 6 | 8, 15 | 11, 21 | 0, 17 | 61, 84 | 7, 9).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_cnn import checkpoint, data, images, models, precision, preprocess, reader, segment
from mnist_cnn.cli import main
from mnist_cnn.errors import ConfigError
from mnist_cnn.imageops import bbox
from mnist_cnn.lines import make_lines, soften
from mnist_cnn.predict import Part, Prediction, Predictor, agree, holds_several, owners
from mnist_cnn.recipes import ReaderConfig

DIGITS = Path(__file__).parent / "data" / "mnist_test_digits.png"
B = reader.BLANK


def frames(*classes, p: float = 0.98) -> torch.Tensor:
    """Per-frame probabilities (T, 11): each frame's class at p, the rest shared by the others."""
    out = torch.full((len(classes), 11), (1 - p) / 10)
    out[torch.arange(len(classes)), torch.tensor(classes)] = p
    return out


def test_greedy_decode_merges_repeats_and_drops_blanks():
    peaks = reader.greedy_decode(frames(B, 3, 3, B, 3, B, B, 5, 5, 5, B))
    assert [p.digit for p in peaks] == [3, 3, 5]
    assert [(p.start, p.end) for p in peaks] == [(1, 2), (4, 4), (7, 9)]
    assert [p.digit for p in reader.greedy_decode(frames(7, 7, 7))] == [7]  # a repeat without a blank: one digit
    assert reader.greedy_decode(frames(B, B)) == []
    assert reader.unsure_reason(peaks) is None


def test_a_low_peak_or_an_unclear_count_is_unsure():
    low = frames(B, 4, B)
    low[1, 4], low[1, 9] = 0.45, 0.44  # a 4 or a 9
    assert "uncertain" in reader.unsure_reason(reader.greedy_decode(low))
    shaky = frames(B, 1, B)
    shaky[1, 1], shaky[1, B] = 0.52, 0.47  # a 1, or nothing at all
    assert "number of digits" in reader.unsure_reason(reader.greedy_decode(shaky))
    valley = frames(B, 8, B, 8, B)
    valley[2, 8], valley[2, B] = 0.47, 0.52  # one wide 8, or two
    assert "number of digits" in reader.unsure_reason(reader.greedy_decode(valley))


def test_synthetic_lines_hold_their_digits_left_to_right():
    x = torch.zeros(10, 28, 28, dtype=torch.uint8)
    for k in range(10):  # digit k: a bar k+1 pixels wide, so each one's width tells it apart
        x[k, 4:24, 10:11 + k] = 255
    g = torch.Generator().manual_seed(0)
    lines, labels, centres = make_lines(x, torch.arange(10), 3, 4, g, gaps="apart")
    assert lines.shape[:2] == (3, 28) and labels.shape == (3, 4) and lines.min() >= 0 and lines.max() <= 1
    assert (centres.diff(dim=1) > 0).all()  # left to right
    for line, label in zip(lines, labels):  # apart: 4 separate bars, as wide as their digits (within the zoom)
        cols = (line > 0.5).any(0).int()
        runs = torch.nonzero(cols.diff() == 1).flatten()
        assert len(runs) == 4


def test_softened_lines_stay_in_range_and_a_share_of_none_leaves_them_as_they_were():
    lines = torch.zeros(8, 28, 40)
    lines[:, 4:24, 10:13] = 1.0
    lines[:, 4:24, 13] = 0.2  # a faint edge, which a harder floor cuts
    g = torch.Generator().manual_seed(0)
    assert torch.equal(soften(lines, g, share=0.0), lines)
    out = soften(lines, g, share=0.5)  # every line blurred or hardened
    assert out.shape == lines.shape and out.min() >= 0 and out.max() <= 1
    assert all(not torch.equal(a, b) for a, b in zip(out, lines))


def test_a_reader_checkpoint_loads_through_load_model_and_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    args = {"widths": [4, 8, 8], "hidden": 8, "context": 1}
    net = models.build_model("line_reader", **args).eval()
    meta = checkpoint.make_metadata("line_reader", args, data.MNIST_MEAN, data.MNIST_STD, {"recipe": "reader"})
    checkpoint.save_model(tmp_path / "r.safetensors", net, meta)
    loaded = reader.NumberReader.from_path(tmp_path / "r.safetensors")
    line = torch.rand(28, 90)
    with torch.inference_mode():
        assert torch.equal(net(reader.normalize(line[None])), loaded.model(reader.normalize(line[None])))
    assert loaded.probabilities(line).shape == (45, 11)
    with pytest.raises(checkpoint.CheckpointError, match="not a number reader"):
        reader.NumberReader.from_path(checkpoint.default_model_path())
    with pytest.raises(ValueError, match="number reader"):
        Predictor.from_path(tmp_path / "r.safetensors")


def test_the_shipped_reader_is_small_and_describes_itself():
    path = reader.default_reader_path()
    assert path.stat().st_size <= 2 * 2**20
    r = reader.NumberReader.from_path()
    assert r.meta["config"]["recipe"] == "reader" and r.meta["metrics"]["val_exact"] > 80


def test_a_piece_one_digit_wide_holds_two_only_when_the_reader_is_sure_of_both():
    sure = [reader.Peak(1, 0.99, 3, 2, 4, 0.0), reader.Peak(6, 0.98, 8, 7, 9, 0.0)]
    shaky = [reader.Peak(1, 0.99, 3, 2, 4, 0.0), reader.Peak(6, 0.7, 8, 7, 9, 0.0)]
    assert holds_several(sure, narrow=True)  # a 1 written over a 6
    assert not holds_several(shaky, narrow=True)  # one digit the reader split
    assert holds_several(shaky, narrow=False)  # a wide piece: the reader's count
    assert not holds_several(sure[:1], narrow=False)
    fair = [reader.Peak(1, 0.99, 3, 2, 4, 0.0), reader.Peak(7, 0.8, 8, 7, 9, 0.0)]
    assert holds_several(fair, narrow=True)  # a 1 hidden in its 7's piece, read at 0.8 (lost at SURE_SPLIT 0.9)


def test_a_piece_left_without_a_digit_takes_the_peak_between_it_and_its_neighbour():
    spans = [(84, 185), (246, 383), (414, 462), (514, 641), (658, 687)]  # a photo of 84171: the last 1's peak
    assert owners([137.7, 319.7, 428.9, 574.5, 647.3], spans) == [0, 1, 2, 3, 4]  # is nearer the 7's piece
    assert owners([76.0, 494.6, 540.0], [(40, 103), (498, 582)]) == [0, 1, 1]  # a 1 by a 0, its peak off the ink
    assert owners([60.0, 80.0], [(50, 100), (120, 160)]) == [0, 0]  # both peaks over the first piece: kept


def test_a_digit_broken_into_short_pieces_that_share_columns_is_one_digit_not_part_of_its_neighbour():
    labels = np.zeros((50, 140), dtype=np.int32)
    labels[10:40, 0:20] = 1  # a whole digit (a 6)
    labels[10:18, 30:50] = 2  # a 5's bar ...
    labels[26:40, 25:34] = 3  # ... and its bowl, sharing columns 30-33 with it, each under half a digit's height
    labels[10:40, 60:80] = 4
    labels[10:40, 90:110] = 5
    blobs = segment.digit_blobs(labels, 5)
    assert [sorted(np.unique(labels[m]).tolist()) for m, _ in blobs] == [[1], [2, 3], [4], [5]]


class OnePeak(reader.NumberReader):
    """A fake sequence reader that finds one digit, a 0, in whatever ink it is given."""

    def __init__(self):
        pass

    def read(self, page, mask):
        probs = torch.zeros(20, 11)
        probs[:, reader.BLANK], probs[10] = 1.0, torch.eye(11)[0]
        x0, x1 = bbox(mask)[2:]
        return reader.Reading([reader.Peak(0, 1.0, 10, 10, 10, 0.0)], probs, [(x0, x1)], [(x0 + x1) / 2], None)


def test_ink_as_wide_as_two_digits_that_the_reader_reads_as_one_is_unsure():
    """Two 0s that touch, one piece of ink twice a digit's width: the reader's count (one) and the ink's
    (two) disagree, so the classifier's answer for the piece, whole, is not given as sure."""
    wide = Predictor.from_path(reader=OnePeak()).predict_number(Image.open(io.BytesIO(number_png("00", 0.1))))
    assert wide.status == "unsure" and "two digits" in wide.digits[0].reason
    one = Predictor.from_path(reader=OnePeak()).predict_number(Image.open(io.BytesIO(number_png("0", 0.0))))
    assert one.status == "ok" and one.text == "0"


def test_a_wide_digit_that_the_reader_and_the_classifier_both_read_as_one_digit_is_sure():
    """A 2 with a long base, as wide as two digits beside its neighbours ("452" in phone photos): the shipped
    reader finds one 2 there and the classifier reads the piece as 2, both sure, so the count is not in doubt."""
    for text in ("452", "472"):
        for which in (0, 1):
            got = Predictor.from_path().predict_number(Image.open(io.BytesIO(number_png(text, -6, which=which,
                                                                                            widen=1.6))))
            assert (got.text, got.status) == (text, "ok"), (text, which, [d.reason for d in got.digits])


def test_width_doubt_is_lifted_only_when_reader_and_classifier_agree_and_are_sure():
    peak = reader.Peak(2, 0.97, 3, 2, 4, 0.0)
    wide = Part(peak, np.ones((2, 2), bool), True, "as wide as two digits", wide=True)
    sure = Prediction(2, 0.995, [], [], "ok")
    assert agree(wide, sure)
    assert not agree(wide, Prediction(6, 0.995, [], [], "ok"))  # they read different digits
    assert not agree(wide, Prediction(2, 0.943, [], [], "ok"))  # "26" touching, read as 2 by both: not sure enough
    assert not agree(wide._replace(peak=reader.Peak(2, 0.6, 3, 2, 4, 0.0)), sure)  # the reader is unsure
    assert not agree(wide._replace(peak=None), sure)  # the reader found no digit there
    assert not agree(wide._replace(wide=False), sure)  # another doubt: not lifted


class EvenPeaks(reader.NumberReader):
    """A fake sequence reader that finds `n` 0s spread evenly over whatever ink it is given."""

    def __init__(self, n: int):
        self.n = n

    def read(self, page, mask):
        probs = torch.zeros(40, 11)
        probs[:, reader.BLANK] = 1.0
        x0, x1 = bbox(mask)[2:]
        step = (x1 - x0) / self.n
        peaks = []
        for k in range(self.n):
            probs[4 * k + 2] = torch.eye(11)[0]
            peaks.append(reader.Peak(0, 1.0, 4 * k + 2, 4 * k + 2, 4 * k + 2, 0.0))
        spans = [(round(x0 + k * step), round(x0 + (k + 1) * step)) for k in range(self.n)]
        return reader.Reading(peaks, probs, spans, [(a + b) / 2 for a, b in spans], None)


def test_ink_as_wide_as_more_digits_than_the_reader_found_is_unsure():
    """Four 0s that touch, one piece of ink four digits wide, where the reader finds two (a cursive "2026" in
    one stroke came back "206" at p > 0.99): the count is unclear, so no digit of that piece is given as sure."""
    four = Predictor.from_path(reader=EvenPeaks(2)).predict_number(Image.open(io.BytesIO(number_png("0000", 0.1))))
    assert four.status == "unsure" and all("as wide as 4 digits, but 2 were read" in d.reason for d in four.digits)
    two = Predictor.from_path(reader=EvenPeaks(2)).predict_number(Image.open(io.BytesIO(number_png("00", 0.1))))
    assert two.status == "ok" and two.text == "00"


class Counting:
    """A fake classifier: digit 3 at logit `margin` over the rest, and how many images each call saw."""

    def __init__(self, margin: float):
        self.margin, self.calls = margin, []

    def __call__(self, x):
        self.calls.append(len(x))
        logits = torch.zeros(len(x), 10)
        logits[:, 3] = self.margin
        return logits


def test_a_numbers_pieces_get_tta_only_when_one_pass_is_unsure():
    meta = {"mean": 0.1307, "std": 0.3081, "classes": [str(i) for i in range(10)], "config": {"tta": True}}
    x = torch.zeros(4, 28, 28, dtype=torch.uint8)
    x[:, 4:24, 12:16] = 255
    sure = Counting(margin=10.0)  # p(3) > 0.99: one pass, no shifted copies
    assert [p.digit for p in Predictor(sure, meta).classify_pieces(x)] == [3] * 4 and sure.calls == [4]
    shaky = Counting(margin=1.0)  # p(3) ~ 0.23: read again, with the five TTA shifts
    preds = Predictor(shaky, meta).classify_pieces(x)
    assert shaky.calls == [4] + [4] * 5 and all(p.status == "unsure" for p in preds)


def _reader_steps(name: str) -> torch.nn.Module:
    """Two CTC steps of a tiny reader on the same lines, in precision `name`."""
    torch.manual_seed(0)
    net = models.build_model("line_reader", widths=[8, 16, 16], hidden=16, context=1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    ctc = torch.nn.CTCLoss(blank=B, zero_infinity=True)
    lines, labels = torch.rand(4, 28, 60), torch.randint(0, 10, (4, 3), generator=torch.Generator().manual_seed(0))
    prec = precision.Precision(name, "requested")
    for _ in range(2):
        reader.train_one_step(net, opt, lines, labels, ctc, prec)
    return net


def test_reader_training_runs_its_forward_in_bf16_and_keeps_fp32_weights():
    bf16, fp32 = _reader_steps("bf16"), _reader_steps("fp32")
    assert all(t.dtype == torch.float32 for t in bf16.state_dict().values() if t.is_floating_point())
    diff = max((a - b).abs().max().item() for a, b in zip(bf16.parameters(), fp32.parameters()))
    assert 1e-5 < diff < 0.05  # bf16 really ran (its rounding shows), and stays close to fp32
    assert ReaderConfig().precision == "auto"
    with pytest.raises(ConfigError, match="precision"):
        ReaderConfig(precision="fp8")


def _tiny_run(run_dir, resume=False, stop_at=None, **changes):
    """A tiny reader trained on random "digits" for 6 steps, a checkpoint every 3; `stop_at`: killed after
    that step's checkpoint was written."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=g), torch.arange(40) % 10
    cfg = ReaderConfig(**{"model_args": {"widths": [4, 8, 8], "hidden": 8, "context": 1}, "steps": 6,
                          "batch_size": 2, "max_digits": 3, "val_size": 10, "val_lines": 2, "log_every": 3,
                          "precision": "fp32", **changes})

    def log(message):
        if stop_at is not None and message.startswith(f"step {stop_at}:"):
            raise KeyboardInterrupt
    return reader.train_reader(cfg, x[:30], y[:30], x[30:], y[30:], log=log, run_dir=run_dir, resume=resume)


def test_a_reader_run_killed_midway_resumes_to_the_weights_of_one_never_stopped(tmp_path):
    whole, history, _ = _tiny_run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path / "killed", stop_at=3)
    resumed, again, meta = _tiny_run(tmp_path / "killed", resume=True)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["step"] for r in again] == [3, 6] and again[0]["loss"] == history[0]["loss"]
    assert meta["config"]["steps"] == 6
    with pytest.raises(ConfigError, match="lr"):  # a resume continues the same training
        _tiny_run(tmp_path / "killed", resume=True, lr=1e-2)
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):  # killed before its first one
        _tiny_run(tmp_path / "early", resume=True)


# ------------------------------------------------ the shipped reader on known digits


def known_digits() -> dict[int, list[np.ndarray]]:
    strip = np.asarray(Image.open(DIGITS))
    tiles = [strip[:, 28 * i:28 * (i + 1)] for i in range(20)]
    return {d: tiles[2 * d:2 * d + 2] for d in range(10)}


def number_png(text: str, overlap: float, scale: int = 5, which: int = 0, widen: float = 1.0) -> bytes:
    """Dark ink on white: the digits of `text`, each cropped to its ink, neighbours overlapping by `overlap`
    of the narrower one's width (negative: apart by that many pixels); the last digit `widen` times as wide."""
    tiles = known_digits()
    seen: dict[str, int] = {}
    crops = []
    for ch in text:
        tile = tiles[int(ch)][(seen.get(ch, 0) + which) % 2]
        seen[ch] = seen.get(ch, 0) + 1
        cols = np.nonzero(tile.max(0))[0]
        crops.append(tile[:, cols[0]:cols[-1] + 1].astype(np.float32) / 255)
    if widen != 1:
        crops[-1] = np.asarray(Image.fromarray(crops[-1]).resize((round(crops[-1].shape[1] * widen), 28),
                                                                 Image.Resampling.BILINEAR))
    width = sum(c.shape[1] for c in crops) + 40
    line = np.zeros((48, width), dtype=np.float32)
    x = 10.0
    for i, c in enumerate(crops):
        region = line[10:38, int(x):int(x) + c.shape[1]]
        np.maximum(region, c, out=region)
        nxt = crops[i + 1] if i + 1 < len(crops) else c
        x += c.shape[1] - (overlap * min(c.shape[1], nxt.shape[1]) if overlap >= 0 else overlap)
    big = Image.fromarray(np.round(255 * (1 - line)).astype(np.uint8)).resize((width * scale, 48 * scale),
                                                                             Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    big.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shipped():
    return Predictor.from_path()


# (number, overlap as a share of the narrower digit, which of the two samples of each digit). The
# segmentation route reads the overlapping ones as 2226, 226, 828, 04286789 and 023407689, and the touching
# 0123456789 as 01234656789. The second 0123456789 at 0.15 has its "01" in one piece too narrow for two
# digits by its shape, which the sequence reader is sure holds two.
TOUCHING = [("2026", 0.0, 0), ("2026", 0.15, 1), ("2026", 0.2, 1), ("808", 0.0, 0), ("808", 0.2, 1),
            ("0123456789", 0.0, 0), ("0123456789", 0.1, 1), ("0123456789", 0.15, 1), ("0123456789", 0.2, 0),
            ("0123456789", 0.2, 1),
            ("5550123487", 0.0, 0), ("5550123487", 0.0, 1)]


@pytest.mark.parametrize("text, overlap, which", TOUCHING)
def test_touching_numbers_are_read_exactly(shipped, text, overlap, which):
    got = shipped.predict_number(images.decode(number_png(text, overlap, which=which)))
    assert (got.text, got.status) == (text, "ok")
    assert len(got.boxes) == len(text) and all(d.processed.shape == (28, 28) for d in got.digits)
    assert [b[0] for b in got.boxes] == sorted(b[0] for b in got.boxes)  # boxes left to right


def italic(png: bytes, lean: float) -> bytes:
    """The image in `png` sheared so that its tops lean right by `lean` (x per y), as fast writing does."""
    img = Image.open(io.BytesIO(png)).convert("L")
    w, h = img.size
    pad = int(abs(lean) * h)
    out = img.transform((w + pad, h), Image.Transform.AFFINE, (1, lean, -pad, 0, 1, 0),
                        resample=Image.Resampling.BILINEAR, fillcolor=255)
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return buf.getvalue()


def test_the_lean_of_writing_is_measured_by_its_upright_strokes():
    """Bars and a 0-like ring, drawn upright and then leaning by known amounts: the measure finds the lean,
    and loops and bars do not sway it."""
    import cv2

    upright = np.zeros((120, 400), np.uint8)
    for x in (40, 100, 220, 330):
        upright[20:100, x:x + 8] = 1
    cv2.ellipse(upright, (165, 60), (22, 40), 0, 0, 360, 1, 7)
    upright[55:62, 250:310] = 1  # a bar
    for lean in (0.0, 0.4, -0.5, 0.7):
        m = np.float32([[1, -lean, lean * 60 + 60], [0, 1, 0]])  # tops to the right for lean > 0
        leaning = cv2.warpAffine(upright, m, (520, 120), flags=cv2.INTER_NEAREST).astype(bool)
        assert abs(segment.slant(leaning) - lean) <= 0.05, lean


def test_an_unsure_reading_of_italic_writing_is_tried_again_upright(shipped):
    """Touching MNIST test digits leaning right by a further 0.5 or 0.7 of their height: the reader (trained on
    leans up to 0.3 beyond MNIST's own) was unsure of them ("012346?789", "314116?", "80?", "20?6"). Stood
    upright, they are read; the boxes are drawn on the image as given, left to right."""
    for text, overlap, which, lean in (("0123456789", 0.0, 0, 0.5), ("31415", 0.0, 0, 0.5), ("808", 0.0, 1, 0.7),
                                       ("2026", 0.1, 0, 0.7)):
        img = images.decode(italic(number_png(text, overlap, which=which), lean))
        got = shipped.predict_number(img)
        assert (got.text, got.status) == (text, "ok"), (text, got.text)
        assert [b[0] for b in got.boxes] == sorted(b[0] for b in got.boxes)
        assert all(0 <= b[0] < b[2] <= img.width and 0 <= b[1] < b[3] <= img.height for b in got.boxes)


def test_boxes_found_on_a_page_stood_upright_are_drawn_where_the_digits_are():
    """A bar leaning 0.6, stood upright: its box, mapped back, is its box on the page as given (within a pixel)."""
    labels = np.zeros((100, 300), np.int32)
    for y in range(10, 90):
        x = int(round(150 + 0.6 * (50 - y)))
        labels[y, x - 3:x + 3] = 1
    page = preprocess.Page(full=labels.astype(np.float32), invert=False, factor=1, ink=labels.astype(np.float32),
                           background=np.zeros((100, 300), np.float32), level=1.0, threshold=0.5, labels=labels, count=1)
    stood = segment.upright(page, 0.6)
    y0, y1, x0, x1 = bbox(stood.labels > 0)
    back = segment.unshear_box([x0, y0, x1, y1], stood)
    y0, y1, x0, x1 = bbox(labels > 0)
    assert all(abs(a - b) <= 1 for a, b in zip(back, [x0, y0, x1, y1])), (back, [x0, y0, x1, y1])
    assert x1 - x0 > bbox(stood.labels > 0)[3] - bbox(stood.labels > 0)[2]  # it stands straighter


def test_the_segmentation_route_is_still_there_and_splits_digits_that_stand_apart(shipped):
    old = Predictor(shipped.model, shipped.meta, reader="segment")
    assert old.reader is None
    assert old.predict_number(images.decode(number_png("2026", -6))).text == "2026"


def test_predict_multi_on_the_command_line_reads_a_touching_number(tmp_path, capsys):
    (tmp_path / "808.png").write_bytes(number_png("808", 0.2, which=1))
    assert main(["predict", str(tmp_path / "808.png"), "--multi", "--format", "json"]) == 0
    import json

    body = json.loads(capsys.readouterr().out)
    assert body["text"] == "808" and body["status"] == "ok" and len(body["boxes"]) == 3


def test_junk_is_unsure_not_a_confident_number(shipped):
    rng = np.random.default_rng(0)
    scribble = Image.new("L", (600, 200), 255)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(scribble)
    for _ in range(3):  # tangled loops across the whole strip
        pts = [(int(x), int(y)) for x, y in zip(rng.uniform(150, 450, 40), rng.uniform(60, 140, 40))]
        draw.line(pts, fill=0, width=9)
    got = shipped.predict_number(scribble)
    assert got.status == "unsure", got.describe()


@pytest.mark.slow
def test_train_reader_writes_a_run_that_resumes_and_refuses_a_changed_recipe(tiny_data, tmp_path, capsys):
    from mnist_cnn import cli

    run = str(tmp_path / "reader")
    assert cli.main(["train-reader", "--steps", "2", "--batch-size", "2", "--out", run]) == 0
    assert checkpoint.load_model(f"{run}/model.safetensors")[1]["config"]["steps"] == 2
    assert cli.main(["train-reader", "--resume", run, "--lr", "0.1"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: a resumed run continues the same training, so it cannot change lr (0.003 -> 0.1); it may change "
        "precision, log_every")
    assert cli.main(["train-reader", "--resume", run]) == 0
    assert "resuming at step 2 of 2" in capsys.readouterr().out
