"""Evaluation: accuracy, loss, per-class accuracy and the confusion matrix of a model on a split.

`predict_logits` is the one forward pass from uint8 images to logits: evaluate measures with it
and `predict.Predictor` serves with it, so the accuracy a checkpoint reports is the served one.
A recipe with `tta` uses test-time augmentation in both; every figure says which (`forward_label`).

    mnist-cnn evaluate runs/default --json
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import distributed
from .augment import shift, to_float

# Test-time augmentation: the identity plus one-pixel shifts in the four directions.
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def forward_label(tta: bool) -> str:
    """How a figure was measured, for people: with test-time augmentation, or one pass per image."""
    return f"with TTA ({len(TTA_SHIFTS)} shifts)" if tta else "single pass"


def uses_tta(meta: dict) -> bool:
    """Whether a checkpoint's recipe evaluates (and so serves) with test-time augmentation."""
    return bool((meta.get("config") or {}).get("tta", False))


def measured_forward(meta: dict) -> str:
    """How a checkpoint's (or run's) test accuracy was measured; runs before the label was recorded
    were measured with their recipe's `tta`, like every run since."""
    return (meta.get("metrics") or {}).get("test_forward") or forward_label(uses_tta(meta))


@dataclass
class Metrics:
    accuracy: float  # percent
    loss: float  # mean cross-entropy
    per_class: list[float]  # percent correct for each true class
    confusion: list[list[int]]  # confusion[true][predicted]
    predictions: torch.Tensor  # (N,) predicted class
    probabilities: torch.Tensor  # (N, 10) softmax
    n: int
    forward: str = "single pass"  # how it was measured: `forward_label`

    def summary(self) -> dict:
        """The JSON-able part (without per-image tensors)."""
        return {"accuracy": self.accuracy, "loss": self.loss, "per_class": self.per_class,
                "confusion": self.confusion, "n": self.n, "forward": self.forward}

    def describe(self, classes) -> str:
        """For a person: accuracy and loss, per-class accuracy, and the confusion matrix."""
        lines = [f"test accuracy: {self.accuracy:.2f}% of {self.n} images ({self.forward}), loss {self.loss:.4f}",
                 "per-class accuracy: " + "  ".join(f"{c}:{a:.1f}" for c, a in zip(classes, self.per_class)),
                 "confusion matrix (rows: true, columns: predicted):",
                 "      " + "".join(f"{c:>6}" for c in classes)]
        lines += [f"{c:>6}" + "".join(f"{v:>6}" for v in row) for c, row in zip(classes, self.confusion)]
        return "\n".join(lines)


@torch.inference_mode()
def predict_logits(model, x: torch.Tensor, mean: float, std: float, batch_size: int = 1000,
                   tta: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Logits (N, 10) for uint8 images (N, 28, 28), in batches, on the images' device.

    With `tta`, the mean log-probabilities over TTA_SHIFTS. `model` is any callable from normalized
    (B, 1, 28, 28) floats to logits: a torch module (put in eval mode here) or an ONNX session's.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        batch = to_float(x[i:i + batch_size], mean, std)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if tta:  # average log-probabilities over the shifted copies
            logits = torch.stack([F.log_softmax(model(shift(batch, dy, dx)), 1) for dy, dx in TTA_SHIFTS]).mean(0)
        else:
            logits = model(batch)
        out.append(logits.float())
    return torch.cat(out) if out else torch.empty(0, 10, device=x.device)


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor) -> Metrics:
    """Metrics over (possibly sharded) predictions; under torchrun, counts are all-reduced."""
    num_classes = logits.shape[1]
    loss_sum = F.cross_entropy(logits, y, reduction="sum")
    pred = logits.argmax(1)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=y.device)
    confusion.index_add_(0, y * num_classes + pred, torch.ones_like(y, dtype=torch.float64))
    totals = torch.cat([confusion, loss_sum.double().reshape(1)])
    totals = distributed.all_reduce_sum(totals)
    confusion = totals[:-1].reshape(num_classes, num_classes).round().long().cpu()
    n = int(confusion.sum())
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1) * 100).tolist()
    return Metrics(accuracy=float(confusion.diag().sum()) / max(n, 1) * 100, loss=float(totals[-1]) / max(n, 1),
                   per_class=per_class, confusion=confusion.tolist(), predictions=pred.cpu(),
                   probabilities=logits.softmax(1).cpu(), n=n)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature T in [low, high] that minimizes the cross-entropy of softmax(logits / T).

    Fitted on held-out data (the validation split), it makes confidence match accuracy.
    The loss is convex in 1/T, so a golden-section search over 1/T finds the minimum.
    """
    z, y = logits.detach().double().cpu(), y.cpu()

    def loss(beta: float) -> float:
        return F.cross_entropy(z * beta, y).item()

    a, b = 1 / high, 1 / low
    g = (5 ** 0.5 - 1) / 2  # each step keeps this fraction of the bracket
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > 1e-6 * b:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    return 2 / (a + b)


def evaluate(model, x: torch.Tensor, y: torch.Tensor, mean: float, std: float, batch_size: int = 1000,
             tta: bool = False, channels_last: bool = False) -> Metrics:
    """Evaluate on uint8 images. Under torchrun each rank scores its own shard and counts are summed."""
    rank, world = distributed.rank(), distributed.world_size()
    x, y = x[rank::world], y[rank::world]
    logits = predict_logits(model, x, mean, std, batch_size, tta, channels_last)
    return dataclasses.replace(metrics_from_logits(logits, y), forward=forward_label(tta))
