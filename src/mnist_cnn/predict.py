"""Recognize people's own digits: images in, digits with probabilities out.

A `Predictor` wraps any model that maps normalized (B, 1, 28, 28) floats to logits
(B, 10) -- a torch checkpoint or an ONNX session -- with the checkpoint's own
normalization constants and the one MNIST-style preprocessing in `preprocess`.

    mnist-cnn predict my_digit.png --topk 3
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from . import checkpoint, preprocess
from .augment import to_float


@dataclass
class Prediction:
    digit: int | None  # None when the image is empty or the answer is unsure
    probability: float  # of the most likely digit (0 when empty)
    probabilities: list[float]  # softmax over the 10 classes ([] when empty)
    topk: list[tuple[int, float]]  # the k most likely digits, most likely first
    status: str  # "ok", "empty" (no ink found) or "unsure" (below --min-confidence)
    processed: torch.Tensor | None = field(default=None, repr=False)  # the (28, 28) uint8 the network saw

    def to_dict(self) -> dict:
        return {"digit": self.digit, "probability": self.probability, "probabilities": self.probabilities,
                "topk": [{"digit": d, "probability": p} for d, p in self.topk], "status": self.status}


@dataclass
class NumberPrediction:
    text: str  # the number read left to right; "?" marks an unsure digit, "" when empty
    digits: list[Prediction]
    status: str  # "ok", "empty" or "unsure" (some digit is)

    def to_dict(self) -> dict:
        return {"text": self.text, "status": self.status, "digits": [d.to_dict() for d in self.digits]}


def empty() -> Prediction:
    """The answer for an image with no ink: reported, never guessed."""
    return Prediction(digit=None, probability=0.0, probabilities=[], topk=[], status="empty")


class Predictor:
    def __init__(self, model, meta: dict, min_confidence: float = 0.0, topk: int = 3):
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be between 0 and 1, not {min_confidence}")
        self.model, self.meta = model, meta
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
            raise ValueError(f"unknown backend {backend!r}; use 'torch' or 'onnx'")
        return cls(model, meta, **kw)

    @torch.inference_mode()
    def predict_arrays(self, x: torch.Tensor, batch_size: int = 256) -> list[Prediction]:
        """MNIST-form uint8 images (N, 28, 28) -> one Prediction each."""
        out = []
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            logits = torch.as_tensor(self.model(to_float(batch.to(self.device), self.meta["mean"], self.meta["std"])))
            probs = logits.float().softmax(1).cpu()
            out += [self._prediction(p, img) for p, img in zip(probs, batch.cpu())]
        return out

    def _prediction(self, probs: torch.Tensor, processed: torch.Tensor) -> Prediction:
        top_p, top_i = probs.topk(self.topk)
        best, p = int(top_i[0]), float(top_p[0])
        sure = p >= self.min_confidence
        return Prediction(digit=best if sure else None, probability=p, probabilities=probs.tolist(),
                          topk=[(int(i), float(q)) for i, q in zip(top_i, top_p)],
                          status="ok" if sure else "unsure", processed=processed)

    def predict_image(self, img: Image.Image) -> Prediction:
        """One digit in any image -> Prediction (status "empty" when there is no ink)."""
        x = preprocess.to_mnist(img)
        return empty() if x is None else self.predict_arrays(x[None])[0]

    def predict_images(self, images: list[Image.Image]) -> list[Prediction]:
        """Several single-digit images, preprocessed one by one, classified in one batch."""
        xs = [preprocess.to_mnist(img) for img in images]
        found = [x for x in xs if x is not None]
        preds = iter(self.predict_arrays(torch.stack(found)) if found else [])
        return [empty() if x is None else next(preds) for x in xs]

    def predict_number(self, img: Image.Image) -> NumberPrediction:
        """A written number -> its digits left to right, with each digit's confidence."""
        digits = preprocess.segment_digits(img)
        if not digits:
            return NumberPrediction(text="", digits=[], status="empty")
        preds = self.predict_arrays(torch.stack(digits))
        text = "".join("?" if p.digit is None else str(p.digit) for p in preds)
        return NumberPrediction(text=text, digits=preds, status="ok" if "?" not in text else "unsure")
