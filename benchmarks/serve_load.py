"""Load benchmark of `mnist-cnn serve`: C concurrent clients, single-image requests, real HTTP on loopback.

Starts the real server (`python -m mnist_cnn serve`) in a subprocess, then for each concurrency C runs C
keep-alive clients until N requests are done or the time bound passes, and prints throughput, p50/p99
latency, the error count and the share of answers that match the MNIST label. The client is a minimal
asyncio HTTP/1.1 client, so it takes as little CPU as it can from the server it measures (both share the
machine). Payloads: "pixels" (a 28x28 JSON array, no image decoding), "png" (the MNIST digit as a 28x28
PNG, full preprocessing) and "canvas" (a 280x280 transparent PNG with dark ink, what the page sends).

    python benchmarks/serve_load.py --concurrency 1 8 32 --requests 2000 --backend torch onnx --workers 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from PIL import Image

from mnist_cnn import data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def canvas_png(digit: np.ndarray) -> bytes:
    """An MNIST digit as the page would send it: 280x280, transparent, the ink in alpha."""
    alpha = Image.fromarray(digit).resize((280, 280), Image.BILINEAR)
    rgba = Image.new("RGBA", alpha.size, (17, 17, 17, 0))
    rgba.putalpha(alpha)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    return buf.getvalue()


def png(digit: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, format="PNG")
    return buf.getvalue()


def make_requests(kind: str, digits: np.ndarray, port: int) -> list[bytes]:
    """Whole HTTP requests, built once, so the clients spend their CPU on sending and timing only."""
    out = []
    for d in digits:
        if kind == "pixels":
            body = json.dumps({"pixels": d.tolist()}, separators=(",", ":")).encode()
        else:
            raw = canvas_png(d) if kind == "canvas" else png(d)
            body = json.dumps({"image": "data:image/png;base64," + base64.b64encode(raw).decode()}).encode()
        head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        out.append(head + body)
    return out


async def one_client(port, requests, labels, counter, deadline, results):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            i = next(counter, None)
            if i is None:
                return
            k = i % len(requests)
            t0 = time.perf_counter()
            try:
                writer.write(requests[k])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                results.append((time.perf_counter() - t0, False, False))
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            ok = status == 200
            correct = ok and json.loads(body).get("digit") == labels[k]
            results.append((time.perf_counter() - t0, ok, correct))
    finally:
        writer.close()


async def load(port, requests, labels, concurrency, n, time_limit):
    counter = iter(range(n))
    results: list = []
    deadline = time.perf_counter() + time_limit
    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(port, requests, labels, counter, deadline, results)
                           for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    latency = np.array([r[0] for r in results]) * 1000
    return {"requests": len(results), "seconds": seconds, "per_s": len(results) / seconds,
            "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99)),
            "errors": sum(not r[1] for r in results),
            "correct": sum(r[2] for r in results) / max(1, len(results))}


def start_server(port: int, backend: str, model: str | None, threads: int, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mnist_cnn", "serve", "--port", str(port), "--log-level", "warning",
           "--backend", backend, "--threads", str(threads), "--workers", str(workers)]
    if model:
        cmd += ["--model", model]
    return wait_healthy(subprocess.Popen(cmd, stdout=subprocess.DEVNULL), port)


def wait_healthy(proc: subprocess.Popen, port: int) -> subprocess.Popen:
    """`proc`, once its server on loopback answers /healthz (60 s at most)."""
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the server did not start within 60 s")


def shipped_onnx(folder: str) -> str:
    """The shipped checkpoint exported to ONNX (what `mnist-cnn export` writes, without its parity report)."""
    from mnist_cnn import checkpoint, export

    model, meta = checkpoint.load_model()
    raw, out = os.path.join(folder, "raw.onnx"), os.path.join(folder, "default.onnx")
    export.to_onnx(model, raw)
    export.write_with_contract(raw, out, meta)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint for the torch backend (default: the shipped model)")
    parser.add_argument("--onnx-model", help=".onnx file for the onnx backend (default: the shipped model, exported)")
    parser.add_argument("--backend", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--threads", type=int, default=1, help="the server's intra-op threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--payload", nargs="+", default=["pixels", "png", "canvas"],
                        choices=["pixels", "png", "canvas"])
    parser.add_argument("--requests", type=int, default=2000, help="per concurrency level")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per level at most")
    args = parser.parse_args()

    x, y = data.read_split(data.acquire(log=lambda m: None), "test")
    digits, labels = x[:500].numpy(), y[:500].tolist()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the run; client and server share "
          f"them. Up to {args.requests} requests per row, "
          f"{args.time_limit:g} s at most; 'right' counts answers equal to the label (unsure ones are not).")
    print(f"{'backend':7} {'workers':>7} {'payload':7} {'C':>3} {'requests':>8} {'errors':>6} {'req/s':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'right':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        onnx = args.onnx_model or (shipped_onnx(tmp) if "onnx" in args.backend else None)
        for backend, workers in [(b, w) for b in args.backend for w in args.workers]:
            port = free_port()
            server = start_server(port, backend, onnx if backend == "onnx" else args.model, args.threads, workers)
            try:
                for kind in args.payload:
                    requests = make_requests(kind, digits, port)
                    asyncio.run(load(port, requests, labels, 4, 100, 10))  # warm-up
                    for c in args.concurrency:
                        r = asyncio.run(load(port, requests, labels, c, args.requests, args.time_limit))
                        print(f"{backend:7} {workers:>7} {kind:7} {c:>3} {r['requests']:>8} {r['errors']:>6} "
                              f"{r['per_s']:>6.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {100 * r['correct']:>5.1f}%",
                              flush=True)
            finally:
                server.terminate()
                server.wait(timeout=30)
    print(f"load average {os.getloadavg()[0]:.1f} after the run (other processes on this machine count too)")


if __name__ == "__main__":
    main()
