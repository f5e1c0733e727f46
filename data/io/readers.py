"""``read_image`` and ``read_mask``: a path or bytes -> ``ImageData``, the decoder chosen by the leading bytes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from data.errors import InputError
from data.io.base import DEFAULT_MAX_PIXELS, DEFAULT_MAX_VOXELS, ImageData
from data.io.detect import detect_format
from data.io.dicom import decode_dicom
from data.io.labels import as_label_map
from data.io.nifti import decode_nifti
from data.io.pillow import PILLOW_FORMATS, decode_pillow

log = logging.getLogger(__name__)


def read_image(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    field: str = "query",
) -> ImageData:
    """Decode a 2D image or a 3D volume.

    Args:
        source: a path or the file's bytes.
        max_pixels: largest H x W accepted for 2D formats (None: only Pillow's own bomb limit).
        max_voxels: largest H x W x D accepted for volumes (None: no limit).
        field: the input's name, reported in errors.

    Returns:
        ImageData; RGBA becomes RGB, palette images RGB, LA becomes L, 16-bit stays 16-bit.

    Raises:
        InputError: unknown format (code "unsupported_format"), too large ("too_large"), damaged or
            truncated file, unsupported dimensionality ("invalid_input").
    """
    return _decode(_read_source(source, field), max_pixels, max_voxels, field, as_mask=False)


def read_mask(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    field: str = "mask",
) -> ImageData:
    """Decode a label map: (H, W) or (H, W, D) of non-negative integers (0 background, 1..K structures).

    Palette PNGs give their palette indices; grey RGB(A) PNGs their first channel; float NIfTI masks
    must hold whole numbers.

    Returns:
        ImageData whose array is uint8, uint16 or uint32 (the smallest that holds the labels).

    Raises:
        InputError: as ``read_image``, and colour masks, fractional, negative or non-finite values.
    """
    image = _decode(_read_source(source, field), max_pixels, max_voxels, field, as_mask=True)
    image.array = as_label_map(image.array, field, colour=image.kind == "image")
    image.meta["dtype"] = str(image.array.dtype)
    if image.format == "jpeg":
        log.warning("%s is a JPEG: lossy compression alters label values; prefer PNG for masks", field)
    return image


def _read_source(source: str | os.PathLike | bytes, field: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if not isinstance(source, str | os.PathLike):
        raise InputError(f"{field} must be a path or bytes, got {type(source).__name__}", field=field)
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError(f"{field}: file not found: {path}", field=field)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{field}: cannot read {path}: {exc.strerror or exc}", field=field) from exc


def _decode(data: bytes, max_pixels: int | None, max_voxels: int | None, field: str, as_mask: bool) -> ImageData:
    if not data:
        raise InputError(f"{field} is empty: send an image or volume file", field=field)
    fmt = detect_format(data)
    if fmt in PILLOW_FORMATS:
        return decode_pillow(data, fmt, max_pixels, field, as_mask)
    if fmt in ("nifti", "gzip"):
        return decode_nifti(data, fmt == "gzip", max_voxels, field)
    if fmt == "dicom":
        return decode_dicom(data, max_pixels, field)
    raise InputError(
        f"{field}: unrecognised file format (leading bytes {data[:8]!r}); send PNG, JPEG, TIFF, BMP, "
        "NIfTI (.nii or .nii.gz) or single-frame DICOM",
        field=field, code="unsupported_format",
    )
