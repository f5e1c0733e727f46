"""Typed errors of the model package. ``CodedError`` and ``InputError`` live on the ground floor
(``data/errors.py``) and are re-exported here; ``WeightsError`` is the model's own."""

from __future__ import annotations

from data.errors import CodedError, InputError

__all__ = ["CodedError", "InputError", "WeightsError"]


class WeightsError(CodedError, RuntimeError):
    """Weights are missing or do not match the network; the message says what to set."""

    code = "weights_error"
