"""Corrections from the page: `POST /api/samples` keeps a labelled digit, `DELETE /api/samples/{id}` drops one.

Only a server started with `--collect` keeps anything; any other answers 404 and keeps nothing. The
image bodies are `/api/predict`'s, with the true `label` as a form field, a JSON key or a query
parameter. The image goes through the same preprocessing and model as a prediction, and the
sample records the model's answer. A server that listens on anything but loopback needs a token
(`X-Collect-Token`, which the page takes from its own `?token=`), or anyone who can reach it could
poison the data. The store is `samples.py`'s; its writes run off the event loop.

    mnist-cnn serve --collect    # then correct the page's mistakes: "Wrong? It was a ..."
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from . import guards
from .payload import invalid, label_of, prediction_json, read_items
from .samples import Store, StoreError, encode_original, mnist_png

TOKEN_HEADER = "x-collect-token"

_BODY_DOC = {"parameters": [{"name": TOKEN_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                             "description": "the server's --collect-token (needed unless it listens on loopback)"}]}


@dataclass(frozen=True)
class Collect:
    """Where the samples go, and the token a client needs (None: none, a loopback server's default)."""

    path: Path
    token: str | None = None


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only ("localhost", 127.0.0.0/8, ::1)."""
    if host in guards.LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


def collect_token(host: str, given: str | None) -> tuple[str | None, bool]:
    """The token a collecting server bound to `host` requires, and whether it was made up here.

    Off loopback a token is always required: without --collect-token, a random one is drawn
    (the CLI prints the page's address with it)."""
    if given:
        return given, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(18), True


def add_routes(app: FastAPI, collect: Collect | None, limits, decode, batcher, image_input,
               body_doc: dict | None = None) -> Store | None:
    """Register the samples endpoints on `app`; the open store (None when not collecting), for the caller to close.

    `decode` runs work in the server's decode pool, `batcher` is its micro-batched model, and
    `image_input(raw)` gives (the decoded image, its 28x28 or None), as for a prediction. `body_doc` is the
    OpenAPI text of /api/predict's bodies.
    """
    store = Store(collect.path) if collect is not None else None

    @app.exception_handler(StoreError)
    async def store_error(request, exc):  # a store that broke while serving: say so, do not pretend it is a bug
        return JSONResponse({"detail": str(exc)}, 503)

    def check(request: Request) -> Store:
        if store is None:
            raise HTTPException(404, "this server keeps no samples; start it with `mnist-cnn serve --collect`")
        if collect.token is not None:
            sent = request.headers.get(TOKEN_HEADER) or _bearer(request.headers.get("authorization", ""))
            if not sent or not secrets.compare_digest(sent.encode(), collect.token.encode()):
                raise HTTPException(403, "keeping samples needs this server's token: open the page as "
                                         "/?token=TOKEN, or send the header X-Collect-Token (the server printed "
                                         "it at start)")
        return store

    @app.post("/api/samples", summary="Keep a labelled digit (a correction) in the samples store (--collect)",
              openapi_extra={**(body_doc or {}), **_BODY_DOC})
    async def post_sample(request: Request, label: str | None = None):
        kept = check(request)  # before the body is read: a refused client costs nothing
        fields = {"label": None, "name": None}
        [item] = await read_items(request, limits, batch=False, run=decode, fields=fields)
        digit = label_of(label, fields["label"])
        if isinstance(item, torch.Tensor):  # MNIST-form pixels: used as they are, and kept as a PNG
            x, original = item, mnist_png(item)
        else:
            img, x = await decode(image_input, item)
            if x is None:
                raise invalid("no ink found: there is no digit to keep")
            original = await decode(encode_original, img)
        [p] = await batcher(x[None])
        name = fields["name"] if isinstance(fields["name"], str) else None
        sample_id, duplicate = await run_in_threadpool(
            kept.add, x, digit, original, predicted=p.topk[0][0], probability=p.probability, source="page",
            name=name[:200] if name else None)
        return {"id": sample_id, "label": digit, "duplicate": duplicate,
                "count": await run_in_threadpool(kept.count), "prediction": prediction_json(p)}

    @app.delete("/api/samples/{sample_id}", summary="Remove a kept sample by its id (--collect)",
                openapi_extra=_BODY_DOC)
    async def delete_sample(request: Request, sample_id: int):
        kept = check(request)
        if not await run_in_threadpool(kept.delete, [sample_id]):
            raise HTTPException(404, f"there is no sample {sample_id}")
        return {"deleted": sample_id, "count": await run_in_threadpool(kept.count)}

    return store


def _bearer(value: str) -> str | None:
    kind, _, token = value.partition(" ")
    return token.strip() if kind.lower() == "bearer" else None
