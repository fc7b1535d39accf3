"""Bring your notebook model: a `torch.save(model.state_dict())` file becomes a self-describing checkpoint.

A state_dict holds weights only, not the architecture, the normalization its inputs had
or the class names, so it cannot be used as `--model`. `convert` reads it with
`torch.load(weights_only=True)` (tensors only: no pickled code runs), loads it into the
network of the recipe named by `--arch`, and writes a checkpoint carrying that recipe's
architecture, normalization and config. The written file is loaded back and must give
the same logits as the network the weights were loaded into.

    mnist-cnn convert notebook_model.pt --arch seed --out notebook.safetensors
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import UserError

# --arch: a recipe whose network has the same name. The seed notebook's layers are named as
# ours (conv1, conv2, fc1, fc2, fc3), and so are pytorch/examples' (conv1, conv2, fc1, fc2),
# so their state_dict keys map one to one.
ARCHS = {
    "seed": "the seed notebook's Net (inputs from ToTensor() alone, in [0, 1])",
    "reference": "the pytorch/examples mnist Net (inputs normalized by 0.1307, 0.3081)",
}
# Key prefixes that wrappers add when a wrapped model's state_dict is saved.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # (Distributed)DataParallel, torch.compile


def read_state_dict(path: Path) -> dict:
    """The tensors of a `torch.save(model.state_dict())` file, read without running pickled code."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UserError(f"{path}: holds Python objects besides tensors (a whole model saved with "
                             "torch.save(model)?), and they are not unpickled, since that can run any code; "
                             "save the weights alone: torch.save(model.state_dict(), PATH)") from None
        raise UserError(f"{path}: not a torch.save file ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, ValueError) as exc:  # truncated zip, empty file
        raise UserError(f"{path}: not a readable torch.save file ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # {"state_dict": ..., "epoch": ...}
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state_dict (names -> tensors)")
    return {_unwrapped_key(k): v for k, v in state.items()}


def _unwrapped_key(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def convert(src: Path, out: Path, arch: str = "seed") -> dict:
    """Write `src`'s weights as a checkpoint of `arch` at `out`; return what was done and the logit check."""
    import torch

    from . import checkpoint, models, validate
    from .recipes import get_config

    if arch not in ARCHS:
        raise UserError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: is the input file; choose another --out")
    state = read_state_dict(src)
    cfg = get_config(arch)
    model = models.build_model(cfg.model, **cfg.model_args).eval()
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [f"{k} is {list(state[k].shape)}, needs {list(expected[k].shape)}"
             for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        found = [f"missing {', '.join(missing)}"] * bool(missing) + \
                [f"unexpected {', '.join(unexpected)}"] * bool(unexpected) + sorted(wrong)
        raise UserError(f"{src}: not the weights of --arch {arch}, {ARCHS[arch]}: {'; '.join(found)}"[:400])
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    meta = checkpoint.model_metadata(cfg)  # the recipe's architecture, normalization, classes and config
    meta["converted_from"] = {"file": src.name, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    validate.check_works(model, meta)  # NaN weights: refused before anything is written
    checkpoint.save_model(out, model, meta)
    loaded, _ = checkpoint.load_model(out)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = float((loaded(x) - model(x)).abs().max())
    return {"out": out, "arch": arch, "parameters": models.count_parameters(model), "max_abs_logit_diff": diff}
