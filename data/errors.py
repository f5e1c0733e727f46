"""Typed errors of the ground floor, shared by every layer above it.

``CodedError`` is the one base of the errors the product raises on purpose: a stable machine-readable
``code``, a ``message`` that says what to change and the ``field`` (the input) to change. The service maps
codes to HTTP statuses in ``app/errors.py``; the command line prints the message.
"""

from __future__ import annotations


class CodedError(Exception):
    """An error with a stable ``code``, a ``message`` and the ``field`` to change.

    Args:
        message: what went wrong and what to change.
        field: the input to change, e.g. ``support_masks[2]``; None when it is not one input.
        code: overrides the class's code, e.g. "too_large" for an InputError.
    """

    code = "error"

    def __init__(self, message: str, field: str | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class InputError(CodedError, ValueError):
    """The caller's input cannot be used as given (format, size, shape, count, values).

    Codes: "invalid_input" (the default), "too_large", "unsupported_format" (decoders); "missing_support",
    "support_count_mismatch", "too_many_support_items", "too_many_labels" (support sets).
    """

    code = "invalid_input"
