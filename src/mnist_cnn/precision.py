"""Mixed precision for training: which autocast dtype a run uses (`--precision`), and why.

`auto` picks bf16 where the hardware does bf16 arithmetic natively and fp32 elsewhere:
a CPU bf16 convolution is only faster than fp32 when oneDNN can use AMX or AVX-512 BF16
(without them it converts to fp32 and back, which is slower than fp32 alone). On CUDA,
`auto` picks bf16 when the GPU has it, else fp16 with a gradient scaler. Only the training
step's forward pass runs under autocast: the weights, the optimizer, evaluation, calibration
and the saved model stay fp32.

    python -c "from mnist_cnn.precision import resolve; print(resolve('auto', 'cpu'))"
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError
from .recipes import PRECISIONS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags that mean native bf16 arithmetic (AMX tiles, or AVX-512 BF16 dot products).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
REPORTED_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")  # for benchmark headers


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16: what the training step runs in
    reason: str  # why, in words (logged, and written to metrics.json)

    def autocast(self, device):
        """The context a training step's forward pass and loss run in (nothing for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=DTYPES[self.name])

    def scaler(self, device) -> torch.amp.GradScaler:
        """fp16's gradient scaler (fp16 gradients underflow without it); a pass-through otherwise.

        On fp16 its `step` reads back whether the gradients overflowed: one host sync a step,
        which bf16 (fp32's exponent range, no scaler) does not need.
        """
        return torch.amp.GradScaler(torch.device(device).type, enabled=self.name == "fp16")

    def record(self) -> dict:
        return {"precision": self.name, "precision_reason": self.reason}


def choose(requested: str, device_type: str, cpu_flags: frozenset | set = frozenset(), onednn: bool = True,
           cuda_bf16: bool = False) -> Precision:
    """The precision for a request on a device: a pure function of what the hardware reports.

    `cpu_flags` are /proc/cpuinfo's; `onednn`, whether torch has oneDNN (mkldnn) for CPU
    convolutions; `cuda_bf16`, whether the CUDA device supports bf16.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; choose from {', '.join(PRECISIONS)}")
    if requested == "fp16" and device_type != "cuda":
        raise ConfigError(f"--precision fp16 needs a CUDA GPU (it trains with a gradient scaler there); "
                          f"on {device_type} use bf16 or fp32")
    if requested != "auto":
        return Precision(requested, "requested")
    if device_type == "cuda":
        if cuda_bf16:
            return Precision("bf16", "auto: this CUDA GPU supports bf16")
        return Precision("fp16", "auto: this CUDA GPU lacks bf16, so fp16 with a gradient scaler")
    if device_type == "cpu":
        native = [f for f in BF16_FLAGS if f in cpu_flags]
        if native and onednn:
            return Precision("bf16", f"auto: the CPU has {' and '.join(native)}, which oneDNN uses for bf16")
        if native:
            return Precision("fp32", "auto: this torch build lacks oneDNN, so bf16 would be emulated")
        return Precision("fp32", "auto: the CPU has neither AMX nor AVX-512 BF16, so bf16 would be "
                                 "emulated (slower than fp32)")
    return Precision("fp32", f"auto: mixed precision is not used on {device_type}")


def cpu_flags() -> frozenset:
    """This machine's CPU flags, from /proc/cpuinfo (empty where there is none, as on macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo (else platform's best guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def resolve(requested: str, device) -> Precision:
    """`choose` for this machine and device."""
    device = torch.device(device)
    if device.type == "cuda":
        return choose(requested, "cuda", cuda_bf16=torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return choose(requested, "cpu", cpu_flags(), torch.backends.mkldnn.is_available())
    return choose(requested, device.type)
