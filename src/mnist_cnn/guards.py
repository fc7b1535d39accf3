"""HTTP guards around the REST API: connection timeouts, the Host allow-list, same-origin POSTs, headers.

uvicorn times out a connection that is idle *after* a response (keep-alive), but not one that
never completes its first request's headers: 256 of those once held every connection slot, so
every request, /healthz too, got 503 for as long as they stayed open. `HeaderTimeout` closes
them. `Guards` is ASGI middleware: it answers only for the host names the server is meant to
be reached by (a DNS-rebinding page resolves its own name to 127.0.0.1, and its requests carry
that name), refuses POSTs that a browser marks as coming from another site (forms can post
across sites without CORS), and adds `nosniff` and `frame-ancestors` to every response.

    mnist-cnn serve --allowed-host digits.example.org    # the name a reverse proxy forwards
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from .payload import Limits

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FRAME_CSP = "frame-ancestors 'none'"  # no page elsewhere may frame ours (clickjacking)


class HeaderTimeout:
    """Protocol mixin: close a connection that has no request in progress `header_timeout_s` after it
    opened or after its last response (a request whose headers are in is the body limit's business)."""

    header_timeout_s = Limits.header_timeout_s  # a protocol class has no per-server settings: the default

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self):
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc):
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self):
        self._cancel_header_timer()
        self._header_timer = asyncio.get_running_loop().call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self):
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()

    def _header_timeout(self):
        busy = self.cycle is not None and not self.cycle.response_complete
        if not busy and not self.transport.is_closing():
            self.transport.close()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional; uvicorn then uses h11, and so do we
    HttpToolsProtocol = None
from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11(HeaderTimeout, H11Protocol):
    pass


PROTOCOL: type = GuardedH11  # uvicorn's own choice, httptools when installed, with the header timeout
if HttpToolsProtocol is not None:
    class GuardedHttpTools(HeaderTimeout, HttpToolsProtocol):
        pass

    PROTOCOL = GuardedHttpTools


def http_protocol() -> str:
    """uvicorn's `http` setting, as an import string so that `--workers` processes can load it too."""
    return f"{__name__}:{PROTOCOL.__name__}"


def allowed_hosts(bind: str, extra: list[str] | None = None) -> list[str] | None:
    """The Host names to answer for; None means any (a wildcard bind with no --allowed-host, or "*").

    A loopback server answers for loopback names only, which is what stops DNS rebinding.
    """
    extra = list(extra or [])
    if "*" in extra or (bind in WILDCARDS and not extra):
        return None
    return list(dict.fromkeys([*LOOPBACK_NAMES, *([] if bind in WILDCARDS else [bind]), *extra]))


def host_name(value: str) -> str:
    """The name in a Host header or an origin's authority, without its port: "[::1]:8000" -> "::1"."""
    try:
        return (urlsplit("//" + value).hostname or "").lower()
    except ValueError:  # an invalid port or bracket
        return ""


def _authority(origin: str) -> str | None:
    """ "http://localhost:8000" -> "localhost:8000"; None for "null" and anything unparsable."""
    try:
        return urlsplit(origin).netloc.lower() or None
    except ValueError:
        return None


class Guards:
    """ASGI middleware for the checks above; `page_csp` maps paths to their Content-Security-Policy."""

    def __init__(self, app, allowed_hosts: list[str] | None, page_csp: dict[str, str]):
        self.app, self.page_csp = app, page_csp
        self.allowed = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = self.page_csp.get(scope["path"], FRAME_CSP)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff"),
                                                  (b"content-security-policy", csp.encode())]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            return await JSONResponse({"detail": refusal[1]}, refusal[0])(scope, receive, with_headers)
        return await self.app(scope, receive, with_headers)

    def refusal(self, scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.allowed is not None and host_name(host) not in self.allowed:
            return 400, (f"this server does not answer for the host {host[:100]!r}; start it with "
                         f"--allowed-host NAME for each name clients use")
        if scope["method"] not in UNSAFE_METHODS:
            return None
        # Browsers mark where a request comes from; other clients (curl, scripts) send neither header.
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if site is not None and site not in ("same-origin", "none"):
            return 403, f"cross-origin requests are refused (Sec-Fetch-Site: {site[:40]})"
        if origin is not None and _authority(origin) != host.lower():
            return 403, f"cross-origin requests are refused (Origin: {origin[:100]})"
        return None
