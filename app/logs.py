"""Logs without request content: exception messages (a decoder's text quotes the file: a DICOM PixelSpacing
of ``Jane\\Doe`` gives "could not convert string to float: 'Jane'") never reach a log line.

``ScrubbedFormatter`` writes a traceback as its frames (file, line, function) and the exception types of the
chain, never their messages or source lines holding values; ``icseg serve`` installs it on every handler,
so uvicorn's own tracebacks are scrubbed too.
"""

from __future__ import annotations

import logging
import traceback

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def scrubbed_traceback(exc: BaseException) -> str:
    """The frames and exception types of ``exc`` and its causes: no message, no local values."""
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)
        part = [f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in frames]
        part.append(f"{type(current).__module__}.{type(current).__qualname__} (message withheld)")
        lines = [*part, *(["The above exception caused:"] if lines else []), *lines]
        current = current.__cause__ or current.__context__
    return "Traceback (most recent call last), scrubbed:\n" + "\n".join(lines)


class ScrubbedFormatter(logging.Formatter):
    """A formatter whose tracebacks carry no exception messages."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        _, exc, _ = ei
        return scrubbed_traceback(exc) if exc is not None else ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return stack_info


# the decoders' loggers and Python's warnings: their text quotes the file ("Invalid value for VR DS: 'Jane'")
_DECODER_LOGGERS = ("pydicom", "PIL", "nibabel", "highdicom", "nrrd", "py.warnings", "multipart", "python_multipart")


class WithholdDecoderText(logging.Filter):
    """A decoder's record keeps its level and logger, loses its text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in _DECODER_LOGGERS:
            record.msg, record.args = f"{record.name} {record.levelname.lower()} (message withheld)", ()
        return True


def install(fmt: str = FORMAT) -> None:
    """Scrub every handler of the root logger (and give one to a root without handlers); route Python's
    warnings (printed to stderr with their text otherwise) through logging, withheld."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(ScrubbedFormatter(fmt))
        if not any(isinstance(f, WithholdDecoderText) for f in handler.filters):
            handler.addFilter(WithholdDecoderText())
