"""Uploaded files -> ``data.io.ImageData``, with the service's limits and HTTP statuses.

Decoding is ``data.io``'s job; this module only gives it the limits from the settings and picks the
status: 415 for a format it does not know, 413 for a file over a size limit, 400 for the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import UploadFile

from app.errors import ApiError
from app.settings import Settings
from data.io import ImageData, detect_format, read_image, read_mask
from model.errors import InputError

_TOO_LARGE_HINTS = ("above the limit", "too many pixels")


async def read_upload(upload: UploadFile, field: str) -> bytes:
    data = await upload.read()
    if not data:
        raise ApiError(400, f"{field} is an empty file; send an image or volume", code="invalid_input", field=field)
    return data


def _classify(exc: InputError, data: bytes) -> Exception | None:
    # data.io raises a plain InputError for every failure; the status is told apart here by format
    # detection (a public data.io function) and, for size limits, by its message wording
    if detect_format(data) is None:
        return ApiError(415, exc.message, code="unsupported_format", field=exc.field)
    if any(hint in exc.message for hint in _TOO_LARGE_HINTS):
        return ApiError(413, exc.message, code="too_large", field=exc.field)
    return None


def decode_image(data: bytes, field: str, settings: Settings) -> ImageData:
    """Blocking: an image (H, W[, 3]) or a volume (X, Y, Z)."""
    return _decode(read_image, data, field, settings)


def decode_mask(data: bytes, field: str, settings: Settings) -> ImageData:
    """Blocking: a label map (H, W) or (X, Y, Z) of non-negative integers."""
    return _decode(read_mask, data, field, settings)


def _decode(reader: Callable[..., ImageData], data: bytes, field: str, settings: Settings) -> ImageData:
    try:
        return reader(data, max_pixels=settings.max_pixels, max_voxels=settings.max_voxels, field=field)
    except InputError as exc:
        if (status_error := _classify(exc, data)) is None:
            raise
        raise status_error from exc
