"""One ASGI middleware in front of every request: request id, API keys, body size, metrics, access log.

API keys and the declared body size are checked here, before FastAPI reads a byte of the body, so an
unauthenticated or oversized upload costs nothing; a body without a Content-Length is counted while it
streams and cut off with a 413 (FastAPI's own ``max_body_size`` would answer plain text, not the error
JSON, because it wraps the app outside the exception handlers). The access log holds the route *template*, the status
and the time: never paths with ids, file names, headers or content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
import uuid

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import Busy, coded_response, error_response, iter_route_contexts
from app.metrics import Metrics
from app.settings import ASCII_SPACE, Settings

log = logging.getLogger("icseg.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUIET_ROUTES = {"/healthz", "/readyz", "/metrics"}


def key_matches(token: str, keys: list[str]) -> bool:
    """Constant-time comparison against every key (no early exit that would tell which one was close)."""
    return tenant_of(token, dict.fromkeys(keys, "")) is not None


def tenant_of(token: str, tenants: dict[str, str]) -> str | None:
    """The tenant whose key is ``token``, or None; every key is compared, in constant time, no early exit."""
    token_bytes = token.encode()
    found = None
    for key, name in tenants.items():
        if hmac.compare_digest(token_bytes, key.encode()):
            found = name
    return found


def matched_route(scope: Scope) -> str:
    """The route template a request goes to, also for requests answered here (401, 429, 503)."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return route
    app = scope.get("app")
    for candidate in iter_route_contexts(getattr(app, "routes", [])):
        try:
            match, _ = candidate.matches(scope)
        except Exception:  # noqa: BLE001 - a route that cannot match this scope
            continue
        if match == Match.FULL:
            return getattr(candidate, "path", None) or "unmatched"
    return "unmatched"


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

    def _is_public(self, path: str) -> bool:
        return (path in self.public or path.startswith("/static/")
                or (self.settings.docs and path.startswith("/docs/assets/")))

    def _reject(self, scope: Scope, headers: Headers):
        """A response for a request that must not reach the app, or None."""
        tenants = self.settings.tenants
        path = scope["path"]
        scope["icseg.tenant"] = None  # no keys: one tenant, nothing to separate
        if tenants and not self._is_public(path) and scope["method"] != "OPTIONS":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            tenant = tenant_of(token.strip(ASCII_SPACE), tenants) if scheme.lower() == "bearer" else None
            if tenant is None:
                return error_response("unauthorized", "send a valid API key as `Authorization: Bearer <key>`",
                                      "Authorization", headers={"WWW-Authenticate": "Bearer"})
            scope["icseg.tenant"] = tenant
        state = getattr(scope.get("app"), "state", None)
        stopping = getattr(state, "stopping", None)
        if stopping is not None and stopping.admitting is False and path not in ("/healthz", "/readyz"):
            return coded_response(stopping.refusal())
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.settings.max_upload_bytes:
            return error_response("too_large", f"the request body is {int(length):,} bytes, above the limit of "
                                  f"{self.settings.max_upload_bytes:,} (ICSEG_MAX_UPLOAD_MB)", None)
        if scope["method"] == "POST" and path in ("/segment", "/jobs"):
            # a full queue is answered here, before the form is parsed: a fast 429, not a timeout
            queue = getattr(state, "model" if path == "/segment" else "jobs", None)
            try:
                if queue is not None:
                    queue.ensure_room()
            except Busy as busy:
                return coded_response(busy)
        return None

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, raced against the end of a graceful stop: a request still running when the grace period
        ends is cancelled (its model work stops at the next chunk) and answered 503 JSON, never plain text."""
        stopping = getattr(getattr(scope.get("app"), "state", None), "stopping", None)
        if stopping is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, tracking_send))
        deadline = asyncio.ensure_future(stopping.cancel_now.wait())
        try:
            await asyncio.wait({work, deadline}, return_when=asyncio.FIRST_COMPLETED)
            # the wait on the stop's event can also end in an error (an event first used on another event loop,
            # as with a TestClient without its lifespan): that is no stop
            broken = deadline.done() and not deadline.cancelled() and deadline.exception() is not None
            if work.done() or started or broken:
                await work
                return
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            if not started:
                await coded_response(stopping.refusal(cancelled=True))(scope, receive, send)
        finally:
            deadline.cancel()
            if not work.done():
                work.cancel()

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
                # answered before a byte of the body is read (a fast 429, 401, 503); what the client still sends
                # is read away afterwards (the server drops it once the answer is complete)
                await rejection(scope, receive, send_with_id)
                if rejection.status_code == 429:
                    await _drain(receive, limit)
            else:
                await self._run(scope, receive_with_limit, send_with_id)
        finally:
            route = matched_route(scope)
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(elapsed)
            level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
            log.log(level, "request_id=%s method=%s route=%s status=%d duration_ms=%.1f",
                    request_id, scope["method"], route, status, elapsed * 1000)
