"""Reading a whole written number: a sequence model over the line of ink, trained with CTC loss.

Connected components cannot part digits whose ink touches; this reader never parts them. The number's
ink is scaled to MNIST's digit height (a 28-px strip of any width) and `models.LineReader` gives, per
two columns, the probabilities of the ten digits and of "no new digit here" (the CTC blank). A greedy
decode reads the digits at their peaks; each digit's confidence is its peak's probability, and a
number is unsure when a digit is low or the count is unclear (a peak where the blank nearly won, or a
blank between two peaks that nearly did not). It is trained on synthetic lines of MNIST training
digits (`lines.py`); its validation lines are made of the validation split's digits.

    mnist-cnn train-reader --steps 3000 --out runs/reader
    mnist-cnn train-reader --resume runs/reader     # after a crash or Ctrl-C: from its last checkpoint
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint, models, precision
from .data import MNIST_MEAN, MNIST_STD
from .errors import ConfigError
from .files import remove_partial_writes
from .imageops import bbox, dilate, stroke_width
from .lines import FIELD, PAD, make_lines, soften, thicken
from .preprocess import FLOOR, STROKE, THIN, Page
from .recipes import ReaderConfig, resume_changes
from .segment import MAX_DIGITS, TooManyDigits

BLANK = models.NUM_CLASSES  # the CTC blank is the last of LineReader's 11 classes
MIN_DIGIT = 0.5  # a digit whose peak probability is below this makes the number unsure
MIN_COUNT = 0.45  # ... and so does a count that this much probability would change: the blank at a peak,
# or a digit in the blank valley between two equal peaks. Chosen on numbers of MNIST validation digits:
# 0.2 made 11-17% of them unsure (half of those read right), 0.4 made 4-7% unsure. For the 8,000-step
# reader, on 2,000 validation lines (1-10 digits, mixed gaps): 0.4 made 2.1% unsure (76% of those read
# right) with 4.3% sure but wrong, 0.45 made 1.1% unsure with 4.5% (the 3,500-step reader at 0.4: 3.8%, 4.9%)


def default_reader_path() -> Path:
    """The small number reader shipped inside the package."""
    return Path(str(resources.files("mnist_cnn") / "weights" / "reader.safetensors"))


RESUMABLE = ("precision", "log_every")  # what a resumed reader run may change: the rest changes what it learns

HEIGHT = 20  # a line's ink is scaled to MNIST's digit height (the 20-px box), in a 28-px strip
MAX_WIDTH = 32 * 2 * FIELD  # line columns: room for segment.MAX_DIGITS wide digits far apart


# ------------------------------------------------------------------ the line


@dataclass
class Line:
    """A number's ink as the reader sees it, and where its columns lie on the page."""

    image: torch.Tensor  # (28, W) float in [0, 1], white ink on black
    x0: float  # the page column (working copy) of line column PAD
    scale: float  # line pixels per page pixel

    def page_column(self, c: float) -> float:
        return self.x0 + (c - PAD) / self.scale


def line_image(page: Page, mask: np.ndarray) -> Line:
    """The ink under `mask` as one line: its height scaled to HEIGHT and centred in 28 rows, grey levels as
    `preprocess.render` keeps them, strokes thickened when a fine pen would vanish in the scaling."""
    y0, y1, x0, x1 = bbox(mask)
    scale = HEIGHT / max(1, y1 - y0)
    r = max(1, math.ceil(1 / scale))  # about one line pixel of anti-aliased edge
    hs, ws = mask.shape
    y0, y1, x0, x1 = max(0, y0 - r), min(hs, y1 + r), max(0, x0 - r), min(ws, x1 + r)
    v = np.clip((page.ink[y0:y1, x0:x1] / page.level - FLOOR) / (1 - FLOOR), 0, 1) * dilate(mask[y0:y1, x0:x1], r)
    width = stroke_width(mask[y0:y1, x0:x1]) * scale
    if width < THIN * STROKE and (grow := round((STROKE - width) / 2 / scale)) >= 1:
        v = dilate(v.astype(np.float32), grow)
    out_h = max(1, round((y1 - y0) * scale))
    out_w = max(1, round((x1 - x0) * scale))
    if out_w > MAX_WIDTH:
        raise TooManyDigits(f"more than {MAX_DIGITS} digits: this ink is too long for one number")
    small = F.interpolate(torch.from_numpy(v.astype(np.float32))[None, None], size=(out_h, out_w),
                          mode="area" if scale < 1 else "bilinear")[0, 0].clamp(0, 1)
    image = torch.zeros(FIELD, out_w + 2 * PAD)
    top = max(0, (FIELD - out_h) // 2)
    image[top:top + min(out_h, FIELD), PAD:PAD + out_w] = small[:FIELD]
    return Line(image, float(x0), scale)


# ------------------------------------------------------------------ decode


@dataclass
class Peak:
    digit: int
    probability: float  # the digit's probability at its peak frame
    frame: int  # the peak frame (x = (frame + 0.5) * stride in line columns)
    start: int  # the digit's first and last frame (where it won over the blank and other digits)
    end: int
    doubt: float  # how much probability would change the count here (0: none)


def greedy_decode(probs: torch.Tensor) -> list[Peak]:
    """Per-frame probabilities (T, 11) -> the digits read: best class per frame, repeats merged, blanks dropped.

    Each run of frames won by one digit is a digit; its peak is its most probable frame. The count's
    doubt is the blank's probability at that peak, or, for a blank run between two runs of the same
    digit, how close the best frame of the valley came to that digit (it could have been one digit).
    """
    best = probs.argmax(1).tolist()
    peaks: list[Peak] = []
    t = 0
    while t < len(best):
        c, end = best[t], t
        while end + 1 < len(best) and best[end + 1] == c:
            end += 1
        if c != BLANK:
            run = probs[t:end + 1, c]
            k = t + int(run.argmax())
            peaks.append(Peak(c, float(run.max()), k, t, end, float(probs[k, BLANK])))
        t = end + 1
    for a, b in zip(peaks, peaks[1:]):  # a blank valley between two runs of one digit: one digit or two?
        if a.digit == b.digit:
            valley = float(probs[a.end + 1:b.start, a.digit].max()) if b.start > a.end + 1 else 1.0
            b.doubt = max(b.doubt, valley)
    return peaks


def unsure_reason(peaks: list[Peak]) -> str | None:
    """Why this reading is not to be trusted, or None."""
    low = [p for p in peaks if p.probability < MIN_DIGIT]
    if low:
        return f"digit {peaks.index(low[0]) + 1} is uncertain ({low[0].probability:.2f})"
    if any(p.doubt > MIN_COUNT for p in peaks):
        return "the number of digits is unclear"
    return None


@dataclass
class Reading:
    """What the reader made of one line: its digits at their peaks, with the page columns of each."""

    peaks: list[Peak]
    probs: torch.Tensor  # (T, 11) per-frame probabilities
    spans: list[tuple[int, int]]  # each digit's page columns (working copy), ends exclusive
    centres: list[float]  # each digit's peak, in page columns
    reason: str | None  # why the reading is unsure, or None


class NumberReader:
    """A trained LineReader and its metadata: a page's ink in, the digits read out."""

    def __init__(self, model, meta: dict):
        self.model, self.meta = model, meta

    @classmethod
    def from_path(cls, path=None, device="cpu") -> "NumberReader":
        """The shipped reader by default, or a checkpoint that `train-reader` wrote."""
        model, meta = checkpoint.load_model(path or default_reader_path(), device)
        if meta.get("arch") != "line_reader":
            raise checkpoint.CheckpointError(f"{path}: a {meta.get('arch')!r} digit classifier, not a number "
                                             "reader (train one with mnist-cnn train-reader)")
        return cls(model, meta)

    @torch.inference_mode()
    def probabilities(self, line: torch.Tensor) -> torch.Tensor:
        """A line (28, W) in [0, 1] -> per-frame probabilities (W // 2, 11)."""
        device = next(self.model.parameters()).device
        x = (line.to(device) - self.meta["mean"]) / self.meta["std"]
        return self.model(x[None, None])[0].float().softmax(1).cpu()

    def read(self, page: Page, mask: np.ndarray) -> Reading:
        """Read the ink under `mask` as one line of digits."""
        line = line_image(page, mask)
        probs = self.probabilities(line.image)
        peaks = greedy_decode(probs)
        stride = models.LineReader.stride
        # A digit's columns reach halfway into the blank frames on either side of it.
        edges = [0] + [(a.end + 1 + b.start) / 2 * stride for a, b in zip(peaks, peaks[1:])] + [line.image.shape[1]]
        spans = [(max(0, int(line.page_column(a))), min(mask.shape[1], math.ceil(line.page_column(b))))
                 for a, b in zip(edges, edges[1:])]
        centres = [line.page_column((p.frame + 0.5) * stride) for p in peaks]
        return Reading(peaks, probs, spans, centres, unsure_reason(peaks))


# ------------------------------------------------------------------ training


def lr_at(step: int, cfg: ReaderConfig) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


def normalize(lines: torch.Tensor) -> torch.Tensor:
    """Lines (B, 28, W) in [0, 1] -> the network's input (B, 1, 28, W), as MNIST digits are normalized."""
    return ((lines - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


def val_set(x: torch.Tensor, y: torch.Tensor, cfg: ReaderConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation lines (one per draw, so each has its own width) made of the held-out digits."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    out = []
    for i in range(cfg.val_lines):
        lines, labels, _ = make_lines(x, y, 1, 1 + i % cfg.max_digits, g)
        out.append((lines[0], labels[0]))
    return out


@torch.inference_mode()
def evaluate_lines(model, lines: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Exact-line and count accuracy of greedy readings (%)."""
    model.eval()
    device = next(model.parameters()).device
    exact = counted = 0
    for line, label in lines:
        peaks = greedy_decode(model(normalize(line[None].to(device)))[0].softmax(1).cpu())
        exact += [p.digit for p in peaks] == label.tolist()
        counted += len(peaks) == len(label)
    return {"exact": 100 * exact / len(lines), "count": 100 * counted / len(lines)}


def train_one_step(model, opt, lines, labels, ctc, prec: precision.Precision | None = None, scaler=None) -> float:
    """One optimizer step; the network's forward under `prec`'s autocast (bf16 convolutions run about twice as
    fast on a CPU with AMX), the CTC loss and the weights in fp32."""
    model.train()
    prec = prec or precision.Precision("fp32", "")
    scaler = scaler or prec.scaler(lines.device)
    with prec.autocast(lines.device):
        logits = model(normalize(lines))
    log_probs = logits.float().log_softmax(2).transpose(0, 1)  # (T, B, 11): the CTC loss in fp32
    t, b = log_probs.shape[:2]
    loss = ctc(log_probs, labels, torch.full((b,), t, dtype=torch.long),
               torch.full((b,), labels.shape[1], dtype=torch.long))
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # a pass-through but for fp16
    scaler.step(opt)
    scaler.update()
    return float(loss.detach())


def train_reader(cfg: ReaderConfig, train_x, train_y, val_x, val_y, log=lambda m: None, run_dir: Path | None = None,
                 resume: bool = False):
    """Train a LineReader on synthetic lines of (train_x, train_y); -> (model, history, metadata).

    With `run_dir`, everything a resume needs is written there every `log_every` steps (a long run killed
    loses at most that much); `resume` continues from it, to the same weights as a run never stopped.
    """
    device = train_x.device  # lines are made on the CPU (cheap next to the network) and moved there
    train_x, train_y, val_x, val_y = (t.cpu() for t in (train_x, train_y, val_x, val_y))
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's generator left as it was
        torch.manual_seed(cfg.seed)
        model = models.build_model(cfg.model, **cfg.model_args).to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, start = [], 0
    if run_dir is not None:
        remove_partial_writes(Path(run_dir))  # a kill mid-write leaves its temporary file
    if resume:
        if not (Path(run_dir) / checkpoint.STATE_NAME).is_file():
            raise ConfigError(f"{run_dir}: no checkpoint to resume from yet (the first is written after "
                              f"{cfg.log_every} steps); start the run again without --resume")
        start, saved, then = checkpoint.load_train_state(Path(run_dir), model, opt, None, rng=g)
        resume_changes(then, cfg, RESUMABLE)
        history = saved["steps"]
        log(f"resuming at step {start} of {cfg.steps}")
    ctc = torch.nn.CTCLoss(blank=BLANK, zero_infinity=True)
    prec = precision.resolve(cfg.precision, device)
    scaler = prec.scaler(device)
    log(f"precision {prec.name} ({prec.reason})")
    val = val_set(val_x, val_y, cfg)
    t0, losses = time.perf_counter() - (history[-1]["seconds"] if history else 0.0), []
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        length = int(torch.randint(1, cfg.max_digits + 1, (1,), generator=g))
        lines, labels, _ = make_lines(train_x, train_y, cfg.batch_size, length, g)
        losses.append(train_one_step(model, opt, soften(thicken(lines, g), g).to(device), labels.to(device), ctc,
                                     prec, scaler))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0,
                   **{f"val_{k}": v for k, v in evaluate_lines(model, val).items()}}
            history.append(row)
            losses = []
            if run_dir is not None:
                checkpoint.save_train_state(Path(run_dir), cfg, model, opt, None, {"steps": history}, step + 1,
                                            weights_meta=_metadata(cfg, history, prec), rng=g)
            log(f"step {row['step']}: loss {row['loss']:.3f}, validation lines exact {row['val_exact']:.1f}%, "
                f"count {row['val_count']:.1f}% ({row['seconds']:.0f} s)")
    return model.eval().cpu(), history, _metadata(cfg, history, prec)


def _metadata(cfg: ReaderConfig, history: list[dict], prec: precision.Precision) -> dict:
    """The reader checkpoint's self-description: its recipe, and its last validation figures."""
    metrics = {"val_exact": history[-1]["val_exact"], "val_count": history[-1]["val_count"],
               "train_seconds": history[-1]["seconds"], **prec.record()}
    meta = checkpoint.make_metadata(cfg.model, cfg.model_args, MNIST_MEAN, MNIST_STD, dataclasses.asdict(cfg),
                                    metrics)
    meta["input"] = "(B, 1, 28, W) float32: a line of white ink on black, uint8 / 255, then (x - mean) / std"
    meta["output"] = "(B, W // 2, 11) logits: the 10 digits, then the CTC blank"
    return meta
