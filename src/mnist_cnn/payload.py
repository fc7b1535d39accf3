"""The REST API's request and response bodies: what a client may send, and what it gets back.

A request's images arrive as a multipart upload, raw image bytes, JSON data URLs or
MNIST-style pixel arrays; each is checked here against `Limits` and refused with a
status and a message a person can act on (408, 413, 415, 422), before any work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import images


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server: beyond these it gets a clear 408, 413 or 503."""

    max_body_bytes: int = 10 * 2**20  # one request body, bytes (a phone photo is 2-5 MiB)
    max_pixels: int = 16_000_000  # one image, width x height (a 12 MP phone photo fits)
    max_batch: int = 64  # images in one /api/predict/batch request
    max_batch_pixels: int = 64_000_000  # all of a batch's images together, width x height, from their headers
    max_decodes: int = 2  # images decoded and preprocessed at once per server process (a 16 MP PNG peaks
    # at ~70 MB while it decodes): what bounds the memory of many requests together
    max_numbers: int = 1  # written numbers (multi=true) read at once, apart: they cannot hold up single digits
    body_timeout_s: float = 10.0  # to receive the body; stops slow-drip clients holding a slot
    work_timeout_s: float = 10.0  # to preprocess and predict once the body is in
    max_connections: int = 256  # uvicorn answers 503 beyond this many at once
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive)
    header_timeout_s: float = 10.0  # from connecting (or the last response) to complete headers; then closed


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


def invalid(message: str) -> HTTPException:
    """422: the request is well-formed HTTP, but its content cannot be used."""
    return HTTPException(422, message)


def _data_url_bytes(value) -> bytes:
    """A PNG (or any image) as a data URL or bare base64 -> its bytes."""
    if not isinstance(value, str):
        raise invalid("an image must be a string: a data URL like data:image/png;base64,...")
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise invalid("a data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("the image is not valid base64") from None


def _pixels(value, shape: tuple) -> torch.Tensor:
    """A JSON array of MNIST-style pixels (white ink on black, 0..255) -> uint8 tensor of `shape`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError, RecursionError):  # OverflowError: a 400-digit integer
        raise invalid("pixels must be a rectangular array of numbers") from None
    if arr.shape != shape:
        raise invalid(f"pixels must have shape {list(shape)}, got {list(arr.shape)}")
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 255):
        raise invalid("pixels must lie in 0..255 (white ink on black, as in MNIST)")
    return torch.from_numpy(np.rint(arr).astype(np.uint8))


def _too_many(n: int, limits: Limits) -> HTTPException:
    return HTTPException(413, f"{n} images in one request; the limit is {limits.max_batch}")


def _json_items(raw: bytes, batch: bool, limits: Limits, fields: dict | None = None) -> list:
    """A JSON body's images (and the keys of `fields` it has); run off the event loop, since parsing 10 MiB
    takes a while."""
    try:
        body = json.loads(raw)
    except RecursionError:  # the C parser's stack guard: hundreds of nested arrays
        raise invalid("the JSON is nested too deeply") from None
    except ValueError:
        raise invalid("the body is not valid JSON") from None
    if fields is not None and isinstance(body, dict):
        fields.update({k: body[k] for k in fields if k in body})
    key, many = ("images", "pixels") if batch else ("image", "pixels")
    for name in (key, many) if batch and isinstance(body, dict) else ():
        values = body.get(name)  # count before converting: a body of 3,000 images is refused at once
        if isinstance(values, list) and len(values) > limits.max_batch:
            raise _too_many(len(values), limits)
    if isinstance(body, dict) and key in body:
        values = body[key]
        if not batch:
            return [_data_url_bytes(values)]
        if not isinstance(values, list):
            raise invalid(f'"{key}" must be a list of data URLs')
        return [_data_url_bytes(v) for v in values]
    if isinstance(body, dict) and many in body:
        if not batch:
            return [_pixels(body[many], (28, 28))]
        n = len(body[many]) if isinstance(body[many], list) else -1
        return list(_pixels(body[many], (n, 28, 28)))
    example = '{"images": [...]}' if batch else '{"image": "data:image/png;base64,..."}'
    raise invalid(f'expected a JSON object like {example} or {{"pixels": 28x28 numbers 0..255}}')


async def read_items(request: Request, limits: Limits, batch: bool, run=run_in_threadpool,
                     fields: dict | None = None) -> list:
    """The request's images: encoded image bytes, or uint8 (28, 28) tensors sent as pixels.

    `run(fn, *args)` runs the JSON parsing off the event loop (the server's bounded pool). The keys of
    `fields` are filled in from the form's text fields or the JSON object's keys, where they are sent."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=limits.max_batch, max_fields=limits.max_batch)
        except StarletteHTTPException as exc:
            if exc.status_code != 400:  # BodyLimit's 408 and 413, raised while the form streams in
                raise
            if exc.detail.startswith("Too many"):  # Starlette's max_files / max_fields: as for JSON
                raise HTTPException(413, f"more than {limits.max_batch} images or fields in one request; "
                                         f"the limit is {limits.max_batch}") from None
            raise invalid(f"bad multipart body: {exc.detail}") from None  # Starlette says 400: malformed
        items = [await v.read() for _, v in form.multi_items() if not isinstance(v, str)]
        if fields is not None:
            fields.update({k: form[k] for k in fields if isinstance(form.get(k), str)})
        await form.close()
        if not items:
            raise invalid("the form has no file: send the image as the field 'file'")
    elif kind == "application/json":  # the body's size is already checked (BodyLimit); parse it off the loop
        items = await run(_json_items, await request.body(), batch, limits, fields)
    elif (kind.startswith("image/") or kind == "application/octet-stream") and not batch:
        items = [await request.body()]
    else:
        also = "" if batch else ", or the image itself as image/*"
        raise HTTPException(415, f"unsupported content type {kind or '(none)'} here: send multipart/form-data "
                                 f"or application/json{also}")
    if not batch and len(items) != 1:
        raise invalid(f"send one image here ({len(items)} came); use /api/predict/batch for several")
    if not items:
        raise invalid("no images in the request")
    if len(items) > limits.max_batch:
        raise _too_many(len(items), limits)
    return items


def label_of(*values) -> int:
    """The one true label of a sample, from any of the places it may be sent (None: not there), or 422."""
    given = [v for v in values if v is not None]
    labels = set()
    for v in given:
        text = v.strip() if isinstance(v, str) else v
        if isinstance(text, str) and len(text) == 1 and text in "0123456789":
            text = int(text)
        if isinstance(text, bool) or not isinstance(text, int) or not 0 <= text <= 9:
            raise invalid(f"a label is one digit, 0 to 9, not {str(v)[:20]!r}")
        labels.add(text)
    if not labels:
        raise invalid("send the digit it really is as label=0..9: a form field, a JSON key or ?label=")
    if len(labels) > 1:
        raise invalid(f"two different labels were sent: {sorted(labels)}")
    return labels.pop()


def decode_checked(raw: bytes, max_pixels: int) -> Image.Image:
    """Refuse an image with too many pixels from its header alone (413), then decode it as the CLI does."""
    header_pixels(raw, max_pixels)
    return images.decode(raw)


def check_batch_pixels(items: list, limits: Limits) -> None:
    """Refuse a batch whose images have more pixels together than `max_batch_pixels` (413), from their
    headers, before any is decoded; an image over its own limit fails alone and is not counted."""
    total = 0
    for raw in items:
        if isinstance(raw, bytes):
            try:
                total += header_pixels(raw, limits.max_pixels)
            except HTTPException:
                pass
    if total > limits.max_batch_pixels:
        raise HTTPException(413, f"the batch's images have {total:,} pixels together; "
                                 f"the limit is {limits.max_batch_pixels:,}")


def header_pixels(raw: bytes, max_pixels: int) -> int:
    """Width x height from the image's header alone (0 when Pillow cannot parse it); over `max_pixels`, 413."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(raw)).size  # reads the header only
    except Image.DecompressionBombError as exc:  # past twice Pillow's limit: the size is only in the message
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found is None:
            raise HTTPException(413, f"the image has more than {max_pixels:,} pixels; the limit is {max_pixels:,}")
        width, height = int(found.group(1)), 1
    except Exception:  # noqa: BLE001 - not an image Pillow can parse: decode() explains why
        width = height = 0
    if width * height > max_pixels:
        raise HTTPException(413, f"the image has {width * height:,} pixels; the limit is {max_pixels:,}")
    return width * height


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
