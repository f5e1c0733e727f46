"""One ASGI middleware in front of every request: request id, API keys, body size, metrics, access log.

API keys and the declared body size are checked here, before FastAPI reads a byte of the body, so an
unauthenticated or oversized upload costs nothing; a body without a Content-Length is counted while it
streams and cut off with a 413 (FastAPI's own ``max_body_size`` would answer plain text, not the error
JSON, because it wraps the app outside the exception handlers). The access log holds the route *template*, the status
and the time: never paths with ids, file names, headers or content.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import Busy, coded_response, error_response
from app.metrics import Metrics
from app.settings import Settings

log = logging.getLogger("icseg.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}


def key_matches(token: str, keys: list[str]) -> bool:
    """Constant-time comparison against every key (no early exit that would tell which one was close)."""
    token_bytes = token.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token_bytes, key.encode())
    return ok


async def _drain(receive: Receive, limit: int) -> None:
    """Receive and drop a request body (at most ``limit`` bytes): the connection stays usable."""
    received = 0
    while received <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class RequestContext:
    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.public = {"/healthz", "/readyz", "/"}  # "/" and /static/: the viewer's page, which holds no data
        if settings.docs:
            self.public |= {"/docs", "/docs/oauth2-redirect", "/openapi.json"}

    def _reject(self, scope: Scope, headers: Headers):
        """A response for a request that must not reach the app, or None."""
        keys = self.settings.api_keys
        path = scope["path"]
        if keys and path not in self.public and not path.startswith("/static/") and scope["method"] != "OPTIONS":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key_matches(token.strip(), keys):
                return error_response("unauthorized", "send a valid API key as `Authorization: Bearer <key>`",
                                      "Authorization", headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.settings.max_upload_bytes:
            return error_response("too_large", f"the request body is {int(length):,} bytes, above the limit of "
                                  f"{self.settings.max_upload_bytes:,} (ICSEG_MAX_UPLOAD_MB)", None)
        if scope["method"] == "POST" and path == "/segment":
            # a full model queue is answered here, before the form is parsed: a fast 429, not a timeout
            model = getattr(getattr(scope.get("app"), "state", None), "model", None)
            try:
                if model is not None:
                    model.ensure_room()
            except Busy as busy:
                return coded_response(busy)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope["icseg.request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        limit = self.settings.max_upload_bytes
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Starlette's HTTPException: FastAPI re-raises it from body parsing (anything else would
                    # become "error parsing the body"), app.errors answers it as too_large
                    raise HTTPException(413, f"the request body exceeds {limit:,} bytes (ICSEG_MAX_UPLOAD_MB)")
            return message

        try:
            rejection = self._reject(scope, headers)
            if rejection is not None:
                if rejection.status_code == 429:  # read the upload away, so that the client reads the answer
                    await _drain(receive, limit)
                await rejection(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_with_limit, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(elapsed)
            level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
            log.log(level, "request_id=%s method=%s route=%s status=%d duration_ms=%.1f",
                    request_id, scope["method"], route, status, elapsed * 1000)
