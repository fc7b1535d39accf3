"""The REST API through the app (httpx): every endpoint, every bad input, and the same answers as the CLI path."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from mnist_cnn import images, serve
from mnist_cnn.cli import main
from mnist_cnn.predict import Predictor

with warnings.catch_warnings():  # Starlette 1.x nudges towards httpx2; the [dev] extra ships httpx
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_path(None, min_confidence=0.5)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(serve.create_app(predictor)) as c:
        yield c


@pytest.fixture(scope="module")
def digits(test_split, predictor):
    """Test digits the shipped model gets right as raw MNIST, with labels: the oracle for the image paths."""
    x, y = test_split[0][:60], test_split[1][:60]
    right = [i for i, p in enumerate(predictor.predict_arrays(x)) if p.digit == int(y[i])]
    return x[right[:12]], y[right[:12]]


def paper_png(digit: torch.Tensor, scale: int = 6, mode: str = "L") -> bytes:
    """An MNIST digit as a person's image: dark ink on light paper, enlarged, with a margin."""
    ink = Image.fromarray(255 - digit.numpy()).resize((28 * scale, 28 * scale), Image.BILINEAR)
    page = Image.new("L", (40 * scale, 36 * scale), 255)
    page.paste(ink, (7 * scale, 4 * scale))
    buf = io.BytesIO()
    page.convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def from_data_url(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a huge size in its header (no pixel data): checks must not decode it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + body)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ------------------------------------------------------------ endpoints


def test_health_page_and_static(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and len(asset.text) > 500
    # Everything the page needs comes from the package: no CDN, no other origin.
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/predict", "/api/predict/batch", "/api/model", "/healthz"} <= set(paths)


def test_docs_work_offline(client):
    for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        html = client.get(page)
        assert html.status_code == 200
        assert "http://" not in html.text and "https://" not in html.text  # nothing from a CDN
        for asset in assets:
            assert f"/docs-assets/{asset}" in html.text
            response = client.get(f"/docs-assets/{asset}")
            assert response.status_code == 200 and len(response.content) > 100_000


def test_model_endpoint_reports_the_loaded_checkpoint(client, predictor):
    info = client.get("/api/model").json()
    assert info["arch"] == predictor.meta["arch"] and info["backend"] == "torch"
    assert info["test_accuracy"] == predictor.meta["metrics"]["test_accuracy"]
    assert info["classes"] == predictor.meta["classes"] and info["limits"]["max_batch"] > 1
    # Which forward measured the figure, and which one serves: the same (the shipped recipe's TTA).
    assert info["test_forward"] == info["forward"] == "with TTA (5 shifts)"


def test_image_upload_matches_the_cli_path(client, predictor, digits):
    """Multipart, data URL and raw-body uploads give what `predict` gives, and show the same 28x28."""
    x, y = digits
    for digit, label in zip(x[:6], y[:6]):
        raw = paper_png(digit)
        expect = predictor.predict_image(images.decode(raw))
        answers = [client.post("/api/predict", files={"file": ("d.png", raw, "image/png")}),
                   client.post("/api/predict", json={"image": data_url(raw)}),
                   client.post("/api/predict", content=raw, headers={"content-type": "image/png"})]
        for r in answers:
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["digit"] == expect.digit == int(label) and body["status"] == "ok"
            np.testing.assert_allclose(body["probabilities"], expect.probabilities, atol=1e-6)
            seen = from_data_url(body["processed_png"])
            assert seen.shape == (28, 28) and np.array_equal(seen, expect.processed.numpy())


def test_pixels_go_to_the_network_as_they_are(client, predictor, digits):
    x, y = digits
    expect = predictor.predict_arrays(x)
    for digit, e in zip(x, expect):
        body = client.post("/api/predict", json={"pixels": digit.tolist()}).json()
        assert body["digit"] == e.digit
        np.testing.assert_allclose(body["probabilities"], e.probabilities, atol=1e-6)
        assert np.array_equal(from_data_url(body["processed_png"]), digit.numpy())


def test_empty_canvas_is_empty_not_a_guess(client):
    buf = io.BytesIO()
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(buf, format="PNG")
    body = client.post("/api/predict", files={"file": ("c.png", buf.getvalue(), "image/png")}).json()
    assert body["status"] == "empty" and body["digit"] is None and body["processed_png"] is None


def test_unsure_below_min_confidence(predictor, digits, test_split):
    """Blends of two digits make low-confidence inputs; the status follows the predictor's probability."""
    x = digits[0]
    blends = ((x[:6].float() + x[6:12].float()) / 2).to(torch.uint8)
    both = torch.cat([x[:6], blends])
    probs = [p.probability for p in predictor.predict_arrays(both)]
    threshold = float(np.median(probs))
    strict = Predictor(predictor.model, predictor.meta, min_confidence=threshold)
    with TestClient(serve.create_app(strict)) as c:
        results = c.post("/api/predict/batch", json={"pixels": both.tolist()}).json()["results"]
    statuses = [r["status"] for r in results]
    assert statuses == ["unsure" if p < threshold else "ok" for p in probs]
    assert "unsure" in statuses and "ok" in statuses


def test_multi_digit_number(client, predictor, digits):
    x, y = digits
    gap = torch.zeros(28, 8, dtype=torch.uint8)
    strip = torch.cat([gap] + [torch.cat([d, gap], 1) for d in x[:4]], 1)  # four test digits, spaced
    buf = io.BytesIO()
    Image.fromarray(255 - strip.numpy()).resize((strip.shape[1] * 5, 28 * 5)).save(buf, format="PNG")
    expect = predictor.predict_number(images.decode(buf.getvalue()))
    body = client.post("/api/predict?multi=true", files={"file": ("n.png", buf.getvalue(), "image/png")}).json()
    assert body["text"] == expect.text == "".join(str(int(v)) for v in y[:4])
    assert len(body["digits"]) == 4 and all(from_data_url(d["processed_png"]).shape == (28, 28)
                                            for d in body["digits"])


def test_batch_matches_single_and_isolates_bad_items(client, digits):
    x, _ = digits
    raws = [paper_png(d) for d in x[:3]]
    single = [client.post("/api/predict", json={"image": data_url(r)}).json() for r in raws]
    files = [("files", (f"{i}.png", r, "image/png")) for i, r in enumerate(raws)]
    by_form = client.post("/api/predict/batch", files=files).json()["results"]
    by_json = client.post("/api/predict/batch", json={"images": [data_url(r) for r in raws]}).json()["results"]
    for a, b, s in zip(by_form, by_json, single):
        assert a["digit"] == b["digit"] == s["digit"]
        np.testing.assert_allclose(a["probabilities"], s["probabilities"], atol=1e-5)  # batch size: float order
    mixed = client.post("/api/predict/batch", json={"images": [data_url(raws[0]), data_url(b"not an image")]})
    assert mixed.status_code == 200
    good, bad = mixed.json()["results"]
    assert good["digit"] == single[0]["digit"] and bad["status_code"] == 422 and "not an image" in bad["error"]


# ---------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, code, words", [
    (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "content type"),
    (dict(content=b"hello"), 415, "content type"),
    (dict(files={"file": ("x.png", b"just text", "image/png")}), 422, "not an image"),
    (dict(files={"file": ("x.png", b"", "image/png")}), 422, "empty"),
    (dict(content=b"{not json", headers={"content-type": "application/json"}), 422, "JSON"),
    (dict(json=[1, 2, 3]), 422, "expected a JSON object"),
    (dict(json={"image": "data:image/png;base64,%%%"}), 422, "base64"),
    (dict(json={"image": "data:image/png,rawtext"}), 422, "base64"),
    (dict(json={"image": 42}), 422, "string"),
    (dict(json={"pixels": [[0] * 28] * 27}), 422, "shape"),
    (dict(json={"pixels": [[300] * 28] * 28}), 422, "0..255"),
    (dict(json={"pixels": [[0] * 28] * 27 + [[0] * 5]}), 422, "rectangular"),
    (dict(json={"pixels": [["a"] * 28] * 28}), 422, "numbers"),
    (dict(content=b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b--\r\n',
          headers={"content-type": "multipart/form-data; boundary=b"}), 422, "no file"),
    (dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 422, None),
    (dict(files=[("a", ("a.png", b"1", "image/png")), ("b", ("b.png", b"2", "image/png"))]), 422, "batch"),
])
def test_bad_input_gets_a_clear_json_error(client, kwargs, code, words):
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == code, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and (words is None or words.lower() in detail.lower())


def test_truncated_and_query_errors(client, digits):
    raw = paper_png(digits[0][0])
    r = client.post("/api/predict", files={"file": ("t.png", raw[: len(raw) // 2], "image/png")})
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    assert client.post("/api/predict?multi=maybe", json={"image": data_url(raw)}).status_code == 422
    r = client.post("/api/predict?multi=true", json={"pixels": digits[0][0].tolist()})
    assert r.status_code == 422 and "multi" in r.json()["detail"]


def test_garbage_never_gets_a_500(client):
    rng = np.random.default_rng(0)
    junk = [rng.bytes(n) for n in (1, 17, 300, 5000)]
    junk += [b"\x89PNG\r\n\x1a\n" + rng.bytes(200), b"GIF89a" + rng.bytes(50)]  # image headers, garbage after
    for path in ("/api/predict", "/api/predict?multi=true", "/api/predict/batch"):
        for raw in junk:
            for kind in ("image/png", "application/json", "multipart/form-data; boundary=x", "application/x-foo"):
                r = client.post(path, content=raw, headers={"content-type": kind})
                assert r.status_code in (413, 415, 422) and "detail" in r.json(), (path, kind, r.status_code)
            r = client.post(path, files={"file": ("j.bin", raw, "application/octet-stream")})
            assert r.status_code in (200, 422), (path, r.status_code)  # batch: a per-image error, 200


def test_size_limits_give_413(predictor):
    limits = serve.Limits(max_body_bytes=20_000, max_pixels=100_000, max_batch=3)
    with TestClient(serve.create_app(predictor, limits=limits)) as c:
        big = c.post("/api/predict", content=b"\0" * 30_000, headers={"content-type": "image/png"})
        assert big.status_code == 413 and "limit" in big.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for _ in range(10):
                yield b"\0" * 5_000
        assert c.post("/api/predict", content=chunks(), headers={"content-type": "image/png"}).status_code == 413
        r = c.post("/api/predict", content=png_header(400, 400), headers={"content-type": "image/png"})
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
        r = c.post("/api/predict/batch", json={"pixels": [[[0] * 28] * 28] * 4})
        assert r.status_code == 413 and "limit is 3" in r.json()["detail"]
    with TestClient(serve.create_app(predictor)) as c:  # a decompression bomb's header, at default limits
        r = c.post("/api/predict", content=png_header(50_000, 50_000), headers={"content-type": "image/png"})
        assert r.status_code == 413


class SlowPredictor:
    """Wraps a predictor: each forward pass takes `delay` seconds and records its batch size."""

    def __init__(self, inner, delay):
        self.inner, self.delay, self.batches = inner, delay, []
        self.meta, self.min_confidence = inner.meta, inner.min_confidence

    def predict_arrays(self, x):
        self.batches.append(len(x))
        time.sleep(self.delay)
        return self.inner.predict_arrays(x)


def test_timeout_gives_503(predictor, digits):
    slow = SlowPredictor(predictor, delay=0.5)
    with TestClient(serve.create_app(slow, limits=serve.Limits(work_timeout_s=0.1))) as c:
        r = c.post("/api/predict", json={"pixels": digits[0][0].tolist()})
    assert r.status_code == 503 and "took over" in r.json()["detail"]


def test_slow_body_gives_408(predictor):
    app = serve.create_app(predictor, limits=serve.Limits(body_timeout_s=0.1))
    sent = []

    async def receive():
        await asyncio.sleep(10)  # a client that never finishes its body

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"image/png"), (b"content-length", b"100")]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    assert sent[0]["status"] == 408 and b"took over" in sent[1]["body"]


def test_concurrent_requests_share_a_forward_pass_and_never_block_the_loop(predictor, digits):
    slow = SlowPredictor(predictor, delay=0.3)
    app = serve.create_app(slow)
    body = {"pixels": digits[0][0].tolist()}

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            t0 = time.perf_counter()
            first = asyncio.create_task(c.post("/api/predict", json=body))
            await asyncio.sleep(0.05)  # the first request is now in its forward pass
            health = await c.get("/healthz")
            health_s = time.perf_counter() - t0
            rest = await asyncio.gather(*(c.post("/api/predict", json=body) for _ in range(7)))
            return [await first, *rest], health, health_s, time.perf_counter() - t0

    answers, health, health_s, total = asyncio.run(go())
    assert health.status_code == 200 and health_s < 0.25  # answered while the model was busy
    assert all(r.status_code == 200 and r.json()["digit"] == answers[0].json()["digit"] for r in answers)
    assert max(slow.batches) > 1 and sum(slow.batches) == 8  # later requests rode along together
    assert total < 8 * 0.3


def test_cli_serve_reports_a_bad_model_without_a_traceback(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing.safetensors")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    for flag, value in (("--workers", "0"), ("--threads", "0"), ("--port", "99999")):
        with pytest.raises(SystemExit) as exc:  # a usage error, as argparse reports them
            main(["serve", flag, value])
        assert exc.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err


def test_cli_serve_with_two_worker_processes(predictor, digits):
    """The real command: `mnist-cnn serve --workers 2` on a free loopback port answers like the predictor."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mnist_cnn", "serve", "--port", str(port), "--workers", "2",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        x = digits[0][:4]
        for digit, e in zip(x, predictor.predict_arrays(x)):
            assert httpx.post(url + "/api/predict", json={"pixels": digit.tolist()}).json()["digit"] == e.digit
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "2 worker(s)" in out and "Traceback" not in out


def test_onnx_backend_serves_the_same_answers(predictor, digits, tmp_path):
    from mnist_cnn import export

    raw = tmp_path / "raw.onnx"
    export.to_onnx(predictor.model, raw)
    export.write_with_contract(raw, tmp_path / "model.onnx", predictor.meta)
    onnx = Predictor.from_path(tmp_path / "model.onnx", backend="onnx", min_confidence=0.5)
    x = digits[0]
    with TestClient(serve.create_app(onnx, backend="onnx")) as c:
        assert c.get("/api/model").json()["backend"] == "onnx"
        results = c.post("/api/predict/batch", json={"pixels": x.tolist()}).json()["results"]
    for r, e in zip(results, predictor.predict_arrays(x)):
        assert r["digit"] == e.digit
        np.testing.assert_allclose(r["probabilities"], e.probabilities, atol=1e-4)


# ------------------------------------------------- abuse: statuses, parsing, origins, connections


@pytest.mark.parametrize("path", ["/api/predict", "/api/predict/batch"])
def test_deep_json_and_huge_integers_get_422_not_500(client, path):
    many = "pixels"
    deep = '{"%s": %s0%s}' % (many, "[" * 100_000, "]" * 100_000)  # past Python's recursion limit
    r = client.post(path, content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "nested too deeply" in r.json()["detail"]
    rows = [[0] * 28] * 28
    huge = json.dumps({"pixels": rows if path == "/api/predict" else [rows]}).replace("0", "9" * 400, 1)
    r = client.post(path, content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "numbers" in r.json()["detail"]


def test_json_is_parsed_off_the_event_loop_and_counted_before_conversion(predictor, monkeypatch):
    from mnist_cnn import payload

    threads, converted = [], []
    real_loads, real_pixels = payload.json.loads, payload._pixels
    monkeypatch.setattr(payload.json, "loads", lambda raw: (len(raw) > 10**6 and threads.append(
        threading.current_thread())) or real_loads(raw))  # json is shared: httpx parses small replies
    monkeypatch.setattr(payload, "_pixels", lambda value, shape: converted.append(shape)
                        or real_pixels(value, shape))
    body = json.dumps({"pixels": [[[0] * 28] * 28] * 3000})  # 4.9 MB, under the body limit
    app = serve.create_app(predictor)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            big = asyncio.create_task(c.post("/api/predict/batch", content=body,
                                             headers={"content-type": "application/json"}))
            await asyncio.sleep(0.01)
            health = await c.get("/healthz")
            return await big, health

    big, health = asyncio.run(go())
    assert big.status_code == 413 and "3000 images" in big.json()["detail"] and converted == []
    assert len(threads) == 1 and threads[0] is not threading.main_thread()  # the loop runs in the main thread
    assert health.status_code == 200  # (how long it waited is a timing: benchmarks/serve_abuse.py measures it)


def test_statuses_are_those_of_the_readme(predictor):
    limits = serve.Limits(max_body_bytes=20_000, max_batch=3)
    form = lambda n: [("file", (f"{i}.png", b"x", "image/png")) for i in range(n)]  # noqa: E731
    with TestClient(serve.create_app(predictor, limits=limits)) as c:
        def chunks():  # a chunked multipart body over the limit: 413 like any other body
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            for _ in range(10):
                yield b"\0" * 5_000
        r = c.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = c.post("/api/predict/batch", files=form(4))  # too many files: 413, as for JSON
        assert r.status_code == 413 and "the limit is 3" in r.json()["detail"]
        assert c.post("/api/predict/batch", json={"images": ["x"] * 4}).status_code == 413
    with TestClient(serve.create_app(predictor)) as c:  # 900 megapixels: the message says so
        r = c.post("/api/predict", content=png_header(30_000, 30_000), headers={"content-type": "image/png"})
        assert r.status_code == 413 and "has 900,000,000 pixels; the limit is 16,000,000" in r.json()["detail"]


def test_a_slow_multipart_body_gets_408(predictor):
    app = serve.create_app(predictor, limits=serve.Limits(body_timeout_s=0.1))
    sent = []

    async def receive():
        await asyncio.sleep(10)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"100")]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    assert sent[0]["status"] == 408 and b"took over" in sent[1]["body"]


def test_security_headers_on_every_response(client):
    for r in (client.get("/healthz"), client.get("/"), client.get("/redoc"), client.post("/api/predict", json=1)):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    page = client.get("/").headers["content-security-policy"]
    assert "default-src 'self'" in page and "object-src 'none'" in page
    redoc = client.get("/redoc").headers["content-security-policy"]  # ReDoc's bundle would load a CDN logo
    assert "img-src 'self' data:;" in redoc and "default-src 'self'" in redoc


def test_host_allow_list_blocks_dns_rebinding(predictor, digits):
    from mnist_cnn import guards

    app = serve.create_app(predictor, allowed_hosts=guards.allowed_hosts("127.0.0.1", ["digits.example.org"]))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST", "digits.example.org"):
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        for host in ("rebind.attacker.example:8000", "127.0.0.1.attacker.example", "", "[::1"):
            r = c.get("/healthz", headers={"host": host})
            assert r.status_code == 400 and "--allowed-host" in r.json()["detail"], host
    assert guards.allowed_hosts("0.0.0.0") is None and guards.allowed_hosts("::1", ["*"]) is None
    assert guards.allowed_hosts("0.0.0.0", ["a.org"]) == ["127.0.0.1", "localhost", "::1", "a.org"]


def test_cross_origin_posts_are_refused_before_any_work(predictor, digits):
    slow = SlowPredictor(predictor, delay=0)
    body = {"pixels": digits[0][0].tolist()}
    with TestClient(serve.create_app(slow), base_url="http://localhost:8000") as c:
        for headers in ({"origin": "http://evil.example"}, {"origin": "null"},
                        {"origin": "http://localhost:3000"},  # another port is another origin
                        {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"}):
            r = c.post("/api/predict", json=body, headers=headers)
            assert r.status_code == 403 and "cross-origin" in r.json()["detail"], headers
        assert slow.batches == []
        for headers in ({}, {"origin": "http://localhost:8000", "sec-fetch-site": "same-origin"},
                        {"sec-fetch-site": "none"}):  # curl, the page itself, a typed-in URL
            assert c.post("/api/predict", json=body, headers=headers).status_code == 200, headers
        assert c.get("/healthz", headers={"origin": "http://evil.example"}).status_code == 200


def test_cli_serve_passes_allowed_hosts_and_refuses_a_broken_model(tmp_path, capsys, monkeypatch):
    from mnist_cnn import checkpoint, training
    from mnist_cnn.recipes import get_config

    calls = []
    monkeypatch.setattr(serve, "run", lambda *a, **kw: calls.append(kw))
    assert main(["serve", "--allowed-host", "digits.example.org"]) == 0
    assert calls[-1]["allowed_hosts"] == ["127.0.0.1", "localhost", "::1", "digits.example.org"]
    assert main(["serve", "--host", "0.0.0.0"]) == 0 and calls[-1]["allowed_hosts"] is None
    assert "answering for any Host header" in capsys.readouterr().out
    cfg = get_config("fast")
    bad = tmp_path / "nan.safetensors"
    model = training.build(cfg, "cpu")
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    checkpoint.save_model(bad, model, checkpoint.model_metadata(cfg))
    assert main(["serve", "--model", str(bad)]) == 1 and len(calls) == 2  # refused before listening
    assert "NaN or infinite" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # waits out a real header timeout
@pytest.mark.parametrize("parser", ["PROTOCOL", "GuardedH11"])  # uvicorn's choice (httptools), and h11
def test_idle_connections_are_closed_so_they_cannot_lock_everyone_out(predictor, parser):
    """300 sockets that never finish their headers once gave every request 503 for as long as they stayed open."""
    import uvicorn

    from mnist_cnn import guards

    quick = type("QuickHeaderTimeout", (getattr(guards, parser),), {"header_timeout_s": 1.5})
    port = _free_port()
    options = {**serve.server_options(serve.Limits()), "http": quick}
    server = uvicorn.Server(uvicorn.Config(serve.create_app(predictor), host="127.0.0.1", port=port,
                                           log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    idle = []
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/healthz"
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 2:  # half send part of a request, half nothing at all
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            idle.append(sock)
        time.sleep(0.3)  # let the server accept them all
        assert httpx.get(url, timeout=5).status_code == 503  # the slots are full...
        t0 = time.monotonic()
        while True:  # ...until the header timeout frees them
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - t0 < 15, "/healthz still refused 15 s after the idle sockets opened"
            time.sleep(0.2)
        assert all(s.recv(1) == b"" for s in idle[:10])  # closed by the server
        r = httpx.post(f"http://127.0.0.1:{port}/api/predict", json={"pixels": [[0] * 28] * 28}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] in ("ok", "unsure")
        # A keep-alive client that keeps asking is never cut off (each response restarts the clock)...
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.append(sock)
        for _ in range(4):  # 2 s of requests, longer than the header timeout
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)
        # ...but a partial next request (which stops uvicorn's own keep-alive timer) is closed.
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()
        assert sock.recv(1) == b"" and time.monotonic() - t0 < 5
    finally:
        for sock in idle:
            sock.close()
        server.should_exit = True
        thread.join(15)


@pytest.mark.slow  # the ONNX exporter takes seconds to load
def test_onnx_backend_refuses_a_model_that_cannot_work(predictor, tmp_path, monkeypatch, capsys):
    from mnist_cnn import export

    monkeypatch.setattr(serve, "run", lambda *a, **kw: pytest.fail("started serving a broken model"))
    raw = tmp_path / "raw.onnx"
    export.to_onnx(predictor.model, raw)
    export.write_with_contract(raw, tmp_path / "std0.onnx", {**predictor.meta, "std": 0.0})
    assert main(["serve", "--backend", "onnx", "--model", str(tmp_path / "std0.onnx")]) == 1
    assert "std must be in" in capsys.readouterr().err


# ------------------------------------------------------------- samples (--collect)


def drawn_png(width: int = 18) -> bytes:
    """A drawn "1" on white paper (no MNIST needed)."""
    from PIL import ImageDraw

    img = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(img).line([(100, 30), (100 + width - 18, 170)], fill=0, width=width)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def collecting(predictor, tmp_path):
    """A client of a server that keeps samples in tmp_path/samples.db, and a way to read that store."""
    from mnist_cnn.collect import Collect
    from mnist_cnn.samples import Store

    path = tmp_path / "samples.db"
    limits = serve.Limits(max_body_bytes=200_000, max_pixels=1_000_000)
    def rows():
        with Store(path) as store:
            return list(store.rows(originals=True))

    with TestClient(serve.create_app(predictor, limits=limits, collect=Collect(path))) as c:
        yield c, rows


def test_samples_are_kept_only_when_collecting(client, tmp_path):
    raw = drawn_png()
    r = client.post("/api/samples?label=1", content=raw, headers={"content-type": "image/png"})
    assert r.status_code == 404 and "--collect" in r.json()["detail"]
    assert client.delete("/api/samples/1").status_code == 404
    assert client.get("/api/model").json()["collect"] == {"enabled": False, "token_required": False}
    assert "/api/samples" in client.get("/openapi.json").json()["paths"]


def test_a_correction_is_kept_with_its_image_and_the_models_answer(collecting, predictor):
    c, rows = collecting
    raw = drawn_png()
    r = c.post("/api/samples", files={"file": ("mine.png", raw, "image/png")}, data={"label": "7"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == 7 and body["count"] == 1 and not body["duplicate"]
    expect = predictor.predict_image(images.decode(raw))  # the oracle: the predict path
    assert body["prediction"]["topk"][0]["digit"] == expect.topk[0][0]
    [sample] = rows()
    assert sample.id == body["id"] and sample.label == 7 and sample.source == "page"
    assert torch.equal(sample.mnist, expect.processed)
    assert sample.predicted == expect.topk[0][0] and sample.probability == pytest.approx(expect.probability)
    kept = Image.open(io.BytesIO(sample.original))
    assert kept.format == "PNG" and kept.size == (200, 200)
    # The same body again: the same sample. The label as a query parameter, a JSON key, with raw bytes, pixels.
    again = c.post("/api/samples?label=7", content=raw, headers={"content-type": "image/png"}).json()
    assert again["id"] == body["id"] and again["duplicate"] and again["count"] == 1
    assert c.post("/api/samples?label=1", content=raw, headers={"content-type": "image/png"}).json()["count"] == 2
    assert c.post("/api/samples", json={"image": data_url(drawn_png(24)), "label": 1}).json()["count"] == 3
    pixels = c.post("/api/samples", json={"pixels": expect.processed.tolist(), "label": "4"}).json()
    assert pixels["count"] == 4 and torch.equal(rows()[-1].mnist, expect.processed)


@pytest.mark.parametrize("label", ["10", "-1", "x", "3.5", "", "07"])
def test_bad_labels_bodies_and_sizes_get_4xx_and_keep_nothing(collecting, label):
    c, rows = collecting
    raw = drawn_png()
    r = c.post(f"/api/samples?label={label}", content=raw, headers={"content-type": "image/png"})
    assert r.status_code == 422 and "label" in r.json()["detail"]
    for response, code in [
            (c.post("/api/samples", content=raw, headers={"content-type": "image/png"}), 422),  # no label
            (c.post("/api/samples?label=2", files={"file": ("a.png", raw)}, data={"label": "3"}), 422),  # two
            (c.post("/api/samples", json={"image": data_url(raw), "label": 12}), 422),
            (c.post("/api/samples?label=2", content=b"not an image", headers={"content-type": "image/png"}), 422),
            (c.post("/api/samples?label=2", content=b"\0" * 300_000, headers={"content-type": "image/png"}), 413),
            (c.post("/api/samples?label=2", content=png_header(2000, 2000), headers={"content-type": "image/png"}),
             413),
            (c.post("/api/samples?label=2", content=paper_png(torch.zeros(28, 28, dtype=torch.uint8)),
                    headers={"content-type": "image/png"}), 422),  # no ink: nothing to learn from
            (c.post("/api/samples?label=2", content=raw, headers={"content-type": "text/plain"}), 415)]:
        assert response.status_code == code, (response.status_code, response.text)
    assert rows() == []


def test_delete_removes_a_sample_by_id(collecting):
    c, rows = collecting
    first = c.post("/api/samples?label=1", content=drawn_png(), headers={"content-type": "image/png"}).json()
    c.post("/api/samples?label=1", content=drawn_png(26), headers={"content-type": "image/png"})
    r = c.delete(f"/api/samples/{first['id']}")
    assert r.status_code == 200 and r.json() == {"deleted": first["id"], "count": 1}
    assert c.delete(f"/api/samples/{first['id']}").status_code == 404
    assert c.delete("/api/samples/abc").status_code == 422
    assert [s.id for s in rows()] == [first["id"] + 1]
    r = c.post("/api/samples?label=1", content=drawn_png(), headers={"content-type": "image/png",
                                                                     "origin": "http://evil.example"})
    assert r.status_code == 403 and len(rows()) == 1  # another site cannot post corrections through a browser


def test_a_token_is_needed_when_the_server_has_one(predictor, tmp_path):
    from mnist_cnn.collect import Collect
    from mnist_cnn.samples import Store

    path = tmp_path / "samples.db"
    raw = drawn_png()
    with TestClient(serve.create_app(predictor, collect=Collect(path, token="s3cret-token"))) as c:
        assert c.get("/api/model").json()["collect"] == {"enabled": True, "token_required": True}
        for headers in ({}, {"x-collect-token": "wrong"}, {"authorization": "Bearer wrong"},
                        {"x-collect-token": ""}):
            r = c.post("/api/samples?label=1", content=raw, headers={"content-type": "image/png", **headers})
            assert r.status_code == 403 and "token" in r.json()["detail"], headers
        r = c.post("/api/samples?label=1&token=s3cret-token", content=raw, headers={"content-type": "image/png"})
        assert r.status_code == 403  # not in the URL, where access logs would keep it
        ok = c.post("/api/samples?label=1", content=raw, headers={"content-type": "image/png",
                                                                   "x-collect-token": "s3cret-token"})
        assert ok.status_code == 200
        sample = ok.json()["id"]
        assert c.delete(f"/api/samples/{sample}").status_code == 403
        assert c.delete(f"/api/samples/{sample}", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    with Store(path) as store:
        assert store.count() == 0


def test_cli_serve_collect_needs_a_token_off_loopback(tmp_path, capsys, monkeypatch):
    from mnist_cnn import collect

    calls = []
    monkeypatch.setattr(serve, "run", lambda *a, **kw: calls.append(kw))
    monkeypatch.delenv("MNIST_CNN_COLLECT_TOKEN", raising=False)
    db = str(tmp_path / "s.db")
    assert main(["serve"]) == 0 and calls[-1]["collect"] is None  # nothing is kept unless asked
    assert main(["serve", "--collect", "--samples-db", db]) == 0
    assert calls[-1]["collect"].token is None and str(calls[-1]["collect"].path) == db  # loopback: no token
    assert main(["serve", "--collect", "--samples-db", db, "--host", "0.0.0.0"]) == 0
    token = calls[-1]["collect"].token
    assert token and len(token) >= 20 and f"/?token={token}" in capsys.readouterr().out  # drawn, and printed
    assert main(["serve", "--collect", "--samples-db", db, "--host", "192.168.1.5", "--collect-token", "t0k"]) == 0
    assert calls[-1]["collect"].token == "t0k"
    monkeypatch.setenv("MNIST_CNN_COLLECT_TOKEN", "from-env")
    assert main(["serve", "--collect", "--samples-db", db, "--host", "::"]) == 0
    assert calls[-1]["collect"].token == "from-env"
    assert [collect.is_loopback(h) for h in ("127.0.0.1", "127.0.1.1", "::1", "localhost", "0.0.0.0", "::",
                                             "10.0.0.1", "example.org")] == [True] * 4 + [False] * 4
    (tmp_path / "bad.db").write_bytes(b"x" * 100)
    assert main(["serve", "--collect", "--samples-db", str(tmp_path / "bad.db")]) == 1  # before listening
    assert "damaged" in capsys.readouterr().err and len(calls) == 5
