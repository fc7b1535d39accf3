"""The REST API and the draw-a-digit page: FastAPI on uvicorn, with the model loaded once at start-up.

Every image goes through `preprocess` and `predict.Predictor`, the same code as `mnist-cnn predict`:
the page sends its canvas as a PNG and gets back the 28x28 input the network saw, so there is no
second copy of the preprocessing in JavaScript. Inference runs off the event loop, and requests
that arrive while the model is busy share one forward pass (micro-batching). Images are decoded
in small pools (`Limits.max_decodes` at once, and written numbers apart), which bounds the server's
memory, and a request's work stops at its deadline, when it is answered 503. Request bodies are read and checked in `payload.py`.

    mnist-cnn serve --port 8000    # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image

from . import collect as collecting
from . import guards, images, predict, preprocess, segment
from .errors import UserError
from .evaluation import forward_label, measured_forward
from .payload import (BodyLimit, Limits, check_batch_pixels, decode_checked, invalid, number_json, prediction_json,
                      read_items)

STATIC = Path(str(resources.files("mnist_cnn") / "static"))
# The page loads nothing from elsewhere (users may be offline); the policy makes a stray CDN link fail loudly.
PAGE_CSP = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; " + guards.FRAME_CSP
# Swagger UI and ReDoc start from inline scripts and styles; the policy still keeps them off the network
# (ReDoc's bundle would fetch its logo from cdn.redoc.ly) and lets ReDoc's search run in a blob: worker.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; " + guards.FRAME_CSP)


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


class DecodePool:
    """Decoding and preprocessing, at most `size` images at once, each stopped at its request's deadline.

    A 16-megapixel PNG must be decoded whole before it can be reduced (~70 MB at its peak), so the memory
    of the server is bounded by how many decode at once, not by the requests' sizes. A job that times out
    while queued is dropped (its future is cancelled); one already running stops at its next deadline check.
    """

    def __init__(self, size: int, name: str = "decode"):
        self.executor = ThreadPoolExecutor(size, thread_name_prefix=name)

    async def __call__(self, fn, *args, deadline: float | None = None):
        def job():
            segment.check_deadline(deadline)  # queued past its deadline: the request has had its 503
            try:
                return fn(*args)
            finally:
                release_memory()
        return await asyncio.get_running_loop().run_in_executor(self.executor, job)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


try:  # glibc keeps freed memory in its per-thread arenas; malloc_trim hands it back to the OS
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
    _malloc_trim = None


def release_memory() -> None:
    """Hand freed heap back to the OS (after 64 large images decoded at once, 6.9 GB stayed allocated)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


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


def create_app(predictor, *, backend: str = "torch", limits: Limits = Limits(),
               allowed_hosts: list[str] | None = None, collect: collecting.Collect | None = None,
               model_name: str | None = None) -> FastAPI:
    """The FastAPI app around an already-loaded `predict.Predictor` (tests inject their own).

    `allowed_hosts`: the Host names to answer for (`guards.allowed_hosts`); None answers for any.
    `collect`: where corrections are kept, and the token they need (`collect.py`); None keeps nothing.
    `model_name`: what /api/model says is served (a path; None: the shipped model).
    """
    batcher = MicroBatcher(predictor.predict_arrays)
    decode = DecodePool(limits.max_decodes)
    numbers = DecodePool(limits.max_numbers, "numbers")  # a number may take seconds: it waits for numbers only

    store = None  # the samples store, opened below when collecting

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()
        decode.close()
        numbers.close()
        if store is not None:
            store.close()

    # FastAPI's own /docs and /redoc load their scripts from a CDN: blank pages offline.
    # FastAPIOffline serves the same pages from files in its package, under /docs-assets.
    app = FastAPIOffline(title="mnist-cnn", summary="Handwritten-digit recognition", lifespan=lifespan,
                         static_url="/docs-assets")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)
    # Added last, so it runs first: a refused host or origin costs no body read.
    app.add_middleware(guards.Guards, allowed_hosts=allowed_hosts,
                       page_csp={"/": PAGE_CSP, "/docs": DOCS_CSP, "/redoc": DOCS_CSP})
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(images.ImageError)
    async def image_error(request, exc):
        return JSONResponse({"detail": str(exc)}, 422)

    @app.exception_handler(UserError)
    async def user_error(request, exc):  # e.g. an unknown explanation method, or no captum installed
        return JSONResponse({"detail": str(exc)}, 422)

    @app.exception_handler(Exception)
    async def server_error(request, exc):  # a bug, not bad input: still answer in JSON
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, 500)

    def image_input(raw: bytes) -> tuple[Image.Image, torch.Tensor | None]:
        img = decode_checked(raw, limits.max_pixels)
        return img, preprocess.to_mnist(img)

    def number_input(raw: bytes, deadline: float) -> predict.NumberPrediction:
        return predictor.predict_number(decode_checked(raw, limits.max_pixels), deadline=deadline)

    async def predict_one(item, multi: bool, deadline: float) -> dict:
        if isinstance(item, torch.Tensor):
            if multi:
                raise invalid("multi=true reads a written number from an image, not from 28x28 pixels")
            x = item
        elif multi:
            return number_json(await numbers(number_input, item, deadline, deadline=deadline))
        else:
            img, x = await decode(image_input, item, deadline=deadline)
            if x is None:  # no ink: reported as empty, never guessed
                return prediction_json(predict.empty())
        [p] = await batcher(x[None])
        return prediction_json(p)

    async def bounded(coro, deadline: float):
        """The work of one request, answered 503 at its deadline (where its threads stop too)."""
        try:
            return await asyncio.wait_for(coro, max(0.0, deadline - time.monotonic()))
        except (asyncio.TimeoutError, segment.OutOfTime):  # not the builtin TimeoutError before Python 3.11
            raise HTTPException(503, f"the prediction took over {limits.work_timeout_s:g} s; try a smaller image",
                                headers={"Retry-After": "1"}) from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")  # with PAGE_CSP, from guards.Guards

    @app.get("/healthz", summary="Liveness check")
    async def healthz():
        return {"status": "ok"}

    @app.get("/api/model", summary="The model's metadata and measured test accuracy")
    async def model_info():
        meta = predictor.meta
        return {**meta, "backend": backend, "test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
                "test_forward": measured_forward(meta), "forward": forward_label(predictor.tta),
                "min_confidence": predictor.min_confidence, "limits": asdict(limits),
                "model": model_name or "the shipped model",
                "collect": {"enabled": collect is not None, "token_required": bool(collect and collect.token)}}

    @app.post("/api/predict", summary="Recognize one digit (or, with multi=true, a written number)",
              openapi_extra=_BODY_DOC)
    async def post_predict(request: Request, multi: bool = False):
        [item] = await read_items(request, limits, batch=False, run=decode)
        deadline = time.monotonic() + limits.work_timeout_s
        return await bounded(predict_one(item, multi, deadline), deadline)

    @app.post("/api/explain", summary="One digit's prediction, with where the network looked and what each "
              "convolution saw", openapi_extra=_BODY_DOC)
    async def post_explain(request: Request, method: str = "integrated-gradients"):
        from . import explain  # captum, the optional extra "explain": only when asked

        [item] = await read_items(request, limits, batch=False, run=decode)
        deadline = time.monotonic() + limits.work_timeout_s
        x = item if isinstance(item, torch.Tensor) else (await decode(image_input, item, deadline=deadline))[1]
        if x is None:
            return {"prediction": prediction_json(predict.empty()), "explanation": None}
        [p] = await batcher(x[None])
        e = await bounded(decode(predictor.explain, x, method, deadline=deadline), deadline)
        return {"prediction": prediction_json(p), "explanation": explain.to_json(e)}

    @app.post("/api/predict/batch", summary="Recognize several single-digit images in one request",
              openapi_extra=_BODY_DOC)
    async def post_predict_batch(request: Request):
        items = await read_items(request, limits, batch=True, run=decode)
        deadline = time.monotonic() + limits.work_timeout_s
        await decode(check_batch_pixels, items, limits)  # 413 before any image is decoded

        async def one(item):  # a bad image fails alone, not the whole batch
            try:
                return await predict_one(item, multi=False, deadline=deadline)
            except HTTPException as exc:
                return {"error": exc.detail, "status_code": exc.status_code}
            except images.ImageError as exc:
                return {"error": str(exc), "status_code": 422}

        return {"results": await bounded(asyncio.gather(*map(one, items)), deadline)}

    store = collecting.add_routes(app, collect, limits, decode, batcher, image_input, _BODY_DOC)
    return app


def load_predictor(model=None, backend: str = "torch", device: str = "cpu", threads: int = 1,
                   min_confidence: float = 0.5, reader: str = "shipped") -> predict.Predictor:
    """The model, loaded once per server process; `threads` is ONNX Runtime's intra-op threads (1 is fastest
    for small batches). torch's thread count is the process's, set by its edge (the CLI, `worker_app`).
    `reader` reads written numbers (multi=true): the shipped one, a checkpoint, or "segment"."""
    if backend == "onnx":  # from_path's loader, but with our thread count: 1 beat ORT's one-per-core at batch 1
        from .export import load_onnx

        predictor = predict.Predictor(*load_onnx(model, threads=threads), min_confidence=min_confidence,
                                      reader=reader)
    else:
        predictor = predict.Predictor.from_path(model, backend=backend, device=device, min_confidence=min_confidence,
                                                reader=reader)
    predictor.reader  # loads the number reader now, not at the first "Several digits" request
    return predictor


WORKER_OPTIONS = "MNIST_CNN_SERVE_OPTIONS"  # how `run` hands load_predictor's arguments to worker processes


def worker_app() -> FastAPI:
    """uvicorn's app factory in each `--workers` process: the same model, loaded once per process."""
    options = json.loads(os.environ[WORKER_OPTIONS])
    hosts, collect = options.pop("allowed_hosts"), options.pop("collect", None)
    torch.set_num_threads(options["threads"])  # a worker process's edge, like the CLI's
    return create_app(load_predictor(**options), backend=options["backend"], allowed_hosts=hosts,
                      collect=collecting.Collect(Path(collect["path"]), collect["token"]) if collect else None,
                      model_name=options["model"])


def server_options(limits: Limits) -> dict:
    """uvicorn's settings for slow and idle clients (the CLI's, and the tests' real server)."""
    return dict(timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_connections,
                http=guards.http_protocol())  # + a timeout for incomplete request headers


def run(predictor, options: dict, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        log_level: str = "info", allowed_hosts: list[str] | None = None,
        collect: collecting.Collect | None = None) -> None:
    """Serve until interrupted (the CLI's `serve`). With workers > 1, each process loads its own model from
    `options` (load_predictor's arguments): preprocessing holds the GIL, so processes use more cores."""
    import uvicorn

    limits = Limits()
    kw = dict(host=host, port=port, log_level=log_level, access_log=log_level in ("debug", "info"),
              **server_options(limits))
    if workers == 1:
        uvicorn.run(create_app(predictor, backend=options["backend"], limits=limits, allowed_hosts=allowed_hosts,
                               collect=collect, model_name=options["model"]), **kw)
    else:
        collect_options = {"path": str(collect.path), "token": collect.token} if collect else None
        os.environ[WORKER_OPTIONS] = json.dumps({**options, "allowed_hosts": allowed_hosts,
                                                 "collect": collect_options})
        uvicorn.run("mnist_cnn.serve:worker_app", factory=True, workers=workers, **kw)
