"""Inference speed of each backend, as a ratio of eager PyTorch, for the seed and the default network.

Measures images/s at batch 1, 64 and 1024 and the median (p50) latency of one image for:
eager PyTorch fp32 (`no_grad`); `inference_mode` + `channels_last`; the same under
`torch.compile` (where it compiles); ONNX Runtime fp32; ONNX Runtime int8 (static, QDQ).
The seed network has random weights (speed does not depend on their values); the
default network is the model shipped in the package. All cases run in one process,
one after another, on the same input images, and the table prints as Markdown.

    python benchmarks/inference.py                 # about 2 minutes on a 2-core CPU

Threads: by default each library's own (torch: OMP_NUM_THREADS, else one per core;
ONNX Runtime: one per core), except that ONNX Runtime gets `--threads-b1` (default 1)
intra-op threads at batch 1. `--threads N` gives both libraries N threads everywhere:
on a machine shared with other jobs, `--threads 1` is the fair and stable comparison
(idle OpenMP threads spin at barriers, and a descheduled one stalls the others).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mnist_cnn import checkpoint, data, export, models
from mnist_cnn.augment import to_float
from mnist_cnn.recipes import SeedConfig, normalization

BATCHES = (1, 64, 1024)


def timed_calls(fn, x: torch.Tensor, seconds: float, min_calls: int = 5) -> list[float]:
    """Seconds taken by each call of fn(x), after one warm-up call, for about `seconds` in all."""
    fn(x)
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times


def measure(fn, images: torch.Tensor, seconds: float) -> dict:
    """{batch: images/s} for each of BATCHES, plus 'p50_ms' at batch 1.

    Images/s divide the batch by the median call, not the mean: on a shared machine
    a few calls get descheduled, and the median ignores them.
    """
    result = {}
    for batch in BATCHES:
        x = images[:batch]
        times = timed_calls(fn, x, seconds)
        result[batch] = batch / statistics.median(times)
        if batch == 1:
            result["p50_ms"] = statistics.median(times) * 1e3
    return result


def eager(model):
    def run(x):
        with torch.no_grad():
            return model(x)
    return run


def fast_torch(model, compile_: bool):
    """inference_mode + channels_last (NHWC convs), optionally under torch.compile. Changes `model`."""
    model = model.to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)

    def run(x):
        with torch.inference_mode():
            return model(x.contiguous(memory_format=torch.channels_last))
    return run


def onnx_files(model, meta, folder: Path, train_x: torch.Tensor) -> tuple[Path, Path]:
    fp32, int8 = folder / f"{meta['arch']}.onnx", folder / f"{meta['arch']}.int8.onnx"
    export.to_onnx(model, fp32)
    export.quantize_int8(fp32, int8, to_float(train_x[:500], meta["mean"], meta["std"]))
    return fp32, int8


def bench_network(name: str, model, meta, test_x, train_x, seconds: float, compile_: bool, threads_b1: int,
                  threads: int | None) -> dict:
    images = to_float(test_x[:max(BATCHES)], meta["mean"], meta["std"])
    rows = {"eager fp32": measure(eager(model), images, seconds),
            "inference_mode + channels_last": measure(fast_torch(copy.deepcopy(model), False), images, seconds)}
    if compile_:
        t0 = time.perf_counter()
        try:
            rows["+ torch.compile"] = measure(fast_torch(copy.deepcopy(model), True), images, seconds)
            rows["+ torch.compile"]["note"] = f"includes {time.perf_counter() - t0:.0f} s of compiling"
        except Exception as exc:  # inductor needs a C++ toolchain; report, don't crash
            rows["+ torch.compile"] = {"note": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = onnx_files(model, meta, Path(tmp), train_x)
        for label, path in (("ONNX Runtime fp32", fp32), ("ONNX Runtime int8", int8)):
            # One image gains nothing from splitting work across threads, but pays the hand-offs.
            single = export.OnnxModel(export.session(path, threads=threads_b1))
            multi = export.OnnxModel(export.session(path, threads=threads))
            rows[label] = {**measure(multi, images, seconds), **_batch1(measure(single, images[:1], seconds))}
    return {"network": name, "params": models.count_parameters(model), "rows": rows}


def _batch1(result: dict) -> dict:
    return {1: result[1], "p50_ms": result["p50_ms"]}


def table(results: list[dict]) -> str:
    lines = ["| network | backend | img/s @1 | img/s @64 | img/s @1024 | p50 ms @1 |",
             "|---|---|---|---|---|---|"]
    for res in results:
        base = res["rows"]["eager fp32"]
        for label, row in res["rows"].items():
            cells = []
            for key in (*BATCHES, "p50_ms"):
                if key not in row:
                    cells.append("n/a")
                    continue
                ratio = base[key] / row[key] if key == "p50_ms" else row[key] / base[key]
                cells.append(f"{row[key]:,.0f} ({ratio:.1f}x)" if key != "p50_ms" else f"{row[key]:.3f} ({ratio:.1f}x)")
            note = f" ({row['note']})" if "note" in row else ""
            lines.append(f"| {res['network']}, {res['params']:,} params | {label}{note} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    import onnxruntime

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    cpu = f"{names[0] if names else platform.processor()}, {len(names) or '?'} logical CPUs"
    load = f" (1-minute load average {os.getloadavg()[0]:.1f} at the start)" if hasattr(os, "getloadavg") else ""
    return (f"{cpu}{load}; {torch.get_num_threads()} torch thread(s); python {platform.python_version()}, "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent on each measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--threads-b1", type=int, default=1, help="ONNX Runtime intra-op threads at batch 1")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: their own defaults)")
    parser.add_argument("--model", type=Path, help="the 'default' network's checkpoint (default: shipped model)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        args.threads_b1 = min(args.threads_b1, args.threads)
    header = machine()  # before we load the machine ourselves
    folder = data.acquire()
    test_x, _ = data.read_split(folder, "test")
    train_x, _ = data.read_split(folder, "train")
    torch.manual_seed(0)
    seed = models.build_model("seed").eval()
    seed_meta = checkpoint.make_metadata("seed", {}, *normalization(SeedConfig()), config={"recipe": "seed"})
    default, default_meta = checkpoint.load_model(args.model)
    t0 = time.perf_counter()
    results = [bench_network(name, model, meta, test_x, train_x, args.seconds, not args.no_compile, args.threads_b1,
                               args.threads)
               for name, model, meta in (("seed, random weights", seed, seed_meta),
                                         (f"default: shipped {default_meta['arch']}", default, default_meta))]
    print(f"machine: {header}")
    print(f"ratios are against eager fp32 (higher is better; for p50, eager's latency / this latency); "
          f"ONNX Runtime at batch 1 uses {args.threads_b1} intra-op thread(s), else "
          f"{args.threads or 'one per core'}; "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(table(results))


if __name__ == "__main__":
    main()
