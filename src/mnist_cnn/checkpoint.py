"""Self-describing checkpoints: safetensors weights plus JSON metadata in one file.

The metadata (format version, architecture and arguments, normalization, class
names, recipe config, metrics, data hashes, library versions, git commit) lives
in the safetensors header, so loading never runs pickle and one `load_model`
serves evaluate, predict, serve and export.

    python -c "from mnist_cnn.checkpoint import load_model; print(load_model()[1]['metrics'])"
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import models, validate
from .data import CLASSES, SHA256, atomic_write

FORMAT_VERSION = 1
META_KEY = "mnist_cnn"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason phrased for a person."""


def default_model_path() -> Path:
    """The small trained model shipped inside the package."""
    return Path(str(resources.files("mnist_cnn") / "weights" / "default.safetensors"))


def library_versions() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def make_metadata(model_name: str, model_args: dict, mean: float, std: float, config: dict,
                  metrics: dict | None = None, temperature: float = 1.0) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "arch": model_name,
        "arch_args": model_args,
        "mean": mean,
        "std": std,
        "temperature": temperature,  # logits are divided by it (fitted on the validation split; 1: none)
        "classes": list(CLASSES),
        "input": "(B, 1, 28, 28) float32: white ink on black, uint8 / 255, then (x - mean) / std",
        "config": config,
        "metrics": metrics or {},
        "data_sha256": dict(SHA256),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write tensors with a JSON document in the safetensors header."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(Path(path), st_save(tensors, metadata={META_KEY: json.dumps(meta)}))


def read_header(raw: bytes, path: Path) -> tuple[dict[str, tuple[int, ...]], dict]:
    """A safetensors file's tensor shapes and its "__metadata__" strings, read without loading any tensor."""
    # The header is an 8-byte little-endian length, then JSON: {name: {dtype, shape, offsets}, "__metadata__"}.
    header_len = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8:8 + header_len]) if 8 + header_len <= len(raw) else None
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        if Path(path).suffix.lower() in (".pt", ".pth") or raw[:4] == b"PK\x03\x04" or raw[:2] == b"\x80\x02":
            # torch.save writes a zip (or, before torch 1.6, a pickle): most likely a bare state_dict
            raise CheckpointError(f"{path}: a torch.save file, not a mnist-cnn checkpoint; for a state_dict of the "
                                  f"seed notebook's network: mnist-cnn convert {path} --arch seed --out model.safetensors")
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?)")
    strings = header.pop("__metadata__", None) or {}
    shapes = {name: tuple(info.get("shape", ())) for name, info in header.items()}
    return shapes, strings if isinstance(strings, dict) else {}


def parse_metadata(strings: dict, path: Path):
    if META_KEY not in strings:
        raise CheckpointError(f"{path}: has no {META_KEY!r} metadata; it was not written by mnist-cnn")
    try:
        return json.loads(strings[META_KEY])
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past Python's stack
        raise CheckpointError(f"{path}: metadata is not valid JSON: {str(exc)[:80]}") from None


def read_file(path: Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path.read_bytes()


def decode_tensors(raw: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(raw)
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?): {exc}") from None


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, our JSON metadata) of a file written by `save_tensors`."""
    path = Path(path)
    raw = read_file(path)
    _, strings = read_header(raw, path)
    meta = parse_metadata(strings, path)
    return decode_tensors(raw, path), meta


def save_model(path: Path, model: torch.nn.Module, meta: dict) -> None:
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    save_tensors(path, model.state_dict(), meta)


def load_model(path: Path | str | None = None, device="cpu") -> tuple[torch.nn.Module, dict]:
    """Build the checkpoint's architecture, load its weights, return (eval-mode model, metadata).

    `path` may be a checkpoint file or a run folder; None means the shipped model. A
    checkpoint with a "temperature" comes back wrapped in `models.Calibrated`. Everything is
    checked before it is used (metadata types and sizes, the architecture's tensor shapes
    against the file's header, finite weights and outputs), so a file that loads also works.
    """
    path = Path(path) if path else default_model_path()
    if path.is_dir():
        path = path / WEIGHTS_NAME
    raw = read_file(path)
    shapes, strings = read_header(raw, path)
    meta = parse_metadata(strings, path)
    try:
        validate.check_metadata(meta, FORMAT_VERSION)
        validate.check_shapes(meta, shapes)  # before any real allocation: sizes come from the file
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    tensors = decode_tensors(raw, path)
    try:
        model = models.build_model(meta["arch"], **meta.get("arch_args", {}))
        model.load_state_dict(tensors, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not match architecture {meta.get('arch')!r}: "
                              f"{str(exc).splitlines()[0]}") from None
    model = models.with_temperature(model, meta.get("temperature", 1.0)).eval()
    try:
        validate.check_works(model, meta)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model.to(device), meta
