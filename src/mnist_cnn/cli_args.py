"""The `mnist-cnn` flags: every subcommand's parser, built without importing torch.

`mnist-cnn --help` answers in a tenth of a second because nothing here imports torch,
numpy or a stage module; the commands in cli.py import what they use when they run.
Bad values are usage errors (exit 2, with the subcommand's usage), and an unknown flag
or choice gets the nearest real one as a suggestion.

    mnist-cnn predict --help
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from pathlib import Path

from . import __version__
from .convert import ARCHS
from .recipes import PRECISIONS, RECIPES, DefaultConfig, FinetuneConfig, TrainConfig

DEVICES = ["auto", "cpu", "cuda", "mps"]
# Defaults whose owners import torch: spelled out in help text only, and checked against
# the owners by tests/test_cli.py, so --help stays cheap.
DIST_TIMEOUT_HELP = "600"  # distributed.DEFAULT_TIMEOUT_S
CALIBRATION_HELP = "2000"  # export.CALIBRATION_IMAGES
SORT_CHOICES = ["acc", "val", "time", "epochs", "date", "recipe", "path"]  # runs.SORT_KEYS
SAMPLES_DB_HELP = "$MNIST_CNN_DATA or ~/.cache/mnist-cnn, then samples.db"  # samples.default_path()
EXPORT_IMAGES = ["original", "28x28", "both"]  # imagefolder.IMAGES
SAMPLES_HELP = "your labelled digits: a samples.db, or a folder DIR/<digit>/<name>.png (torchvision's ImageFolder)"


class HelpFormatter(argparse.HelpFormatter):
    """Ends each flag's help with its default, unless there is none (None, False) or the help says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or \
                action.default is argparse.SUPPRESS or (not action.option_strings and action.nargs != "?"):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse, but an unknown flag is reported by the subcommand it was given to, with the nearest flags."""

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._subcommand(namespace)
            parser.error(f"unrecognized arguments: {' '.join(extras)}{_suggest(extras, parser)}")
        return namespace

    def _subcommand(self, namespace) -> argparse.ArgumentParser:
        return subcommands(self).get(getattr(namespace, "command", None), self)

    def _check_value(self, action, value):  # a choice argparse refuses: name the nearest one
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            close = difflib.get_close_matches(str(value), [str(c) for c in action.choices], n=1)
            if not close:
                raise
            raise argparse.ArgumentError(action, f"{exc.message}; did you mean {close[0]!r}?") from None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{name: parser} of the subcommands (none for a subcommand's own parser)."""
    return {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name, p in a.choices.items()}


def _suggest(extras: list[str], parser: argparse.ArgumentParser) -> str:
    flags = [s for a in parser._actions for s in a.option_strings]
    close = [m for e in extras if e.startswith("-") for m in difflib.get_close_matches(e.split("=")[0], flags, n=1)]
    return f" (did you mean {' or '.join(dict.fromkeys(close))}?)" if close else ""


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], so a bad number is a usage error, not a traceback."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} or more" if high is None else
                                             f"must be from {low} to {high}")
        return value
    parse.__name__ = "integer"  # argparse says "invalid integer value" for text that is not one
    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


positive.__name__ = "number"


def probability(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {text}")
    return value


probability.__name__ = "number"


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (or 1 itself)."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1, not {text}")
    return value


fraction.__name__ = "number"


def share(text: str) -> float:
    """An argparse type: a share from 0 (none) up to (not including) 1."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be from 0 up to 1 (not 1), not {text}")
    return value


share.__name__ = "number"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mnist-cnn", description="Handwritten-digit recognition with CNNs.",
                    formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (mnist-cnn COMMAND --help: its flags)")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              formatter_class=HelpFormatter)

    def data_dir(p):
        p.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="MNIST cache (default: $MNIST_CNN_DATA or ~/.cache/mnist-cnn)")

    def device(p, default="auto", help="where to run: auto picks CUDA, then MPS, then CPU"):
        p.add_argument("--device", default=default, choices=DEVICES, help=help)

    model_help = "checkpoint or run folder (default: the shipped model)"

    p = command("data", "acquire and verify MNIST, and the handwriting fonts the default recipe trains on")
    data_dir(p)

    p = command("train", "train a recipe, then evaluate it on the test set")
    data_dir(p)
    p.add_argument("--recipe", default="default", choices=list(RECIPES), help="the training recipe to run")
    p.add_argument("--epochs", type=int_in(1), help="passes over the training images (default: the recipe's)")
    p.add_argument("--batch-size", type=int_in(1), metavar="N",
                   help="images per step, split across torchrun ranks (default: the recipe's)")
    p.add_argument("--lr", type=positive, help="peak learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seeds every random generator (default: the recipe's, 0)")
    p.add_argument("--limit-train", type=int_in(1), metavar="N", help="train on the first N images only "
                   "(default: all)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--precision", choices=PRECISIONS, help="the training step's arithmetic: auto picks bf16 "
                   "autocast on a CPU with AMX or AVX-512 BF16 and on a CUDA GPU with bf16 (fp16 on one without), "
                   "else fp32; fp16 needs CUDA. Weights, evaluation and the saved model stay fp32 "
                   "(default: the recipe's, auto)")
    p.add_argument("--ensemble", type=int_in(1), metavar="N", help="train N models (seeds S..S+N-1) and average "
                   "their probabilities (default: 1)")
    device(p)
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder (default: runs/RECIPE-TIME)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars and images "
                   "(needs the tensorboard extra)")
    p.add_argument("--dist-timeout", type=positive, metavar="SECONDS", help="torchrun: how long a rank waits "
                   f"for the others before the job fails (default: {DIST_TIMEOUT_HELP})")
    p.add_argument("--samples", type=Path, metavar="DIR_OR_DB", help=SAMPLES_HELP + ", added to MNIST's training "
                   "images")
    p.add_argument("--samples-share", type=fraction, metavar="F", help="with --samples: their share of each epoch, "
                   f"reached by repeating them (default: {TrainConfig.samples_share})")
    p.add_argument("--font-share", type=share, metavar="F", help="digits of 40 handwriting fonts, other hands "
                   "than MNIST's (fetched once from the npm registry), as at most this share of each epoch; 0 trains "
                   f"on MNIST alone (default: the recipe's, {DefaultConfig.font_share} for default)")

    p = command("finetune", "adapt a trained model to your own labelled digits, measured before and after")
    data_dir(p)
    p.add_argument("--model", type=Path, metavar="CHECKPOINT", help="the model to start from: a checkpoint, "
                   "a run folder or latest (default: the shipped model)")
    p.add_argument("--samples", type=Path, required=True, metavar="DIR_OR_DB", help=SAMPLES_HELP)
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder (default: runs/finetune-TIME, so "
                   "--model latest finds it)")
    cfg = FinetuneConfig()
    p.add_argument("--steps", type=int_in(1), default=cfg.steps, metavar="N", help="optimizer steps")
    p.add_argument("--lr", type=positive, default=cfg.lr, help="peak learning rate (SGD, cosine to 0)")
    p.add_argument("--batch-size", type=int_in(2), default=cfg.batch_size, metavar="N",
                   help="images per step, your samples and MNIST replay together")
    p.add_argument("--person-share", type=fraction, default=cfg.person_share, metavar="F",
                   help="share of each batch drawn from your samples (the rest replays MNIST)")
    p.add_argument("--holdout", type=share, default=cfg.holdout, metavar="F", help="share of your samples "
                   "held out, stratified by digit, to measure before and after (0: none)")
    p.add_argument("--seed", type=int, default=cfg.seed, help="the holdout, the batches and the augmentation")
    p.add_argument("--precision", choices=PRECISIONS, default=cfg.precision, help="the tuning step's arithmetic, "
                   "as for train: auto picks bf16 where the hardware has it; the saved model stays fp32")
    device(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = command("samples", "the store of your labelled digits: list, import, export, delete, stats")
    which = p.add_subparsers(dest="samples_command", required=True, metavar="ACTION",
                             help="what to do with the store (mnist-cnn samples ACTION --help)")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        q = which.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                             formatter_class=HelpFormatter)
        q.add_argument("--db", type=Path, metavar="FILE", help=f"the samples store (default: {SAMPLES_DB_HELP})")
        return q

    q = action("list", "one line per sample: id, label, the model's answer, source, date")
    q.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    q = action("import", "add a labelled folder DIR/<digit>/<name>.png, each image through the preprocessing")
    q.add_argument("folder", type=Path, metavar="DIR", help="folders 0/ to 9/ of images, as ImageFolder reads")
    q.add_argument("--model", type=Path, metavar="CHECKPOINT", help="the model whose answers are recorded "
                   "(default: the shipped model)")
    q = action("export", "write the store as a labelled folder DIR/<digit>/<id>.png")
    q.add_argument("folder", type=Path, metavar="DIR", help="where to write (made if needed)")
    q.add_argument("--images", default="original", choices=EXPORT_IMAGES, help="the uploads as they came, "
                   "the 28x28s the network saw, or both (in DIR/original/ and DIR/28x28/)")
    q = action("delete", "remove samples by id")
    q.add_argument("ids", nargs="+", type=int_in(1), metavar="ID", help="the ids `mnist-cnn samples list` shows")
    q = action("stats", "how many samples, per digit and source, and how many the model had wrong")
    q.add_argument("--json", action="store_true", help="print them as JSON")

    p = command("evaluate", "score a checkpoint on the MNIST test set")
    data_dir(p)
    p.add_argument("checkpoint", nargs="?", type=Path, help=model_help)
    p.add_argument("--samples", type=int_in(0), default=10, metavar="N",
                   help="random test images whose truth and prediction are printed")
    p.add_argument("--seed", type=int, default=0, help="picks those images")
    device(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--report", action="store_true", help="write figures and index.html into the run's report/")
    p.add_argument("--report-dir", type=Path, metavar="DIR", help="write the report here instead")
    p.add_argument("--tensorboard", action="store_true", help="with the report, TensorBoard scalars and images")

    p = command("runs", "list the training runs in a folder")
    p.add_argument("folder", nargs="?", type=Path, default=Path("runs"), help="folder of run folders")
    p.add_argument("--sort", default="acc", choices=SORT_CHOICES, help="order (accuracies best first)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    p = command("compare", "put runs side by side, with their curves on one figure")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders")
    p.add_argument("--out", type=Path, default=Path("compare.png"), metavar="FILE", help="figure to write")

    p = command("export", "export a checkpoint to ONNX (optionally int8), verified against PyTorch")
    data_dir(p)
    p.add_argument("--model", type=Path, metavar="CHECKPOINT", help=model_help)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="file format")
    p.add_argument("--int8", action="store_true", help="static int8 quantization calibrated on training images")
    p.add_argument("--calibration-images", type=int_in(1), metavar="N", help="training images for --int8 "
                   f"(default: {CALIBRATION_HELP})")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="ONNX file to write")

    p = command("serve", "serve the draw-a-digit page and the REST API")
    p.add_argument("--model", type=Path, metavar="CHECKPOINT", help="checkpoint, run folder or .onnx file "
                   "(default: the shipped model)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"], help="inference engine")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--allowed-host", action="append", metavar="NAME", help="a Host name clients (or a reverse "
                   "proxy) use to reach the server; repeatable, '*' for any (default: loopback names and --host)")
    p.add_argument("--port", type=int_in(1, 65535), default=8000, help="TCP port to listen on")
    device(p, "cpu", "torch backend device (cpu is fastest for one image at a time)")
    p.add_argument("--threads", type=int_in(1), default=1, metavar="N", help="intra-op threads of torch or ONNX "
                   "Runtime")
    p.add_argument("--workers", type=int_in(1), default=1, metavar="N", help="server processes, each with its own "
                   "copy of the model: image preprocessing holds the GIL, so more processes can use more cores")
    p.add_argument("--min-confidence", type=probability, default=0.5, metavar="P",
                   help='below this probability the answer says "unsure"')
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level")
    p.add_argument("--collect", action="store_true", help="keep the page's corrections (\"Wrong? It was a ...\") "
                   "in the samples store; without it nothing is kept")
    p.add_argument("--collect-token", metavar="TOKEN", help="the token that keeping a sample needs (default: "
                   "$MNIST_CNN_COLLECT_TOKEN; none on loopback, else a random one, printed at start)")
    p.add_argument("--samples-db", type=Path, metavar="FILE", help=f"where --collect keeps samples (default: "
                   f"{SAMPLES_DB_HELP})")

    p = command("train-reader", "train the sequence reader of written numbers (predict --multi) on synthetic "
                "lines of MNIST training digits")
    data_dir(p)
    p.add_argument("--steps", type=int_in(1), metavar="N", help="optimizer steps, each on fresh lines "
                   "(default: the reader recipe's)")
    p.add_argument("--batch-size", type=int_in(1), metavar="N", help="lines per step (default: the recipe's)")
    p.add_argument("--lr", type=positive, help="peak learning rate, AdamW one-cycle (default: the recipe's)")
    p.add_argument("--seed", type=int, help="seeds the weights and the lines (default: 0)")
    p.add_argument("--precision", choices=PRECISIONS, help="the training step's arithmetic, as for train: auto "
                   "picks bf16 autocast where the hardware does bf16 natively; the saved reader stays fp32 "
                   "(default: the recipe's, auto)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a reader run from its last checkpoint "
                   "(written every 250 steps)")
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder (default: runs/reader-TIME)")
    device(p)

    p = command("predict", "recognize digits in your own images (files, folders, globs, - for stdin)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders of images, globs, or - (stdin)")
    p.add_argument("--model", type=Path, metavar="CHECKPOINT", help="checkpoint, run folder or (onnx) .onnx file "
                   "(default: the shipped model)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"], help="inference engine")
    p.add_argument("--format", default="text", choices=["text", "json", "csv"],
                   help="text for people; json (one object per line) or csv for programs")
    p.add_argument("--topk", type=int_in(1, 10), default=3, metavar="K", help="alternatives to show")
    p.add_argument("--min-confidence", type=probability, default=0.5, metavar="P",
                   help='answer "unsure" when the best probability is below P (0: answer whenever the ink '
                   'looks like a digit)')
    p.add_argument("--save-processed", type=Path, metavar="DIR", help="write the 28x28 images the network saw")
    p.add_argument("--multi", action="store_true", help="read a number of several digits, left to right")
    p.add_argument("--reader", metavar="CHECKPOINT", help="with --multi: a number reader from train-reader, or "
                   "segment to cut the ink into digits for the classifier (default: the shipped reader)")

    p = command("explain", "show why the network reads a digit as it does: a figure of the input, where it looked, "
                "what each convolution saw, and the probabilities")
    p.add_argument("image", metavar="IMAGE", help="a picture of one digit")
    p.add_argument("--out", type=Path, default=Path("explain.png"), metavar="FILE", help="the figure to write (PNG)")
    p.add_argument("--model", type=Path, metavar="CHECKPOINT", help="checkpoint or run folder "
                   "(default: the shipped model)")
    p.add_argument("--method", default="integrated-gradients", choices=["integrated-gradients", "occlusion"],
                   help="how the pixels' share is measured")

    p = command("convert", "turn a torch.save(model.state_dict()) file into a mnist-cnn checkpoint")
    p.add_argument("file", type=Path, metavar="FILE", help="the .pt/.pth file (read with weights_only: no "
                   "pickled code runs)")
    p.add_argument("--arch", default="seed", choices=list(ARCHS),
                   help="the network the weights are for: " + "; ".join(f"{k}, {v}" for k, v in ARCHS.items()))
    p.add_argument("--out", type=Path, metavar="FILE", help="checkpoint to write (default: FILE with the suffix "
                   ".safetensors)")
    return parser


def printable(name: str, encoding: str | None) -> str:
    """A path as the terminal can show it: bytes that are not text in a file name become \\xNN escapes."""
    text = os.fsencode(name).decode(sys.getfilesystemencoding(), "backslashreplace")
    encoding = encoding or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)
