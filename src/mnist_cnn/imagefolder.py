"""Folders of labelled digits, DIR/<digit>/<name>.png: the layout torchvision's `ImageFolder` reads.

`ImageFolder` sorts its class folders, so folders 0..9 are classes 0..9. Every image is brought into
MNIST's form by the one preprocessing (`preprocess.to_mnist`), as `mnist-cnn predict` would; the
ones that cannot be read, or hold no ink, are reported, never guessed at. `import_folder` adds a
folder to the samples store, `export_folder` writes the store out again (originals, 28x28s, or both),
and `load_labelled` reads a folder's (or a store's) digits into memory for `train --samples` and
`finetune`.

    mnist-cnn samples import my-digits/ && mnist-cnn samples export /tmp/out --images both
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import images, preprocess
from .errors import UserError
from .files import atomic_write
from .samples import Store, digest, encode_original, mnist_png

CLASSES = tuple(str(d) for d in range(10))  # the folder names, in ImageFolder's (sorted) order
# torchvision's IMG_EXTENSIONS: what ImageFolder would read
SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGES = ("original", "28x28", "both")  # what `export` writes


@dataclass
class FolderDigits:
    """A folder's digits in MNIST's form, with what could not be used and why."""

    x: torch.Tensor  # (N, 28, 28) uint8
    y: torch.Tensor  # (N,) int64
    names: list[str]  # DIGIT/FILE of each, relative to the folder
    originals: list[bytes] = field(repr=False)  # each image as a PNG (encode_original); [] unless asked for
    failed: list[tuple[str, str]]  # (DIGIT/FILE, why)


def scan(folder: Path) -> tuple[list[tuple[Path, int]], list[tuple[str, str]]]:
    """(image files with their labels, things skipped with the reason), in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (a labelled folder holds 0/ ... 9/, one per digit, as "
                        "torchvision's ImageFolder reads)")
    found, skipped = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.name not in CLASSES or not entry.is_dir():
            skipped.append((entry.name, "not a digit's folder (0 to 9)"))
            continue
        for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
            name = f"{entry.name}/{item.name}"
            if item.name.startswith("."):
                continue
            if not item.is_file() or os.path.splitext(item.name)[1].lower() not in SUFFIXES:
                skipped.append((name, f"not an image file ({', '.join(SUFFIXES)})"))
                continue
            found.append((Path(item.path), int(entry.name)))
    if not found and not skipped:
        raise UserError(f"{folder}: no images; put each digit's images in its own folder, 0/ to 9/")
    return found, skipped


def read_folder(folder: Path, originals: bool = False) -> FolderDigits:
    """Every image of a labelled folder through the preprocessing (with its PNG, when `originals`)."""
    found, failed = scan(folder)
    xs, ys, names, pngs = [], [], [], []
    for path, label in found:
        name = f"{label}/{path.name}"
        try:
            img = images.open_image(path)
            x = preprocess.to_mnist(img)
        except UserError as exc:  # this file's problem alone (an unreadable, corrupt or huge image)
            failed.append((name, str(exc)))
            continue
        if x is None:
            failed.append((name, "no ink found"))
            continue
        xs.append(x)
        ys.append(label)
        names.append(name)
        if originals:
            pngs.append(encode_original(img))
    x = torch.stack(xs) if xs else torch.empty(0, 28, 28, dtype=torch.uint8)
    return FolderDigits(x, torch.tensor(ys, dtype=torch.int64), names, pngs, failed)


@dataclass
class ImportReport:
    added: list[int]  # the new samples' ids
    duplicates: int  # images whose digit was in the store already, with the same label
    failed: list[tuple[str, str]]  # (DIGIT/FILE, why)


def import_folder(store: Store, folder: Path, predictor=None) -> ImportReport:
    """Add a labelled folder's digits to the store in one transaction; `predictor` records the model's answers."""
    digits = read_folder(folder, originals=True)
    preds = predictor.predict_arrays(digits.x) if predictor is not None and len(digits.x) else [None] * len(digits.x)
    rows = [dict(mnist=x, label=int(y), original=png, source="import", name=name,
                 predicted=None if p is None else p.topk[0][0], probability=None if p is None else p.probability)
            for x, y, png, name, p in zip(digits.x, digits.y, digits.originals, digits.names, preds)]
    ids = store.add_many(rows)
    return ImportReport([i for i, dup in ids if not dup], sum(dup for _, dup in ids), digits.failed)


def export_folder(store: Store, folder: Path, images: str = "original") -> dict[str, int]:
    """Write the store as labelled folders: FOLDER/<digit>/<id>.png; with "both", FOLDER/original/... and
    FOLDER/28x28/.... Returns {what: files written}. Existing files of the same name are replaced."""
    if images not in IMAGES:
        raise UserError(f"export writes {' or '.join(IMAGES)}, not {images!r}")
    kinds = ("original", "28x28") if images == "both" else (images,)
    folder, written = Path(folder), dict.fromkeys(kinds, 0)
    for sample in store.rows(originals="original" in kinds):
        for kind in kinds:
            where = folder / kind if images == "both" else folder
            raw = sample.original if kind == "original" else mnist_png(sample.mnist)
            atomic_write(where / str(sample.label) / f"{sample.id}.png", raw)
            written[kind] += 1
    return written


@dataclass
class Labelled:
    """A person's labelled digits, from a store or a folder (`load_labelled`): what `train --samples` and
    `finetune` learn from."""

    x: torch.Tensor = field(repr=False)  # (N, 28, 28) uint8
    y: torch.Tensor = field(repr=False)  # (N,) int64
    source: str
    failed: list = field(default_factory=list)  # (DIGIT/FILE, why) of a folder's unreadable images

    def __len__(self) -> int:
        return len(self.y)

    def record(self) -> dict:
        """What a checkpoint says it learnt from: how many, their hash (order-free), per label, where from."""
        return {"count": len(self), "sha256": digest(self.x, self.y),
                "per_label": torch.bincount(self.y, minlength=10).tolist(), "source": self.source}


def load_labelled(source: str | Path) -> Labelled:
    """A person's labelled digits from a samples.db or a labelled folder (through the preprocessing)."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = read_folder(path)
        labelled = Labelled(found.x, found.y, str(path), found.failed)
    else:
        with Store(path, create=False) as store:
            labelled = Labelled(*store.tensors(), str(path))
    if not len(labelled):
        raise UserError(f"{path}: no labelled digits to learn from"
                        + (f" ({len(labelled.failed)} images could not be read)" if labelled.failed else ""))
    return labelled
