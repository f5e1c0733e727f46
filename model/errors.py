"""Typed errors of the model package. Each names the field to change."""

from __future__ import annotations


class IcsegError(Exception):
    """Base class; ``code`` is a stable machine-readable string, ``field`` the input to change."""

    code = "icseg_error"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InputError(IcsegError, ValueError):
    """The caller's input cannot be segmented as given (shape, count, values)."""

    code = "invalid_input"


class WeightsError(IcsegError, RuntimeError):
    """Weights are missing or do not match the network."""

    code = "weights_error"
