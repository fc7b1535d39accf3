"""Self-describing checkpoints: safetensors weights plus JSON metadata in one file.

The metadata (format version, architecture and arguments, normalization, class
names, recipe config, metrics, data hashes, library versions, git commit) lives
in the safetensors header, so loading never runs pickle and one `load_model`
serves evaluate, predict, serve and export. A training run's resumable state (weights, EMA,
optimizer, history) is a checkpoint too, written atomically after every epoch.

    python -c "from mnist_cnn.checkpoint import load_model; print(load_model()[1]['metrics'])"
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import models, runs, validate
from .data import CLASSES, SHA256
from .errors import UserError
from .files import atomic_write, write_json
from .recipes import normalization

FORMAT_VERSION = 1
META_KEY = "mnist_cnn"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "train_state.safetensors"
HISTORY_NAME = "history.json"


class CheckpointError(UserError, RuntimeError):
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


def member_specs(cfg, n: int) -> list[dict]:
    """`models.Ensemble`'s description of n members of the recipe's architecture."""
    return [{"arch": cfg.model, "arch_args": cfg.model_args}] * n


def model_metadata(cfg, metrics: dict | None = None, temperature: float = 1.0) -> dict:
    """The metadata of a model trained by the recipe config `cfg`."""
    mean, std = normalization(cfg)
    arch, args = cfg.model, cfg.model_args
    if cfg.ensemble > 1:
        arch, args = "ensemble", {"members": member_specs(cfg, cfg.ensemble)}
    return make_metadata(arch, args, mean, std, dataclasses.asdict(cfg), metrics, temperature)


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
    """Write the network inside `model`'s wrappers; a `Calibrated` wrapper's temperature goes into the metadata.

    So a model that `load_model` gave (wrapped when calibrated) saves and loads again unchanged.
    """
    net, temperature = models.unwrap(model)
    if temperature != 1.0:
        meta = {**meta, "temperature": temperature}
    save_tensors(path, net.state_dict(), meta)


def load_model(path: Path | str | None = None, device="cpu") -> tuple[torch.nn.Module, dict]:
    """Build the checkpoint's architecture, load its weights, return (eval-mode model, metadata).

    `path` may be a checkpoint file or a run folder; None means the shipped model, and "latest"
    the newest finished run under runs/ (`runs.resolve`). A checkpoint with a "temperature" comes back wrapped in `models.Calibrated`. Everything is
    checked before it is used (metadata types and sizes, the architecture's tensor shapes
    against the file's header, finite weights and outputs), so a file that loads also works.
    """
    path = runs.resolve(path) if path else default_model_path()
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
        # Built on the meta device, then given empty memory: its initial weights would be overwritten,
        # and drawing them would move the caller's global random generator.
        with torch.device("meta"):
            model = models.build_model(meta["arch"], **meta.get("arch_args", {}))
        model = model.to_empty(device="cpu")
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


# ------------------------------------------------------------- training state


def save_train_state(run_dir: Path, cfg, model, optimizer, ema, history: dict, epochs_done: int,
                     weights_meta: dict | None = None, rng: torch.Generator | None = None) -> None:
    """Everything a resume needs, in one atomic file: weights, EMA, optimizer state, history and, when
    given, the generator `rng` that draws the training data.

    The history travels inside train_state (history.json is a readable copy written after it):
    a kill between two separate files would otherwise leave a state one epoch ahead of its history.
    model.safetensors (the final weights so far, EMA when enabled, with `weights_meta` or the classifier's
    metadata) is written first. `epochs_done` counts what the job counts: epochs, or the reader's steps.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_model(run_dir / WEIGHTS_NAME, ema or model, weights_meta or model_metadata(cfg))
    tensors = {f"model.{k}": v for k, v in models.unwrap(model)[0].state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    if rng is not None:
        tensors["rng.state"] = rng.get_state()
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            if value is not None:  # SGD without momentum keeps a None buffer
                tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
    meta = {"epochs_done": epochs_done, "param_groups": opt["param_groups"], "config": dataclasses.asdict(cfg),
            "history": history}
    save_tensors(run_dir / STATE_NAME, tensors, meta)
    write_json(run_dir / HISTORY_NAME, history)


def load_train_state(run_dir: Path, model, optimizer, ema,
                     rng: torch.Generator | None = None) -> tuple[int, dict, dict]:
    """Restore weights, EMA, optimizer state (and `rng`'s) in place; return (epochs done, history, the config then)."""
    run_dir = Path(run_dir)
    tensors, meta = load_tensors(run_dir / STATE_NAME)
    if rng is not None:
        rng.set_state(tensors["rng.state"])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    done = meta["epochs_done"]
    if "history" in meta:
        return done, meta["history"], meta.get("config", {})
    # A state written before the history moved inside it: keep only the epochs the state has.
    old = json.loads((run_dir / HISTORY_NAME).read_text())
    return done, {"steps": [s for s in old["steps"] if s["epoch"] < done],
                  "epochs": [e for e in old["epochs"] if e["epoch"] <= done]}, meta.get("config", {})
