"""Predicting many inputs, as `mnist-cnn predict` does: files, folders, globs and standard input,
each read with a size limit and streamed through the `Predictor` in batches; one bad input is that
input's error alone. `save_processed` writes the 28x28 images the network saw.

    mnist-cnn predict photos/ "scans/*.png" - --save-processed processed/
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import torch
from PIL import Image

from . import files, images, preprocess
from .errors import UserError
from .predict import NumberPrediction, Prediction, Predictor, empty

IMAGE_SUFFIXES = frozenset(Image.registered_extensions())  # what a folder is searched for


@dataclass
class Result:
    """One input's outcome: a prediction, or an error phrased for a person."""

    name: str
    prediction: Prediction | NumberPrediction | None = None
    error: str | None = None


def iter_inputs(paths: Iterable[str], stdin: BinaryIO | None = None) -> Iterator[tuple[str, Path | bytes | str]]:
    """Expand command-line paths lazily into (name, Path or bytes, or an error message).

    "-" is standard input; a folder gives its image files (by name, not recursing), read
    only when their turn comes; a quoted glob is expanded here. Whatever goes wrong with one
    path (a looping link, an unreadable folder, a closed stdin) is that path's error alone.
    """
    for arg in paths:
        path = Path(arg)
        if arg == "-":
            yield "-", _read_stdin(stdin)
        elif path.is_dir():
            try:
                names = sorted(e.name for e in os.scandir(path) if _listed(e))
            except OSError as exc:
                yield arg, f"cannot read this folder: {exc.strerror or exc}"
                continue
            if not names:
                yield arg, "no image files in this folder"
            yield from ((str(path / name), path / name) for name in names)
        elif os.path.lexists(path):  # a file, or a link that will fail with its own reason when read
            yield arg, path
        elif glob.has_magic(arg):
            matches = sorted(glob.iglob(arg))
            if not matches:
                yield arg, "no files match this pattern"
            yield from iter_inputs(matches, stdin)
        else:
            yield arg, "no such file or folder"


def _listed(entry: os.DirEntry) -> bool:
    """Whether a folder entry is an image file to read (a link that loops is, and fails alone when read)."""
    if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
        return False
    try:
        return entry.is_file()
    except OSError:  # ELOOP and the like: stat fails, so let reading the file report it
        return True


def _read_stdin(stdin: BinaryIO | None) -> bytes | str:
    if stdin is None:
        return "standard input is not available"
    try:
        return stdin.read(images.MAX_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a closed file
        return f"cannot read standard input: {getattr(exc, 'strerror', None) or exc}"


def save_processed(folder: Path, name: str, prediction: Prediction | NumberPrediction, used: set) -> list[Path]:
    """Write the 28x28 image(s) the network saw as PNGs named after the input; return their paths.

    `used` holds the names written so far, so that inputs with the same stem (from two
    folders) both keep their pictures.
    """
    stem = "stdin" if name == "-" else Path(name).stem
    several = isinstance(prediction, NumberPrediction)
    pictures = [d.processed for d in prediction.digits] if several else [prediction.processed]
    paths = []
    for i, img in enumerate(x for x in pictures if x is not None):
        base = f"{stem}_{i}" if several else stem
        out, n = base, 1
        while out in used:
            n += 1
            out = f"{base}-{n}"
        used.add(out)
        paths.append(folder / f"{out}.png")
        Image.fromarray(img.numpy(), "L").save(paths[-1])
    return paths


READ_TIMEOUT_S = 10.0  # for one input path: a FIFO or device that never finishes fails alone


def read_image(source: Path | bytes | str) -> Image.Image:
    """A path (read with a size limit), raw bytes, or an error message from iter_inputs -> the image."""
    if isinstance(source, str):
        raise images.ImageError(source)
    if isinstance(source, Path):  # read here with a limit that devices and pipes cannot bypass
        try:
            source = files.read_bounded(source, images.MAX_BYTES, READ_TIMEOUT_S)
        except files.TooBig as exc:
            raise images.ImageError(str(exc)) from None
        except OSError as exc:
            raise images.ImageError(f"cannot read it: {exc.strerror or exc}") from None
    return images.open_image(source)


def predict_inputs(predictor: Predictor, inputs: Iterable[tuple[str, Path | bytes | str]], multi: bool = False,
                   batch_size: int = 64) -> Iterator[Result]:
    """Results in input order, streamed: at most `batch_size` images are held at a time."""
    pending: list[tuple[str, torch.Tensor | None, str | None]] = []

    def flush():
        found = [x for _, x, _ in pending if x is not None]
        preds = iter(predictor.predict_arrays(torch.stack(found)) if found else [])
        for name, x, error in pending:
            yield Result(name, error=error) if error else Result(name, empty() if x is None else next(preds))
        pending.clear()

    for name, source in inputs:
        try:
            img = read_image(source)
            if multi:
                yield Result(name, predictor.predict_number(img))
                continue
            pending.append((name, preprocess.to_mnist(img), None))
        except UserError as exc:  # one bad file must not stop the batch (a bug does: it is no file's fault)
            message = str(exc)
            if multi:
                yield Result(name, error=message)
                continue
            pending.append((name, None, message))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()
