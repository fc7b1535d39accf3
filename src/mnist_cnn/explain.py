"""What the network saw: which pixels decided a digit, what each convolution responded to, and a
sentence built only from those numbers.

Attributions come from captum (the optional extra "explain"): Occlusion slides a grey-free patch
(the blank page, MNIST's 0) over the 28x28 and measures how the digit's logit falls; Integrated
Gradients integrates the gradient from that blank page to the image. Both explain the network's
single forward pass (the served answer may average shifted copies: `predict.Predictor.tta`).

    mnist-cnn explain my_digit.png --out explain.png
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .models import unwrap

METHODS = ("occlusion", "integrated-gradients")
OCCLUSION_WINDOW, OCCLUSION_STRIDE = 4, 2  # 13x13 placements: cheap at 28x28, fine enough for a stroke
IG_STEPS = 16
INK = 64  # of 255: pixels at least this bright are the digit's ink
RUNNER_UP = 0.05  # a second digit this probable, or more, is explained too
MAX_MAPS = 8  # feature maps shown per stage, the strongest first
MAP_SIDE = 14  # larger feature maps are pooled down to this
REGIONS = (("top", "middle", "bottom"), ("left", "centre", "right"))


@dataclass
class Stage:
    """One convolution's response (ReLU of its output): the strongest channels first."""

    name: str
    shape: tuple[int, ...]  # (channels, h, w) of the whole layer
    maps: np.ndarray  # (k, h', w') float32 >= 0, the k strongest channels, pooled to <= MAP_SIDE
    channels: list[int]  # their indices in the layer
    strength: list[float]  # their mean response


@dataclass
class Explanation:
    digit: int
    probabilities: list[float]
    attribution: np.ndarray  # (28, 28) float32, for `digit`, scaled so that max |a| = 1
    runner_up: int | None = None
    runner_up_attribution: np.ndarray | None = None
    ink_share: float = 0.0  # of the positive attribution, the share that falls on the ink
    stages: list[Stage] = field(default_factory=list)
    filters: np.ndarray | None = None  # (k, kh, kw) the first convolution's filters, strongest maps' first
    method: str = "integrated-gradients"
    sentence: str = ""


def _captum():
    try:
        from captum import attr
    except ImportError as exc:
        raise UserError("explanations need captum: pip install 'mnist-cnn[explain]'") from exc
    return attr


def explain(model: nn.Module, x: torch.Tensor, mean: float, std: float, method: str = "integrated-gradients",
            probabilities: list[float] | None = None) -> Explanation:
    """A 28x28 uint8 digit in MNIST form -> Explanation of `model`'s answer.

    `probabilities` are the answer to explain (the served one, e.g. with test-time augmentation);
    by default the model's own single pass. Attributions are for the most probable digit, and for
    the runner-up when it has at least RUNNER_UP.
    """
    if method not in METHODS:
        raise UserError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    if x.shape != (28, 28) or x.dtype != torch.uint8:
        raise UserError(f"explain takes one 28x28 uint8 digit, not {tuple(x.shape)} {x.dtype}")
    net, _ = unwrap(model)
    net = net.eval()
    device = next(net.parameters()).device
    inp = ((x.float() / 255 - mean) / std)[None, None].to(device)
    blank = (0.0 - mean) / std
    stages, first = _responses(net, inp)
    with torch.no_grad():
        probs = model(inp).float().softmax(1)[0].tolist() if probabilities is None else list(probabilities)
    order = np.argsort(probs)[::-1]
    digit, second = int(order[0]), int(order[1])
    targets = [digit] + ([second] if probs[second] >= RUNNER_UP else [])
    maps = _attribute(net, inp, blank, targets, method)
    ink = x.numpy() >= INK
    positive = np.clip(maps[0], 0, None)
    share = float(positive[ink].sum() / positive.sum()) if positive.sum() > 0 else 0.0
    out = Explanation(digit=digit, probabilities=[float(p) for p in probs], attribution=_unit(maps[0]),
                      ink_share=share, stages=stages, filters=first, method=method)
    if len(targets) > 1:
        out.runner_up, out.runner_up_attribution = second, _unit(maps[1])
    out.sentence = describe(out, ink)
    return out


def _attribute(net: nn.Module, inp: torch.Tensor, blank: float, targets: list[int], method: str) -> list[np.ndarray]:
    attr = _captum()
    with torch.enable_grad():
        if method == "occlusion":
            algo = attr.Occlusion(net)
            w, s = OCCLUSION_WINDOW, OCCLUSION_STRIDE
            run = lambda t: algo.attribute(inp, target=t, sliding_window_shapes=(1, w, w), strides=(1, s, s),
                                           baselines=blank, perturbations_per_eval=256)
        else:
            algo = attr.IntegratedGradients(net)
            run = lambda t: algo.attribute(inp, target=t, baselines=torch.full_like(inp, blank), n_steps=IG_STEPS,
                                           internal_batch_size=IG_STEPS)
        return [run(t)[0, 0].detach().float().cpu().numpy() for t in targets]


def _unit(a: np.ndarray) -> np.ndarray:
    top = float(np.abs(a).max())
    return (a / top if top > 0 else a).astype(np.float32)


def _responses(net: nn.Module, inp: torch.Tensor) -> tuple[list[Stage], np.ndarray | None]:
    """Every convolution's ReLU'd output for `inp`, caught by forward hooks, and the first one's filters."""
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    caught: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: caught.__setitem__(name, o.detach()))
             for name, m in convs]
    try:
        with torch.no_grad():
            net(inp)
    finally:
        for h in hooks:
            h.remove()
    stages, first = [], None
    for k, (name, conv) in enumerate(convs):
        out = caught[name][0].float().relu()  # (C, h, w)
        strength = out.mean((1, 2))
        top = torch.argsort(strength, descending=True)[:MAX_MAPS]
        maps = out[top]
        if maps.shape[-1] > MAP_SIDE:
            maps = nn.functional.adaptive_avg_pool2d(maps[None], MAP_SIDE)[0]
        stages.append(Stage(name=f"conv{k + 1}", shape=tuple(out.shape), maps=maps.cpu().numpy(),
                            channels=top.tolist(), strength=[float(v) for v in strength[top]]))
        if k == 0 and conv.in_channels == 1:
            first = conv.weight.detach()[top.to(conv.weight.device), 0].float().cpu().numpy()
    return stages, first


def regions(attribution: np.ndarray, ink: np.ndarray) -> list[tuple[str, float]]:
    """The positive attribution on the ink, by ninths of the digit's own box: (name, share), largest first."""
    ys, xs = np.nonzero(ink)
    if not len(ys):
        return []
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    positive = np.where(ink, np.clip(attribution, 0, None), 0)
    total = positive.sum()
    if total <= 0:
        return []
    out = []
    for i, row in enumerate(REGIONS[0]):
        for j, col in enumerate(REGIONS[1]):
            r = slice(y0 + (y1 - y0) * i // 3, y0 + (y1 - y0) * (i + 1) // 3)
            c = slice(x0 + (x1 - x0) * j // 3, x0 + (x1 - x0) * (j + 1) // 3)
            name = "the centre" if (row, col) == ("middle", "centre") else f"the {row} {col}"
            out.append((name, float(positive[r, c].sum() / total)))
    return sorted(out, key=lambda t: -t[1])


def describe(e: Explanation, ink: np.ndarray) -> str:
    """A sentence from the numbers only: how sure, where the deciding ink was, what came second."""
    p = e.probabilities[e.digit]
    sure = "surely" if p >= 0.99 else "mostly" if p >= 0.9 else "probably" if p >= 0.5 else "perhaps"
    parts = regions(e.attribution, ink)
    lead = [name for name, share in parts[:2] if share >= 0.2]
    text = f"{sure} {e.digit} ({p:.0%})"
    if lead:
        text += f"; the ink at {' and '.join(lead)} counted most for it"
    if e.runner_up is not None:
        q = e.probabilities[e.runner_up]
        text += f"; {e.runner_up} came second ({q:.0%})"
        alt = [name for name, share in regions(e.runner_up_attribution, ink)[:1] if share >= 0.2]
        if alt:
            text += f", on the strength of the ink at {alt[0]}"
    return text + "."


def to_json(e: Explanation) -> dict:
    """The explanation as JSON-ready lists (grey levels and maps rounded: a page draws them)."""
    r = lambda a: None if a is None else np.round(a, 3).tolist()
    return {"digit": e.digit, "probabilities": e.probabilities, "method": e.method, "sentence": e.sentence,
            "attribution": r(e.attribution), "runner_up": e.runner_up,
            "runner_up_attribution": r(e.runner_up_attribution), "ink_share": round(e.ink_share, 4),
            "stages": [{"name": s.name, "shape": list(s.shape), "channels": s.channels,
                        "strength": [round(v, 4) for v in s.strength],
                        "maps": r(s.maps / max(float(s.maps.max()), 1e-6))} for s in e.stages],
            "filters": r(e.filters)}
