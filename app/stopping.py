"""A graceful stop: on SIGTERM the server stops admitting (503 JSON with Retry-After), lets running requests
finish for ``ICSEG_SHUTDOWN_GRACE_S``, then cancels those still running and answers them 503 JSON too.

uvicorn answers a request its own grace period cut off with a plain-text 500; ours ends first (keep
``ICSEG_SHUTDOWN_GRACE_S`` below uvicorn's ``timeout_graceful_shutdown``, as ``icseg serve`` does), so every
answer stays the error JSON. Model work stops at its next chunk (``model.cancel``).
"""

from __future__ import annotations

import asyncio
import logging

from app.errors import ApiError

log = logging.getLogger(__name__)

STOP_RETRY_AFTER_S = 5  # another replica (or this one, restarted) should answer by then


class ServerStopping(ApiError):
    code = "server_stopping"


class Stopping:
    """The stop's state, shared by the middleware (admission) and the lifespan (the event loop)."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.admitting = True
        self.cancel_now = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def refusal(self, cancelled: bool = False) -> ServerStopping:
        what = ("the server stopped before this request finished; send it again" if cancelled
                else "the server is stopping and takes no new requests")
        return ServerStopping(f"{what} (another replica, or this one after its restart, will answer)",
                              retry_after=STOP_RETRY_AFTER_S)

    def begin(self) -> None:
        """Thread-safe (a signal handler calls it): stop admitting now, cancel what runs after the grace."""
        if not self.admitting:
            return
        self.admitting = False
        log.info("stopping: new requests get 503; running ones have %.0f s", self.grace_s)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.call_later, self.grace_s, self.cancel_now.set)
