"""The REST API and the draw-a-digit page: FastAPI on uvicorn, with the model loaded once at start-up.

Every image goes through `preprocess` and `predict.Predictor`, the same code as `mnist-cnn predict`:
the page sends its canvas as a PNG and gets back the 28x28 input the network saw, so there is no
second copy of the preprocessing in JavaScript. Inference runs off the event loop, and requests
that arrive while the model is busy share one forward pass (micro-batching).

    mnist-cnn serve --port 8000    # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import predict, preprocess

STATIC = Path(str(resources.files("mnist_cnn") / "static"))
# The page loads nothing from elsewhere (users may be offline); the policy makes a stray CDN link fail loudly.
PAGE_CSP = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'"


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server: beyond these it gets a clear 408, 413 or 503."""

    max_body_bytes: int = 10 * 2**20  # one request body, bytes (a phone photo is 2-5 MiB)
    max_pixels: int = 16_000_000  # one image, width x height (a 12 MP phone photo fits)
    max_batch: int = 64  # images in one /api/predict/batch request
    body_timeout_s: float = 10.0  # to receive the body; stops slow-drip clients holding a slot
    work_timeout_s: float = 10.0  # to preprocess and predict once the body is in
    max_connections: int = 256  # uvicorn answers 503 beyond this many at once


class MicroBatcher:
    """Runs one forward pass for every request that queued while the previous pass ran.

    A lone client gets plain batch-1 inference with no added wait; under load the batch grows by
    itself. One model thread also keeps a 2-core machine from running many small passes at once.
    """

    def __init__(self, predict_arrays, max_images: int = 256):
        self.predict_arrays = predict_arrays
        self.max_images = max_images
        self.queue: collections.deque = collections.deque()  # (uint8 (n, 28, 28), future)
        self.worker: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def __call__(self, x: torch.Tensor) -> list:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((x, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue:
            batch, n = [], 0
            while self.queue and (not batch or n + len(self.queue[0][0]) <= self.max_images):
                x, future = self.queue.popleft()
                if not future.done():  # skip requests that timed out while queued
                    batch.append((x, future))
                    n += len(x)
            if not batch:
                continue
            try:
                preds = await loop.run_in_executor(self.executor, self.predict_arrays,
                                                   torch.cat([x for x, _ in batch]))
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for x, future in batch:
                if not future.done():
                    future.set_result(preds[start:start + len(x)])
                start += len(x)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class BodyLimit:
    """ASGI middleware: refuse an over-large body (413) or a slow-drip one (408) while it arrives."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": self._too_big()}, 413)(scope, receive, send)
        seen, done = 0, False

        async def limited_receive():
            nonlocal seen, done
            if done:  # after the body, receive() only waits for a disconnect: no timeout there
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                raise HTTPException(408, f"the request body took over {self.timeout_s:g} s to arrive") from None
            seen += len(message.get("body", b""))
            done = not message.get("more_body", False)
            if seen > self.max_bytes:
                raise HTTPException(413, self._too_big())
            return message

        return await self.app(scope, limited_receive, send)

    def _too_big(self) -> str:
        return f"the request is larger than the {self.max_bytes:,}-byte limit"


# ------------------------------------------------------------------ inputs


def _bad(message: str) -> HTTPException:
    return HTTPException(422, message)


def _data_url_bytes(value) -> bytes:
    """A PNG (or any image) as a data URL or bare base64 -> its bytes."""
    if not isinstance(value, str):
        raise _bad("an image must be a string: a data URL like data:image/png;base64,...")
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise _bad("a data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the image is not valid base64") from None


def _pixels(value, shape: tuple) -> torch.Tensor:
    """A JSON array of MNIST-style pixels (white ink on black, 0..255) -> uint8 tensor of `shape`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise _bad("pixels must be a rectangular array of numbers") from None
    if arr.shape != shape:
        raise _bad(f"pixels must have shape {list(shape)}, got {list(arr.shape)}")
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 255):
        raise _bad("pixels must lie in 0..255 (white ink on black, as in MNIST)")
    return torch.from_numpy(np.rint(arr).astype(np.uint8))


def _json_items(body, batch: bool) -> list:
    key, many = ("images", "pixels") if batch else ("image", "pixels")
    if isinstance(body, dict) and key in body:
        values = body[key]
        if not batch:
            return [_data_url_bytes(values)]
        if not isinstance(values, list):
            raise _bad(f'"{key}" must be a list of data URLs')
        return [_data_url_bytes(v) for v in values]
    if isinstance(body, dict) and many in body:
        if not batch:
            return [_pixels(body[many], (28, 28))]
        n = len(body[many]) if isinstance(body[many], list) else -1
        return list(_pixels(body[many], (n, 28, 28)))
    example = '{"images": [...]}' if batch else '{"image": "data:image/png;base64,..."}'
    raise _bad(f'expected a JSON object like {example} or {{"pixels": 28x28 numbers 0..255}}')


async def read_items(request: Request, limits: Limits, batch: bool) -> list:
    """The request's images: encoded image bytes, or uint8 (28, 28) tensors sent as pixels."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=limits.max_batch, max_fields=limits.max_batch)
        except StarletteHTTPException as exc:  # Starlette says 400 for a malformed form
            raise _bad(f"bad multipart body: {exc.detail}") from None
        items = [await v.read() for _, v in form.multi_items() if not isinstance(v, str)]
        await form.close()
        if not items:
            raise _bad("the form has no file: send the image as the field 'file'")
    elif kind == "application/json":
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise _bad("the body is not valid JSON") from None
        items = _json_items(body, batch)
    elif (kind.startswith("image/") or kind == "application/octet-stream") and not batch:
        items = [await request.body()]
    else:
        also = "" if batch else ", or the image itself as image/*"
        raise HTTPException(415, f"unsupported content type {kind or '(none)'} here: send multipart/form-data "
                                 f"or application/json{also}")
    if not batch and len(items) != 1:
        raise _bad(f"send one image here ({len(items)} came); use /api/predict/batch for several")
    if not items:
        raise _bad("no images in the request")
    if len(items) > limits.max_batch:
        raise HTTPException(413, f"{len(items)} images in one request; the limit is {limits.max_batch}")
    return items


def decode_checked(raw: bytes, max_pixels: int) -> Image.Image:
    """Refuse an image with too many pixels from its header alone (413), then decode it as the CLI does."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(raw)).size  # reads the header only
    except Image.DecompressionBombError:
        width, height = max_pixels + 1, 1
    except Exception:  # noqa: BLE001 - not an image Pillow can parse: decode() explains why
        width = height = 0
    if width * height > max_pixels:
        raise HTTPException(413, f"the image has {width * height:,} pixels; the limit is {max_pixels:,}")
    return preprocess.decode(raw)


# ----------------------------------------------------------------- outputs


def png_data_url(x: torch.Tensor) -> str:
    """A uint8 (28, 28) tensor as a small PNG data URL (the page shows it pixelated)."""
    buf = io.BytesIO()
    Image.fromarray(x.cpu().numpy().astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def prediction_json(p) -> dict:
    out = p.to_dict()
    out.pop("processed", None)
    out["processed_png"] = None if p.processed is None else png_data_url(p.processed)
    return out


def number_json(n) -> dict:
    return {**n.to_dict(), "digits": [prediction_json(d) for d in n.digits]}


# --------------------------------------------------------------------- app

_BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "any image Pillow reads (batch: any number of file fields)"}}}},
    "application/json": {"schema": {"type": "object", "properties": {
        "image": {"type": "string", "description": "data:image/png;base64,... (single)"},
        "images": {"type": "array", "items": {"type": "string"}, "description": "data URLs (batch)"},
        "pixels": {"type": "array", "description": "28x28 (single) or Nx28x28 (batch) MNIST-style "
                                                   "pixels, white ink on black, 0..255, used as is"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}


def create_app(predictor, *, backend: str = "torch", limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app around an already-loaded `predict.Predictor` (tests inject their own)."""
    batcher = MicroBatcher(predictor.predict_arrays)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="mnist-cnn", summary="Handwritten-digit recognition", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(preprocess.ImageError)
    async def image_error(request, exc):
        return JSONResponse({"detail": str(exc)}, 422)

    @app.exception_handler(Exception)
    async def server_error(request, exc):  # a bug, not bad input: still answer in JSON
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, 500)

    def image_input(raw: bytes) -> tuple[Image.Image, torch.Tensor | None]:
        img = decode_checked(raw, limits.max_pixels)
        return img, preprocess.to_mnist(img)

    async def predict_one(item, multi: bool) -> dict:
        if isinstance(item, torch.Tensor):
            if multi:
                raise _bad("multi=true reads a written number from an image, not from 28x28 pixels")
            x = item
        elif multi:
            img = await run_in_threadpool(decode_checked, item, limits.max_pixels)
            return number_json(await run_in_threadpool(predictor.predict_number, img))
        else:
            img, x = await run_in_threadpool(image_input, item)
            if x is None:  # no ink: reported as empty, never guessed
                return prediction_json(predict.empty())
        [p] = await batcher(x[None])
        return prediction_json(p)

    async def bounded(coro):
        try:
            return await asyncio.wait_for(coro, limits.work_timeout_s)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise HTTPException(503, f"the prediction took over {limits.work_timeout_s:g} s; try a smaller image",
                                headers={"Retry-After": "1"}) from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/healthz", summary="Liveness check")
    async def healthz():
        return {"status": "ok"}

    @app.get("/api/model", summary="The model's metadata and measured test accuracy")
    async def model_info():
        meta = predictor.meta
        return {**meta, "backend": backend, "test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
                "min_confidence": predictor.min_confidence, "limits": asdict(limits)}

    @app.post("/api/predict", summary="Recognize one digit (or, with multi=true, a written number)",
              openapi_extra=_BODY_DOC)
    async def post_predict(request: Request, multi: bool = False):
        [item] = await read_items(request, limits, batch=False)
        return await bounded(predict_one(item, multi))

    @app.post("/api/predict/batch", summary="Recognize several single-digit images in one request",
              openapi_extra=_BODY_DOC)
    async def post_predict_batch(request: Request):
        items = await read_items(request, limits, batch=True)

        async def one(item):  # a bad image fails alone, not the whole batch
            try:
                return await predict_one(item, multi=False)
            except HTTPException as exc:
                return {"error": exc.detail, "status_code": exc.status_code}
            except preprocess.ImageError as exc:
                return {"error": str(exc), "status_code": 422}

        return {"results": await bounded(asyncio.gather(*map(one, items)))}

    return app


def load_predictor(model=None, backend: str = "torch", device: str = "cpu", threads: int = 1,
                   min_confidence: float = 0.5) -> predict.Predictor:
    """The model, loaded once per server process, with its intra-op threads (1 is fastest for small batches)."""
    torch.set_num_threads(threads)
    if backend == "onnx":  # from_path's loader, but with our thread count: 1 beat ORT's one-per-core at batch 1
        from .export import load_onnx

        return predict.Predictor(*load_onnx(model, threads=threads), min_confidence=min_confidence)
    return predict.Predictor.from_path(model, backend=backend, device=device, min_confidence=min_confidence)


WORKER_OPTIONS = "MNIST_CNN_SERVE_OPTIONS"  # how `run` hands load_predictor's arguments to worker processes


def worker_app() -> FastAPI:
    """uvicorn's app factory in each `--workers` process: the same model, loaded once per process."""
    options = json.loads(os.environ[WORKER_OPTIONS])
    return create_app(load_predictor(**options), backend=options["backend"])


def run(predictor, options: dict, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        log_level: str = "info") -> None:
    """Serve until interrupted (the CLI's `serve`). With workers > 1, each process loads its own model from
    `options` (load_predictor's arguments): preprocessing holds the GIL, so processes use more cores."""
    import uvicorn

    limits = Limits()
    kw = dict(host=host, port=port, log_level=log_level, access_log=log_level in ("debug", "info"),
              timeout_keep_alive=5, limit_concurrency=limits.max_connections)
    if workers == 1:
        uvicorn.run(create_app(predictor, backend=options["backend"], limits=limits), **kw)
    else:
        os.environ[WORKER_OPTIONS] = json.dumps(options)
        uvicorn.run("mnist_cnn.serve:worker_app", factory=True, workers=workers, **kw)
