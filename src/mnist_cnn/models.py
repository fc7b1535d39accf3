"""Network architectures, built by name from a small registry.

Every `forward` returns logits of shape (B, 10) from inputs of shape (B, 1, 28, 28),
except the faithful `seed` network, which keeps the notebook's log_softmax.

    python -c "from mnist_cnn.models import build_model; print(build_model('seed'))"
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError

IMAGE_SIZE = 28
NUM_CLASSES = 10


class SeedNet(nn.Module):
    """The notebook's network, layer for layer (3,973,762 parameters)."""

    def __init__(self, conv1: int = 150, conv2: int = 64, fc1: int = 1024, fc2: int = 500, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, conv1, 5, stride=1, padding=2)
        self.conv2 = nn.Conv2d(conv1, conv2, 5, stride=1, padding=2)
        side = IMAGE_SIZE // 2 // 2  # two 2x2 max-pools: 28 -> 14 -> 7
        self.flat = conv2 * side * side  # 64 * 7 * 7 = 3136
        self.fc1 = nn.Linear(self.flat, fc1)
        self.fc2 = nn.Linear(fc1, fc2)
        self.fc3 = nn.Linear(fc2, NUM_CLASSES)
        self.dropout = dropout

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 150, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 7, 7)
        x = x.flatten(1)  # (B, 3136)
        x = F.dropout(F.relu(self.fc1(x)), self.dropout, self.training)
        x = F.dropout(F.relu(self.fc2(x)), self.dropout, self.training)
        # Faithful to the notebook, which ends in log_softmax and then applies
        # CrossEntropyLoss. That is still correct: log_softmax is idempotent
        # (its outputs already satisfy logsumexp = 0), so the loss's own
        # log_softmax leaves them unchanged and the loss equals NLL. Argmax and
        # softmax are unchanged too, so these outputs serve as logits everywhere.
        return F.log_softmax(self.fc3(x), dim=1)  # (B, 10)


class ReferenceNet(nn.Module):
    """The well-known PyTorch example's network (pytorch/examples mnist/main.py)."""

    def __init__(self, conv1: int = 32, conv2: int = 64, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, conv1, 3)
        self.conv2 = nn.Conv2d(conv1, conv2, 3)
        side = (IMAGE_SIZE - 2 - 2) // 2  # two unpadded 3x3 convs, then a 2x2 pool: 28 -> 12
        self.fc1 = nn.Linear(conv2 * side * side, hidden)  # 64 * 12 * 12 = 9216
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)

    def forward(self, x):
        x = F.relu(self.conv1(x))  # (B, 32, 26, 26)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 12, 12)
        x = self.dropout1(x).flatten(1)  # (B, 9216)
        x = self.dropout2(F.relu(self.fc1(x)))  # (B, 128)
        return self.fc2(x)  # (B, 10) logits


def conv_bn(c_in: int, c_out: int, pool: bool = False, stride: int = 1) -> nn.Sequential:
    # No conv bias: the batch norm that follows has its own shift. With `pool`, the
    # 2x2 max-pool comes straight after the conv, so batch norm and ReLU (and their
    # backward passes, memory-bound on a CPU) touch a quarter of the pixels.
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    return nn.Sequential(conv, *([nn.MaxPool2d(2)] if pool else []), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class BNNet(nn.Module):
    """Our small CPU-friendly network: stages of 3x3 conv/BN/ReLU, each ending in a 2x2 max-pool.

    `widths` gives each stage's channels and `depth` its number of convs. With
    `pool_early` each stage pools right after its last conv, before batch norm and
    ReLU: a different network (BN sees pooled values), 15-20% faster per epoch on a
    2-core CPU for widths (32, 64, 128).
    The head is either `flatten` (all pooled features into one linear layer: fastest
    to train) or `gap` (global average pooling, then linear: fewest parameters). No
    giant fully-connected layers either way, and every size is derived from `widths`.
    With `stride_stem`, the first stage is one stride-2 conv instead of conv and pool: it
    computes only the 14x14 outputs, and nothing of it touches a 28x28 map but its input.
    `crop` pixels are cut from each border before the first conv: MNIST's digits sit in the
    middle 20x20 box, so the borders are nearly always background, and every map shrinks.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64), depth: int = 1, head: str = "flatten",
                 dropout: float = 0.0, pool_early: bool = False, stride_stem: bool = False, crop: int = 0):
        super().__init__()
        self.crop = crop
        layers, c_in = [], 1
        for stage, width in enumerate(widths):
            if stage == 0 and stride_stem:  # (B, widths[0], 14, 14), as conv and pool would give
                layers.append(conv_bn(c_in, width, stride=2))
                c_in = width
                continue
            layers += [conv_bn(c_in if i == 0 else width, width, pool=pool_early and i == depth - 1)
                       for i in range(depth)]
            if not pool_early:
                layers.append(nn.MaxPool2d(2))
            c_in = width
        self.features = nn.Sequential(*layers)  # (B, widths[-1], side, side)
        # Each pool (or the strided stem) halves and floors the side: 28 -> 14 -> 7 -> 3 (24 -> 12 -> 6 -> 3 cropped by 2).
        side = (IMAGE_SIZE - 2 * crop) >> len(widths)
        if head not in ("flatten", "gap"):
            raise ConfigError(f"unknown head {head!r}; choose flatten or gap")
        self.head_kind = head
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in * side * side if head == "flatten" else c_in, NUM_CLASSES)

    def forward(self, x):
        if self.crop:
            x = x[:, :, self.crop:-self.crop, self.crop:-self.crop]  # (B, 1, 28 - 2 crop, 28 - 2 crop)
        x = self.features(x)
        x = x.flatten(1) if self.head_kind == "flatten" else x.mean(dim=(2, 3))  # (B, features)
        return self.head(self.dropout(x))  # (B, 10) logits


class Ensemble(nn.Module):
    """Several networks whose softmax probabilities are averaged.

    `members` lists each one's {"arch", "arch_args"}, so an ensemble checkpoint is as
    self-describing as a single model's and loads through the same `load_model`.
    """

    def __init__(self, members: list[dict]):
        super().__init__()
        self.members = nn.ModuleList(build_model(m["arch"], **m.get("arch_args", {})) for m in members)

    def forward(self, x):
        probs = torch.stack([m(x).softmax(1) for m in self.members]).mean(0)  # (B, 10)
        return probs.clamp_min(1e-12).log()  # log of the averaged probabilities serves as logits


class LineReader(nn.Module):
    """A line of digits -> per-column logits over the 10 digits and a CTC blank (`reader.py` trains and reads it).

    Input (B, 1, 28, W) for any width W (a number's ink scaled to MNIST's 20-px digit height); three
    conv stages shrink the height 28 -> 7 and the width by `stride` only, so a narrow 1 still gets a
    frame of its own and a blank between repeated digits; a (7, 1) conv folds the height, and dilated
    1-D convs along the line let each frame see its neighbours (~3 digits: where one digit ends).
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 96), hidden: int = 128, context: int = 2):
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            conv_bn(1, c1), nn.MaxPool2d(2),  # (B, c1, 14, W/2)
            conv_bn(c1, c2), nn.MaxPool2d((2, 1)),  # (B, c2, 7, W/2)
            conv_bn(c2, c3))  # (B, c3, 7, W/2)
        side = IMAGE_SIZE // 2 // 2  # the height after two halvings: 28 -> 7
        self.fold = nn.Sequential(nn.Conv2d(c3, hidden, (side, 1), bias=False), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True))  # (B, hidden, 1, W/2)
        self.context = nn.Sequential(*[nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=2 ** i, dilation=2 ** i, bias=False), nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True)) for i in range(context)])  # (B, hidden, W/2)
        self.head = nn.Conv1d(hidden, NUM_CLASSES + 1, 1)  # the last class is the CTC blank

    stride = 2  # input columns per output frame

    def forward(self, x):
        x = self.fold(self.features(x)).squeeze(2)  # (B, hidden, T) with T = W // 2
        x = self.head(self.context(x))  # (B, 11, T)
        return x.transpose(1, 2)  # (B, T, 11) logits


class Calibrated(nn.Module):
    """A trained network whose logits are divided by a temperature fitted on validation data.

    Label smoothing and test-time averaging leave a network under-confident (about 0.89
    mean confidence at 99.7% accuracy for the default recipe); dividing the logits by
    T < 1 makes its probabilities mean what they say, and never changes the argmax.
    `checkpoint.load_model` wraps a network in this when its metadata has a temperature other than 1,
    so predict, serve and the ONNX export all see calibrated probabilities.
    """

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        self.model, self.temperature = model, float(temperature)

    def forward(self, x):
        return self.model(x) / self.temperature


def with_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """`model` calibrated by `temperature`; the bare model when there is nothing to divide by."""
    return model if temperature == 1.0 else Calibrated(model, temperature)


def unwrap(model: nn.Module) -> tuple[nn.Module, float]:
    """(the network inside every wrapper, the temperature its wrappers divide logits by).

    The one place that knows the wrappers: DistributedDataParallel (`.module`), torch.compile
    (`._orig_mod`) and `Calibrated` (`.model`). Weights are saved from the network, and the
    temperature goes into the checkpoint's metadata, so that `load_model` can wrap it again.
    """
    temperature = 1.0
    while True:
        if isinstance(model, Calibrated):
            temperature *= model.temperature
            model = model.model
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model, temperature




REGISTRY = {"seed": SeedNet, "reference": ReferenceNet, "bnnet": BNNet, "ensemble": Ensemble,
            "line_reader": LineReader}


def build_model(name: str, **kwargs) -> nn.Module:
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}") from None
    return cls(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

