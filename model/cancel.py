"""Work that stops: a cancellation hook checked between model chunks.

A caller that may give up (a request whose deadline passed, a cancelled job, a server that stops) sets a
``should_stop`` callable, either passed to ``Segmenter.predict_prepared`` / ``predict_many`` or for a whole
block of work with ``stop_when(fn)`` (a context variable, so that the volume loops, which call the segmenter
chunk by chunk, stop too without carrying it). ``check`` raises ``Cancelled`` when it returns True; the
model thread is then free within one chunk (about ``CHUNK_S``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

ShouldStop = Callable[[], bool]

CHUNK_S = 1.0  # a forward pass is sized to last about this long, so that cancellation waits at most that

_current: ContextVar[ShouldStop | None] = ContextVar("icseg_should_stop", default=None)


class Cancelled(Exception):  # noqa: N818 - the state, as concurrent.futures.CancelledError
    """The caller gave up; the work stopped between two chunks."""


@contextmanager
def stop_when(should_stop: ShouldStop | None) -> Iterator[None]:
    """Within the block, ``check()`` raises ``Cancelled`` once ``should_stop()`` is True."""
    token = _current.set(should_stop)
    try:
        yield
    finally:
        _current.reset(token)


def check(should_stop: ShouldStop | None = None) -> None:
    """Raise ``Cancelled`` when ``should_stop`` (or the enclosing ``stop_when``'s) says so."""
    for fn in (should_stop, _current.get()):
        if fn is not None and fn():
            raise Cancelled
