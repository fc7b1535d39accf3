"""Recognize people's own digits: images in, digits with probabilities out.

A `Predictor` wraps any model that maps normalized (B, 1, 28, 28) floats to logits
(B, 10) -- a torch checkpoint or an ONNX session -- with the checkpoint's own
normalization constants and the one MNIST-style preprocessing in `preprocess`.

    mnist-cnn predict my_digit.png --topk 3
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from . import checkpoint, preprocess, reader, segment
from .errors import InputError, UserError
from .evaluation import predict_logits, uses_tta
from .imageops import bbox
from .inputs import as_pixels


# The sequence reader's digits in a piece that looks one digit wide are taken when each peaks above this (else
# the piece is one digit, the classifier's). Chosen on 216 numbers of MNIST validation digits composed as
# benchmarks/number_reading.py composes them: of the touching or overlapping ones, 16 whose 1 (or other narrow
# digit) the piece's width hid were read right by the reader, all at >= 0.96 but 4 (0.60-0.82); the 2 apart
# digits it split in two peaked at 0.61-0.77 (with the 3,500-step reader). With the 8,000-step reader, on 1,080
# numbers of dev seeds 1-2 of benchmarks/number_reading.py (benchmarks/number_failures.py), 0.9 read 86.7% /
# 88.9% of half-touching / overlapping numbers exactly and 80.0% of ten-digit ones, 0.75 read 88.1% / 89.2% / 82.5%
# (12 -> 6 numbers whose 1 hid in its neighbour's piece, no more single digits split, apart ones alike), and
# 0.6 read 88.3% / 89.2% / 83.3% but split one more single digit in two.
SURE_SPLIT = 0.75
# A whole piece of a number is read by one pass of the classifier, and again with the checkpoint's test-time
# augmentation only when that pass is below this: on 540 numbers of dev seed 1 of benchmarks/number_reading.py
# the numbers read were the same as with TTA on every piece (at 0.9, 0.99 and 0.999), at a fraction of the time.
TTA_BELOW = 0.9
# Ink as wide as two digits in which the sequence reader found one is unsure (the count is unclear), unless the
# reader's digit and the classifier's reading of the piece whole agree, the reader at least AGREE_READER sure and
# the classifier AGREE_CLASSIFIER. A wide single digit in a photo (a 2 with a long base, a slanted 0 or 8) was
# made unsure this way in about one number of 40 (benchmarks/photos.py, dev seeds 11-16); of the touching digits
# the doubt keeps from being read as one piece (dev seeds 1-2 of benchmarks/number_reading.py), the reader and the
# classifier agreed on one ("26" read as 2, at 1.000 and 0.943). With these, on the 720 dev photo numbers 615 -> 626
# were read exactly (two more sure but wrong, each misread in another digit that the doubt had hidden), and every
# drawn dev number read as before.
AGREE_READER, AGREE_CLASSIFIER = 0.85, 0.99
MIN_CONFIDENCE = 0.5  # below this calibrated probability the answer is "unsure" (0.2% of MNIST's test digits)


@dataclass
class Prediction:
    digit: int | None  # None when the image is empty or the answer is unsure
    probability: float  # of the most likely digit (0 when empty)
    probabilities: list[float]  # softmax over the 10 classes ([] when empty)
    topk: list[tuple[int, float]]  # the k most likely digits, most likely first
    status: str  # "ok", "empty" (no ink found) or "unsure" (below --min-confidence, or `reason`)
    processed: torch.Tensor | None = field(default=None, repr=False)  # the (28, 28) uint8 the network saw
    reason: str | None = None  # why the answer is unsure, for a person

    def to_dict(self) -> dict:
        return {"digit": self.digit, "probability": self.probability, "probabilities": self.probabilities,
                "topk": [{"digit": d, "probability": p} for d, p in self.topk], "status": self.status,
                "reason": self.reason}

    def describe(self) -> str:
        """One line for a person: the digit, how sure, and the alternatives."""
        if self.status == "empty":
            return "empty (no ink found)"
        top = ", ".join(f"{d} {p:.3f}" for d, p in self.topk)
        if self.status == "unsure":
            return (f"unsure: {self.reason}  (best guess {self.topk[0][0]} at {self.probability:.3f}; "
                    f"top-{len(self.topk)}: {top})")
        return f"{self.digit}  (p={self.probability:.3f}; top-{len(self.topk)}: {top})"

    def csv_row(self) -> list:
        """The CSV columns after the path: status, prediction, probability, top-k."""
        return [self.status, "" if self.digit is None else self.digit, f"{self.probability:.4f}",
                " ".join(f"{d}:{p:.4f}" for d, p in self.topk)]


class Part(NamedTuple):
    """What one digit of a number is read from."""

    peak: reader.Peak | None  # the sequence reader's digit here (None: it found none in this piece)
    ink: np.ndarray  # bool (H, W): the ink it is read from
    alone: bool  # a piece of its own, read whole by the classifier (else the reader's digit among touching ones)
    doubt: str | None = None  # why the piece's count of digits is unclear, or None
    wide: bool = False  # the doubt is the piece's width: as wide as two digits, with one read (or none)


@dataclass
class NumberPrediction:
    text: str  # the number read left to right; "?" marks an unsure digit, "" when empty
    digits: list[Prediction]
    status: str  # "ok", "empty" or "unsure" (some digit is, or ink was found but no digit read)
    boxes: list[list[int]] = field(default_factory=list)  # each digit's [x0, y0, x1, y1] in image pixels
    # (drawings and scans; a photo's sheet may have been flattened first); [] when the route gives none

    def to_dict(self) -> dict:
        return {"text": self.text, "status": self.status, "digits": [d.to_dict() for d in self.digits],
                "boxes": self.boxes}

    def describe(self) -> str:
        """One line for a person: the number, and how sure each digit is."""
        if self.status == "empty":
            return "empty (no ink found)"
        if not self.digits:
            return "unsure: ink, but no digit could be read in it"
        return f"{self.text}  (" + ", ".join(
            f"{'?' if d.digit is None else d.digit} {d.probability:.3f}" for d in self.digits) + ")"

    def csv_row(self) -> list:
        """The CSV columns after the path: status, the number, its least sure digit's probability, each
        digit's best guess."""
        return [self.status, self.text, f"{min((d.probability for d in self.digits), default=0):.4f}",
                " ".join(f"{d.topk[0][0]}:{d.probability:.4f}" for d in self.digits)]


def holds_several(peaks: list, narrow: bool) -> bool:
    """Whether a piece of ink is read as the sequence reader's digits in it (`peaks`), rather than as one
    digit, whole; `narrow`: by its shape, the piece is too narrow for two digits."""
    if len(peaks) <= 1:
        return False
    # A piece one digit wide holds two when a 1 is written over its neighbour (it adds little width): the
    # reader's count is taken when it is sure of each digit.
    return not narrow or min(p.probability for p in peaks) >= SURE_SPLIT


def owners(centres: list[float], spans: list[tuple[int, int]]) -> list[int]:
    """Which piece of ink (columns `spans`, left to right) each of the reader's digits (peaking at columns
    `centres`) lies in: the nearest; but a piece left with none takes the nearest peak between it and a
    neighbouring piece that holds others (every piece is a digit at least; else the digit would be read
    twice, once by the classifier from its own piece and once by the reader from its neighbour's)."""
    def gap(c, b):
        return max(spans[b][0] - c, c - spans[b][1], 0)

    owner = [min(range(len(spans)), key=lambda b: gap(c, b)) for c in centres]
    for b in range(len(spans)):
        if b in owner:
            continue
        loose = [i for i, o in enumerate(owner) if abs(o - b) == 1 and owner.count(o) > 1
                 and spans[min(o, b)][1] < centres[i] < spans[max(o, b)][0]]  # between the two pieces
        if loose:
            owner[min(loose, key=lambda i: gap(centres[i], b))] = b
    return owner


def agree(part: Part, whole: Prediction) -> bool:
    """Whether a piece that its width makes doubtful (`Part.wide`) is one digit after all: the sequence reader
    found one digit in it, and the classifier reads the piece whole as that digit; both are sure."""
    return (part.wide and part.peak is not None and part.peak.digit == whole.digit
            and part.peak.probability >= AGREE_READER and whole.probability >= AGREE_CLASSIFIER)


def empty() -> Prediction:
    """The answer for an image with no ink: reported, never guessed."""
    return Prediction(digit=None, probability=0.0, probabilities=[], topk=[], status="empty")


class Predictor:
    """A model, its metadata (normalization, classes) and the answer policy (top-k, min confidence).

    `model` is any callable from normalized float (B, 1, 28, 28) to logits (B, 10) on its device.
    Its forward is `evaluation.predict_logits`, with test-time augmentation when the checkpoint's recipe
    evaluates with it, so that what is served is what the checkpoint's test accuracy measured.
    """

    def __init__(self, model, meta: dict, min_confidence: float = MIN_CONFIDENCE, topk: int = 3,
                 reader="shipped"):
        if not 0.0 <= min_confidence <= 1.0:
            raise InputError(f"min_confidence must be between 0 and 1, not {min_confidence}")
        self.model, self.meta = model, meta
        # How written numbers are read: "shipped" (the shipped sequence reader, loaded when first needed),
        # a reader checkpoint's path, a `reader.NumberReader`, or "segment" (connected components and cuts).
        self._reader = reader
        self.tta = uses_tta(meta)
        self.min_confidence, self.topk = min_confidence, max(1, min(topk, len(meta.get("classes", range(10)))))
        params = getattr(model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        self.device = first.device if first is not None else torch.device("cpu")  # ONNX callables take CPU tensors

    @classmethod
    def from_path(cls, path=None, backend: str = "torch", device="cpu", **kw) -> "Predictor":
        """The shipped model by default; `path` is a checkpoint, a run folder or (onnx) an .onnx file."""
        if backend == "torch":
            model, meta = checkpoint.load_model(path, device)
        elif backend == "onnx":
            from .export import load_onnx  # onnxruntime is an optional extra

            model, meta = load_onnx(path)
        else:
            raise InputError(f"unknown backend {backend!r}; use 'torch' or 'onnx'")
        if meta.get("arch") == "line_reader":
            raise InputError(f"{path} is a number reader, not a digit classifier: pass it as the reader "
                             "(--reader, or reader=)")
        return cls(model, meta, **kw)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) on the CPU for MNIST-form uint8 images (N, 28, 28), by evaluation's forward."""
        return predict_logits(self.model, x.to(self.device), self.meta["mean"], self.meta["std"], batch_size=256,
                              tta=self.tta).cpu()

    def predict_arrays(self, x, batch_size: int = 256) -> list[Prediction]:
        """MNIST-form images (N, 28, 28) -> one Prediction each.

        White ink on black, centred, as MNIST: uint8 0..255 or float in [0, 1] (`inputs.as_pixels`
        refuses anything else rather than guess).
        """
        x = as_pixels(x, "images")
        if x.dim() != 3 or tuple(x.shape[1:]) != (28, 28):
            raise InputError(f"predict_arrays takes MNIST-form images (N, 28, 28), not {tuple(x.shape)}")
        out = []
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            probs = self.logits(batch).float().softmax(1)
            out += [self._prediction(p, img) for p, img in zip(probs, batch.cpu())]
        return out

    def classify_pieces(self, x: torch.Tensor) -> list[Prediction]:
        """MNIST-form uint8 digits (N, 28, 28) of a number: one pass each, and the checkpoint's TTA (when its
        recipe has it) only for those that pass leaves below TTA_BELOW."""
        if not self.tta:
            return self.predict_arrays(x)
        probs = predict_logits(self.model, x.to(self.device), self.meta["mean"], self.meta["std"]).cpu().float().softmax(1)
        again = probs.amax(1) < TTA_BELOW
        if again.any():
            probs[again] = self.logits(x[again]).float().softmax(1)
        return [self._prediction(p, img) for p, img in zip(probs, x.cpu())]

    def _prediction(self, probs: torch.Tensor, processed: torch.Tensor) -> Prediction:
        reason = (preprocess.doubt(processed) or self._too_low(probs)
                  or preprocess.contradicts(processed, int(probs.argmax())))
        return self._answer(probs, processed, reason)

    def _too_low(self, probs: torch.Tensor) -> str | None:
        p = float(probs.max())
        return f"its best probability, {p:.4g}, is below {self.min_confidence:g}" if p < self.min_confidence else None

    def _answer(self, probs: torch.Tensor, processed: torch.Tensor, reason: str | None) -> Prediction:
        """The best of `probs` (over the ten digits), or unsure for `reason`."""
        top_p, top_i = probs.topk(self.topk)
        return Prediction(digit=None if reason else int(top_i[0]), probability=float(top_p[0]),
                          probabilities=probs.tolist(), topk=[(int(i), float(q)) for i, q in zip(top_i, top_p)],
                          status="unsure" if reason else "ok", processed=processed, reason=reason)

    def predict_image(self, img: Image.Image) -> Prediction:
        """One digit in any image -> Prediction (status "empty" when there is no ink)."""
        x = preprocess.to_mnist(img)
        return empty() if x is None else self.predict_arrays(x[None])[0]

    def explain(self, x: torch.Tensor, method: str = "integrated-gradients"):
        """A 28x28 uint8 digit -> explain.Explanation of the served answer (its probabilities) by the
        network's own pass. Torch models only: ONNX Runtime gives no gradients or feature maps."""
        from . import explain  # captum, the optional extra "explain", only when asked

        if not isinstance(self.model, torch.nn.Module):
            raise UserError("explanations need the torch backend (an ONNX model has no gradients to follow)")
        served = self.predict_arrays(x[None])[0].probabilities
        return explain.explain(self.model, x, self.meta["mean"], self.meta["std"], method, probabilities=served)

    def _confidence(self, x: torch.Tensor) -> float:
        """How sure the model is of all these digits together: the sum of log max-probabilities."""
        return float(self.logits(x).float().log_softmax(1).amax(1).sum())

    @property
    def reader(self):
        """The sequence reader of written numbers, or None for the segmentation route."""
        if self._reader == "segment":
            return None
        if not isinstance(self._reader, reader.NumberReader):
            path = None if self._reader == "shipped" else self._reader
            self._reader = reader.NumberReader.from_path(path, self.device)
        return self._reader

    def predict_number(self, img: Image.Image, deadline: float | None = None) -> NumberPrediction:
        """A written number -> its digits left to right, with each digit's confidence.

        Past `deadline` (a time.monotonic() value; None: none) it stops with segment.OutOfTime."""
        if self._reader != "segment":
            return self._read_number(img, deadline)
        digits = segment.segment_digits(img, score=self._confidence, deadline=deadline)
        if not digits:
            return NumberPrediction(text="", digits=[], status="empty")
        preds = self.predict_arrays(torch.stack(digits))
        text = "".join("?" if p.digit is None else str(p.digit) for p in preds)
        return NumberPrediction(text=text, digits=preds, status="ok" if "?" not in text else "unsure")

    def _read_number(self, img: Image.Image, deadline: float | None) -> NumberPrediction:
        """The sequence reader over the whole line, with the ink's pieces: a piece that holds one digit of the
        reading (or none: a faint or odd digit it missed) is that digit, whole, read by the classifier as before;
        a piece that holds several (digits that touch) is read by the sequence reader, each digit's 28x28 and
        box cut halfway between its neighbours' peaks."""
        page = segment.number_page(img)
        if page is None:
            return NumberPrediction(text="", digits=[], status="empty")
        number = self._read_page(page, deadline)
        # Italic writing leans further than MNIST's digits and the reader's lines (a bold italic "31415" was
        # "314116?"); but MNIST's own lines measure leans as large, so only an unsure reading is tried again
        # with the page stood upright, and kept when that one is sure.
        if number.status == "unsure" and abs(lean := segment.slant(page.labels > 0)) >= segment.MIN_SLANT:
            again = self._read_page(segment.upright(page, lean), deadline)
            if again.status == "ok":
                return again
        return number

    def _read_page(self, page: preprocess.Page, deadline: float | None) -> NumberPrediction:
        reading, items = self.number_parts(page, deadline)
        crops = torch.stack([preprocess.render(page, part.ink) for part in items])
        alone = [i for i, part in enumerate(items) if part.alone]
        classified = dict(zip(alone, self.classify_pieces(crops[alone]))) if alone else {}
        preds, boxes = [], []
        for i, part in enumerate(items):
            y0, y1, x0, x1 = bbox(part.ink)
            box = segment.unshear_box([x0, y0, x1, y1], page)
            boxes.append([v * page.factor for v in box])
            if i not in classified:
                preds.append(self._read_digit(reading, part.peak, crops[i], part.doubt))
            elif part.doubt and classified[i].status == "ok" and not agree(part, classified[i]):
                preds.append(self._answer(torch.tensor(classified[i].probabilities), crops[i], part.doubt))
            else:
                preds.append(classified[i])
        text = "".join("?" if p.digit is None else str(p.digit) for p in preds)
        status = "ok" if preds and "?" not in text else "unsure"
        return NumberPrediction(text=text, digits=preds, status=status, boxes=boxes)

    def number_parts(self, page: preprocess.Page, deadline: float | None = None) -> tuple[reader.Reading, list[Part]]:
        """The sequence reader's reading of a number's ink, and what each digit is read from, left to right."""
        mask = page.labels > 0
        reading = self.reader.read(page, mask)
        segment.check_deadline(deadline)
        if len(reading.peaks) > segment.MAX_DIGITS:
            raise segment.TooManyDigits(f"more than {segment.MAX_DIGITS} digits (read as {len(reading.peaks)}): "
                                        "the limit for one number")
        pieces = segment.digit_blobs(page.labels, page.count)
        blobs = [m for m, _ in pieces]
        spans = [bbox(m)[2:] for m in blobs]
        owner = owners(reading.centres, spans)
        columns = np.arange(mask.shape[1])[None, :]
        # Chosen on evidence (benchmarks/number_reading.py, docs/preprocessing.md): the classifier reads a digit
        # that stands alone better than the sequence reader (phone photos: 82% of numbers against 73% when the
        # sequence reader read everything); cutting a touching piece where the classifier is surest, with the
        # reader's count, read 81% and 69% of half-touching and overlapping numbers of validation digits,
        # against 87% and 76% for the sequence reader's own digits.
        items = []
        for b, blob in enumerate(blobs):
            mine = [i for i, o in enumerate(owner) if o == b]
            if not holds_several([reading.peaks[i] for i in mine], narrow=max(pieces[b][1]) == 1):
                # Ink as wide as several digits that the reader found one digit in (or none): the count is
                # unclear, and the classifier's reading of it whole is no answer to trust.
                wide = pieces[b][1][0] >= 2 and len(mine) <= 1
                doubt = f"this ink is as wide as two digits, but {'one was' if mine else 'none was'} read"
                items.append(Part(reading.peaks[mine[0]] if mine else None, blob, True, doubt if wide else None, wide))
                continue
            # Ink as wide as more digits than the reader found in it (a cursive "2026" in one stroke, read as
            # "206"): the count is unclear.
            counts = pieces[b][1]
            short = (f"this ink is as wide as {counts[0]} digits, but {len(mine)} were read"
                     if len(counts) == 1 and counts[0] > len(mine) else None)
            for i in mine:
                x0, x1 = reading.spans[i]
                part = blob & (columns >= x0) & (columns < x1)
                items.append(Part(reading.peaks[i], part if part.any() else blob, False, short))
        return reading, items

    def _read_digit(self, reading, peak, processed: torch.Tensor, doubt: str | None = None) -> Prediction:
        """A digit the sequence reader read among touching ones: its peak's probabilities (`doubt`: why the
        count of its piece is unclear)."""
        probs = reading.probs[peak.frame, :10]
        probs = probs / probs.sum().clamp_min(1e-12)  # over the ten digits (the blank's share is `peak.doubt`)
        count = f"it may be two digits, or none ({peak.doubt:.2f} of doubt)" if peak.doubt > reader.MIN_COUNT else None
        return self._answer(probs, processed, self._too_low(probs) or count or doubt)
