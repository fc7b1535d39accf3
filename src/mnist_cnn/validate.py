"""What a checkpoint's metadata and weights must satisfy before `checkpoint.load_model` uses them.

A checkpoint is a file from anywhere: its JSON metadata decides what gets built, so its types
and sizes are checked first, then the tensor shapes the architecture implies are compared with
those in the safetensors header (no weight is allocated before that), and last the loaded model
must give finite probabilities. Each failure is a ValueError phrased for a person.

    python -c "from mnist_cnn.checkpoint import load_model; load_model()"
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from . import models
from .augment import to_float

# Sizes cost nothing to check (the shapes are compared on the meta device, against the header);
# these bounds only keep the meta build itself quick.
MAX_SIZE = 65_536  # any integer architecture argument (channels, units)
MAX_DEPTH = 64  # convs per stage: the only argument that multiplies modules (and time to build them)
MAX_LIST = 8  # items in a list argument such as bnnet's widths
MAX_MEMBERS = 32  # networks in an ensemble
TEMPERATURE_RANGE = (0.01, 100.0)  # evaluation.fit_temperature searches [0.05, 20]
STD_RANGE = (1e-3, 1e3)  # inputs are uint8 / 255; mnist-cnn writes 0.3081 or 1
MAX_ABS_MEAN = 1e3


def _number(meta: dict, key: str, default=None) -> float:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"metadata {key!r} must be a finite number, not {_short(value)}")
    return float(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_args(arch, args, where: str) -> None:
    if not isinstance(arch, str) or arch not in models.REGISTRY:
        raise ValueError(f"{where}unknown architecture {_short(arch)}; this mnist-cnn knows "
                         f"{', '.join(models.REGISTRY)}")
    if not isinstance(args, dict):
        raise ValueError(f"{where}'arch_args' must be an object, not {_short(args)}")
    if arch == "ensemble":
        members = args.get("members")
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS or set(args) != {"members"}:
            raise ValueError(f"{where}an ensemble's arch_args must be {{\"members\": [1 to {MAX_MEMBERS} networks]}}")
        for i, m in enumerate(members):
            if not isinstance(m, dict) or m.get("arch") == "ensemble":
                raise ValueError(f"{where}ensemble member {i} must be an object naming a single network")
            _check_args(m.get("arch"), m.get("arch_args", {}), f"{where}ensemble member {i}: ")
        return
    for key, value in args.items():
        items = value if isinstance(value, list) and len(value) <= MAX_LIST else [value]
        for v in items:
            ok = (isinstance(v, bool) or (isinstance(v, str) and len(v) <= 32)
                  or (isinstance(v, int) and 0 <= v <= MAX_SIZE)
                  or (isinstance(v, float) and math.isfinite(v)))
            if key == "depth" and isinstance(v, int) and v > MAX_DEPTH:
                ok = False
            if not ok or isinstance(v, list):
                raise ValueError(f"{where}arch_args {key!r} = {_short(value)} is not a plausible setting "
                                 f"(numbers up to {MAX_SIZE}, lists of up to {MAX_LIST})")


def check_metadata(meta, version: int) -> None:
    """The metadata's types and sizes: everything `load_model` and `Predictor` read from it."""
    if not isinstance(meta, dict):
        raise ValueError(f"metadata must be a JSON object, not {type(meta).__name__}")
    if meta.get("format_version") != version:
        raise ValueError(f"format version {_short(meta.get('format_version'))}, "
                         f"this mnist-cnn reads version {version}")
    _check_args(meta.get("arch"), meta.get("arch_args", {}), "")
    mean, std = _number(meta, "mean"), _number(meta, "std")
    temperature = _number(meta, "temperature", 1.0)
    if abs(mean) > MAX_ABS_MEAN or not STD_RANGE[0] <= std <= STD_RANGE[1]:
        raise ValueError(f"normalization mean {mean:g}, std {std:g} cannot be right "
                         f"(inputs are in [0, 1]; std must be in [{STD_RANGE[0]:g}, {STD_RANGE[1]:g}])")
    if not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
        raise ValueError(f"temperature {temperature:g} is outside [{TEMPERATURE_RANGE[0]:g}, "
                         f"{TEMPERATURE_RANGE[1]:g}]; its probabilities would be meaningless")
    classes = meta.get("classes", list(range(models.NUM_CLASSES)))
    if not isinstance(classes, list) or len(classes) != models.NUM_CLASSES:
        raise ValueError(f"metadata 'classes' must list {models.NUM_CLASSES} classes")
    for key in ("config", "metrics"):
        if not isinstance(meta.get(key, {}), dict):
            raise ValueError(f"metadata {key!r} must be an object")


def check_shapes(meta: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """The architecture's tensors (built on the meta device: no memory) against the file's header."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in
                        models.build_model(meta["arch"], **meta.get("arch_args", {})).state_dict().items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot build architecture {meta['arch']!r}: {str(exc).splitlines()[0]}") from None
    missing, unexpected = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected.keys())
    if missing or unexpected:
        which = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ValueError(f"weights do not match architecture {meta['arch']!r}: {which} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise ValueError(f"weights do not match architecture {meta['arch']!r}: {name} has shape "
                             f"{list(shapes[name])} in the file, the architecture needs {list(shape)}")


@torch.inference_mode()
def check_works(model: torch.nn.Module, meta: dict) -> None:
    """Finite weights, and finite probabilities for a blank and a full image (what a served model must give)."""
    weights = model.state_dict() if hasattr(model, "state_dict") else {}  # an ONNX session has none to show
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"weight {name} holds NaN or infinite values; the model cannot give an answer")
    probe = torch.stack([torch.zeros(28, 28), torch.full((28, 28), 255.0)]).to(torch.uint8)
    logits = torch.as_tensor(model(to_float(probe, meta["mean"], meta["std"])))
    if not torch.isfinite(logits.float().softmax(1)).all():
        raise ValueError("the model's probabilities are not finite numbers (NaN or infinity) even for a "
                         "blank image; its weights or metadata are broken")
