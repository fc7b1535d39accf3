"""Load-and-abuse benchmark of `mnist-cnn serve`: good traffic mixed with the hostile inputs of issue #15.

Starts the real server (`python -m mnist_cnn serve`, capped at 8 GB of address space) on a free loopback
port. Good clients send 28x28 PNGs throughout, a monitor asks /healthz every 0.5 s, and meanwhile: the
64 x 4000x4000 PNG batch (once, then 4 at once), 4 batches of 4 such images at once (the most the batch
budget lets in), bars read as numbers, a float32 TIFF with NaN pixels, JSON nested 1000 deep, a 400-digit
pixel value, an 8.6 MB pixels body, a chunked multipart body over 10 MiB, a slow body, 65 files, a
cross-origin POST and a bad Host; then 300 idle and 20 slow connections; last, with the good traffic
stopped, numbers that run past the 10 s deadline, after which the server's CPU is read for 2 s. Everything
stays on 127.0.0.1, every step has a time bound, and the whole run takes about 75 s. Prints one
Markdown table.

    python benchmarks/serve_abuse.py
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import free_port, make_requests, wait_healthy  # noqa: E402

from mnist_cnn import data  # noqa: E402

HOST = "127.0.0.1"
RUN_LIMIT_S = 150  # the whole run, whatever happens


def proc(pid: int) -> tuple[float, float, float]:
    """(RSS MB, peak RSS MB, CPU seconds) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        mem = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return mem["VmRSS"], mem["VmHWM"], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(port: int, log) -> subprocess.Popen:
    """The real CLI's server; its log (uvicorn's warnings, any traceback) goes to the file `log`."""
    cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # noqa: E731
    server = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve", "--port", str(port), "--log-level",
                               "warning"], stdout=subprocess.DEVNULL, stderr=log, preexec_fn=cap)
    return wait_healthy(server, port)


# ------------------------------------------------------------ payloads


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def big_png(side: int = 4000) -> bytes:
    """A photo-sized RGB PNG of a 7 (~65 KB: it compresses well, and decodes to 48 MB)."""
    img = Image.new("RGB", (side, side), "white")
    s = side / 4000
    ImageDraw.Draw(img).line([(1500 * s, 1000 * s), (2500 * s, 1000 * s), (1800 * s, 3000 * s)], fill="black",
                             width=round(120 * s))
    return png_bytes(img)


def bar_png(width: int, height: int) -> bytes:
    img = Image.new("L", (width + 40, height + 40), 255)
    ImageDraw.Draw(img).rectangle([20, 20, 20 + width - 1, 20 + height - 1], fill=0)
    return png_bytes(img)


def nan_tiff() -> bytes:
    a = np.full((64, 64), 0.5, np.float32)
    a[10:50, 30:34] = np.nan
    return png_bytes(Image.fromarray(a, "F"), "TIFF")


def request(port: int, path: str, body: bytes, ctype: str, extra: str = "", host: str | None = None,
            chunked: bool = False) -> bytes:
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    return (f"POST {path} HTTP/1.1\r\nHost: {host or f'{HOST}:{port}'}\r\nContent-Type: {ctype}\r\n{length}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode() + (b"" if chunked else body)


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    parts = [b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="%d.png"\r\n'
             b"Content-Type: image/png\r\n\r\n" % i + raw + b"\r\n" for i, raw in enumerate(files)]
    return b"".join(parts) + b"--b0undary--\r\n", "multipart/form-data; boundary=b0undary"


def hostile(port: int) -> dict[str, tuple[bytes, list[bytes] | None, float]]:
    """name -> (request bytes, then body chunks or None, seconds between chunks)."""
    png, digit = big_png(), png_bytes(Image.new("L", (28, 28), 0))
    batch64, ctype = multipart([png] * 64)
    within, _ = multipart([png] * 4)
    files65, _ = multipart([digit] * 65)
    pixel = [[0] * 28 for _ in range(28)]
    pixel[14][14] = 10 ** 400
    floats = "127." + "0" * 167  # 64 images of 784 such numbers: an 8.6 MB body
    big_json = ('{"pixels": [' + ",".join(["[" + ",".join(["[" + ",".join([floats] * 28) + "]"] * 28) + "]"] * 64)
                + "]}").encode()
    head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunks = [b"%x\r\n%s\r\n" % (len(c), c) for c in [head] + [b"\0" * 2**20] * 11] + [b"0\r\n\r\n"]
    nested = b'{"pixels": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    return {
        "64 x 4000x4000 PNG batch": (request(port, "/api/predict/batch", batch64, ctype), None, 0),
        "4 x 4000x4000 PNG batch": (request(port, "/api/predict/batch", within, ctype), None, 0),
        "1000x10 bar, multi": (request(port, "/api/predict?multi=true", bar_png(1000, 10), "image/png"), None, 0),
        "1000x30 bar, multi": (request(port, "/api/predict?multi=true", bar_png(1000, 30), "image/png"), None, 0),
        "float32 TIFF with NaN": (request(port, "/api/predict", nan_tiff(), "image/tiff"), None, 0),
        "JSON nested 1000 deep": (request(port, "/api/predict", nested, "application/json"), None, 0),
        "400-digit pixel value": (request(port, "/api/predict", json.dumps({"pixels": pixel}).encode(),
                                          "application/json"), None, 0),
        "8.6 MB pixels JSON": (request(port, "/api/predict/batch", big_json, "application/json"), None, 0),
        "chunked multipart > 10 MiB": (request(port, "/api/predict", b"", ctype, chunked=True), chunks, 0),
        "slow body (1 byte/s)": (request(port, "/api/predict", b"", "image/png")
                                 .replace(b"Content-Length: 0", b"Content-Length: 100"), [b"\x89"] * 15, 1.0),
        "65 files": (request(port, "/api/predict/batch", files65, ctype), None, 0),
        "cross-origin POST": (request(port, "/api/predict", digit, "image/png", "Origin: http://evil.example\r\n"),
                              None, 0),
        "bad Host": (request(port, "/api/predict", digit, "image/png", host="evil.example"), None, 0),
    }


# ------------------------------------------------------------ clients


async def exchange(port: int, head: bytes, chunks: list[bytes] | None = None, pause: float = 0.0,
                   timeout: float = 30.0) -> int | None:
    """One request on its own connection; the response's status, or None when none came."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    except (OSError, asyncio.TimeoutError):
        return None

    async def send():
        try:
            writer.write(head)
            for part in chunks or []:
                await writer.drain()
                await asyncio.sleep(pause)
                writer.write(part)
            await writer.drain()
        except OSError:  # the server answered (413, 408) and closed before the body was all sent
            pass

    sending = asyncio.create_task(send())
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else None
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return None
    finally:
        sending.cancel()
        writer.close()


async def good_client(port, requests, stop, latencies, statuses):
    """Keep-alive single-digit PNG requests, 50 ms apart, until `stop` is set."""
    conn, i = None, 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            reader, writer = conn
            writer.write(requests[i % len(requests)])
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            status = int(head.split(b" ", 2)[1])
            length = next(int(v.split(b":")[1]) for v in head.split(b"\r\n") if v.lower().startswith(b"content-length:"))
            await asyncio.wait_for(reader.readexactly(length), 15)
            if b"connection: close" in head.lower():
                writer.close()
                conn = None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, StopIteration):
            status = None
            if conn is not None:
                conn[1].close()
            conn = None
        statuses["good"].append(status)
        if status == 200:
            latencies.append(time.perf_counter() - t0)
        i += 1
        await asyncio.sleep(0.05)
    if conn is not None:
        conn[1].close()


async def health_monitor(port, stop, answered):
    """/healthz every 0.5 s; `answered` gets the time of each 200."""
    head = f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        if await exchange(port, head, timeout=15) == 200:
            answered.append(time.monotonic())
        await asyncio.sleep(0.5)


async def idle_connections(port, n_idle=300, n_slow=20, hold_s=15):
    """300 sockets that send nothing or half a header, and 20 slowloris ones that send a header byte a second."""
    conns = []
    for i in range(n_idle + n_slow):
        try:
            conns.append(await asyncio.wait_for(asyncio.open_connection(HOST, port), 5))
        except (OSError, asyncio.TimeoutError):
            continue
        if i >= n_idle:
            conns[-1][1].write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        elif i % 2:
            conns[-1][1].write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    slow = conns[n_idle:]
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        for _, w in slow:
            if not w.is_closing():
                w.write(b"a")
        await asyncio.sleep(1)
    closed = sum(r.at_eof() or w.is_closing() for r, w in conns)
    for _, w in conns:
        w.close()
    return len(conns), closed


async def abuse(port: int, pid: int, requests: list[bytes]) -> dict:
    statuses = collections.defaultdict(list)
    latencies, answered = [], []
    stop_good, stop_health = asyncio.Event(), asyncio.Event()
    t_start = time.monotonic()
    good = [asyncio.create_task(good_client(port, requests, stop_good, latencies, statuses)) for _ in range(4)]
    health = asyncio.create_task(health_monitor(port, stop_health, answered))
    await asyncio.sleep(2)
    cases = hostile(port)

    async def send(name, times=1):
        head, chunks, pause = cases[name]
        got = await asyncio.gather(*(exchange(port, head, chunks, pause) for _ in range(times)))
        statuses[name] += got

    await send("64 x 4000x4000 PNG batch")
    await asyncio.gather(send("64 x 4000x4000 PNG batch", 4), send("4 x 4000x4000 PNG batch", 4),
                         send("slow body (1 byte/s)"),
                         *(send(name) for name in list(cases)[2:] if name != "slow body (1 byte/s)"))
    idle = await idle_connections(port)
    await asyncio.sleep(2)
    stop_good.set()
    await asyncio.gather(*good)
    # Numbers that run past the deadline (31 touching digits: ~40 s of cutting), then 2 s of the server's CPU.
    slow_number = request(port, "/api/predict?multi=true", bar_png(800, 30), "image/png")
    statuses["800x30 bar, multi (past the deadline)"] += await asyncio.gather(
        *(exchange(port, slow_number, timeout=30) for _ in range(2)))
    cpu0 = proc(pid)[2]
    await asyncio.sleep(2)
    cpu_after = proc(pid)[2] - cpu0
    await asyncio.sleep(1)
    stop_health.set()
    await health
    t_end = time.monotonic()
    gaps = np.diff([t_start, *answered, t_end])
    return {"statuses": statuses, "latencies": latencies, "idle": idle, "cpu_after": cpu_after,
            "longest_health_gap": float(gaps.max()), "seconds": t_end - t_start}


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")


def main() -> None:
    x, _ = data.read_split(data.acquire(log=lambda m: None), "test")
    port = free_port()
    load_before = os.getloadavg()[0]
    log = tempfile.TemporaryFile("w+")
    server = start_server(port, log)
    try:
        requests = make_requests("png", x[:200].numpy(), port)
        rss_idle = proc(server.pid)[0]
        r = asyncio.run(asyncio.wait_for(abuse(port, server.pid, requests), RUN_LIMIT_S))
        time.sleep(1)
        rss_after, peak, _ = proc(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    log.seek(0)
    lines = [line.rstrip() for line in log if "Exceeded concurrency limit" not in line]
    if lines:  # a traceback is a bug: show its end
        print("server log (less uvicorn's 'Exceeded concurrency limit' warnings):", *lines[-12:], "", sep="\n")
    every = [s for v in r["statuses"].values() for s in v]
    by_status = collections.Counter("none" if s is None else s for s in every)
    unexpected = sum(1 for s in every if s is not None and s >= 500 and s != 503)
    good = r["statuses"]["good"]
    lat = np.array(r["latencies"]) * 1000
    hostile_answers = "; ".join(f"{name}: " + ", ".join(f"{'none' if s is None else s}" + (f" x{n}" if n > 1 else "")
                                                        for s, n in collections.Counter(v).items())
                                for name, v in r["statuses"].items() if name != "good")
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; load average {load_before:.1f} before the run, "
          f"{os.getloadavg()[0]:.1f} after (client and server share the CPUs; other processes count too); "
          f"{r['seconds']:.0f} s of abuse.\n")
    print("| measure | value |\n|---|---|")
    print(f"| requests sent | {len(every)} ({len(good)} good, {len(every) - len(good)} hostile), plus "
          f"{r['idle'][0]} idle or slow connections ({r['idle'][1]} closed by the server within 15 s) |")
    print("| responses by status | " + ", ".join(f"{k}: {v}" for k, v in
                                               sorted(by_status.items(), key=lambda kv: str(kv[0]))) + " |")
    print(f"| unexpected 5xx (any but 503) | {unexpected} |")
    print(f"| good requests | {sum(s == 200 for s in good)} of {len(good)} answered 200; "
          f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms |")
    print(f"| hostile inputs | {hostile_answers} |")
    print(f"| server RSS | {rss_idle:.0f} MB idle before, **{peak:.0f} MB peak**, {rss_after:.0f} MB idle after |")
    print(f"| server CPU in the 2 s after the last timeout | {r['cpu_after']:.2f} s |")
    print(f"| /healthz answered within 15 s throughout | {'yes' if r['longest_health_gap'] <= 15 else 'NO'} "
          f"(longest gap between answers {r['longest_health_gap']:.1f} s) |")


if __name__ == "__main__":
    main()
