"""One request cannot hold the server: its memory and CPU are bounded, and its work stops when it is answered.

The memory and CPU checks run a real server in a subprocess (capped at 6 GB of address space) and read its
/proc entries; benchmarks/serve_abuse.py measures the issue's full-size cases.
"""

from __future__ import annotations

import asyncio
import io
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request

import httpx
import pytest
from PIL import Image, ImageDraw

from mnist_cnn import images, segment, serve
from mnist_cnn.cli import main
from mnist_cnn.predict import Predictor
from test_serve import TestClient, png_header

SERVER = """
import sys, uvicorn
from mnist_cnn import serve
limits = serve.Limits(work_timeout_s=float(sys.argv[2]))
app = serve.create_app(serve.load_predictor(reader=sys.argv[3] if len(sys.argv) > 3 else "shipped"), limits=limits)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", **serve.server_options(limits))
"""


def bar_png(width: int, height: int) -> bytes:
    """A black bar on white paper: read as a number, it is many touching digits (a costly cut)."""
    img = Image.new("L", (width + 40, height + 40), 255)
    ImageDraw.Draw(img).rectangle([20, 20, 20 + width - 1, 20 + height - 1], fill=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def big_png(side: int) -> bytes:
    """A large RGB photo-sized PNG of a 7 that compresses to a few tens of KB (the issue's case: 4000 px)."""
    img = Image.new("RGB", (side, side), "white")
    s = side / 4000
    ImageDraw.Draw(img).line([(1500 * s, 1000 * s), (2500 * s, 1000 * s), (1800 * s, 3000 * s)], fill="black",
                             width=round(120 * s))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_path(None)


@pytest.fixture
def server():
    """Start a real server subprocess on a free loopback port: `server(work_timeout_s)` -> (url, pid)."""
    procs = []

    def start(work_timeout_s: float = 10.0, reader: str = "shipped"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # noqa: E731
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(work_timeout_s), reader], preexec_fn=cap)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).read()
                return url, proc.pid
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def proc_status(pid: int) -> dict:
    """VmRSS and VmHWM (peak RSS) of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_too_many_digits_gets_422_and_a_one_line_cli_error(predictor, tmp_path, capsys):
    """A 1000x10 bar read as a number was 118 digits and took 209 s; now it is refused at once."""
    raw = bar_png(1000, 10)
    with _client(predictor) as c:
        t0 = time.monotonic()
        r = c.post("/api/predict?multi=true", content=raw, headers={"content-type": "image/png"})
    assert r.status_code == 422 and f"more than {segment.MAX_DIGITS} digits" in r.json()["detail"]
    assert time.monotonic() - t0 < 5
    (tmp_path / "bar.png").write_bytes(raw)
    assert main(["predict", str(tmp_path / "bar.png"), "--multi"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{tmp_path / 'bar.png'}: error: more than {segment.MAX_DIGITS} digits") and len(err) == 2


def _client(predictor, **limits):
    return TestClient(serve.create_app(predictor, limits=serve.Limits(**limits)))


def test_predict_number_stops_at_its_deadline(predictor):
    img = images.decode(bar_png(600, 30))  # about 23 touching digits: many seconds of cutting
    cutting = Predictor(predictor.model, predictor.meta, reader="segment")
    t0 = time.monotonic()
    with pytest.raises(segment.OutOfTime):
        cutting.predict_number(img, deadline=time.monotonic() + 0.3)
    assert time.monotonic() - t0 < 1.5
    t0 = time.monotonic()  # the sequence reader reads the whole bar in one pass: well within the deadline
    predictor.predict_number(img, deadline=time.monotonic() + 1.0)
    assert time.monotonic() - t0 < 1.0


def test_a_batch_over_its_pixel_budget_gets_413_before_any_decoding(predictor, monkeypatch):
    decoded = []

    def decode(raw):
        decoded.append(raw)
        raise images.ImageError("decoded")
    monkeypatch.setattr(images, "decode", decode)
    files = [("file", (f"{i}.png", png_header(4000, 4000), "image/png")) for i in range(5)]  # 80 MP in all
    with _client(predictor) as c:
        r = c.post("/api/predict/batch", files=files)
    assert r.status_code == 413 and "80,000,000 pixels together; the limit is 64,000,000" in r.json()["detail"]
    assert decoded == []


@pytest.mark.slow  # waits out a timeout, then watches the CPU
def test_work_stops_when_the_request_times_out(server):
    """The thread used to run on for tens of seconds after the 503 (27 s of CPU for a 1000x30 bar). The
    segmentation route's cuts are the costly work (the sequence reader reads the bar in one pass)."""
    url, pid = server(work_timeout_s=1.0, reader="segment")
    r = httpx.post(url + "/api/predict?multi=true", content=bar_png(600, 30), headers={"content-type": "image/png"},
                   timeout=30)
    assert r.status_code == 503 and "took over 1 s" in r.json()["detail"]
    before = cpu_seconds(pid)
    time.sleep(2)
    burned = cpu_seconds(pid) - before
    assert burned < 0.5, f"the server burned {burned:.2f} s of CPU in the 2 s after its 503"


@pytest.mark.slow  # decodes 64 four-megapixel images
def test_memory_is_bounded_for_many_large_images_at_once(server):
    """The issue's case, scaled to fit the tests: 64 images of 4000x4000 at once took 9.2 GB. Here 4 batches at
    once, each of 16 images of 2000x2000 (within the batch budget): the images decode a few at a time."""
    url, pid = server()
    raw = big_png(2000)
    files = [("file", (f"{i}.png", raw, "image/png")) for i in range(16)]
    idle = proc_status(pid)["VmRSS"]

    async def burst():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(c.post(url + "/api/predict/batch", files=files) for _ in range(4)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert all(x["digit"] == 7 for r in responses for x in r.json()["results"])
    peak = proc_status(pid)["VmHWM"] - idle
    assert peak < 300, f"the server's memory grew by {peak:.0f} MB for 4 batches of 16 four-megapixel images"
    big = [("file", (f"{i}.png", raw, "image/png")) for i in range(64)]  # 256 MP: over the batch budget
    r = httpx.post(url + "/api/predict/batch", files=big, timeout=60)
    assert r.status_code == 413 and proc_status(pid)["VmHWM"] - idle < 300
