"""``read_image`` and ``read_mask``: a path or bytes -> ``ImageData``, the decoder chosen by the leading bytes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from data.errors import InputError
from data.io.base import DEFAULT_MAX_PIXELS, DEFAULT_MAX_VOXELS, ImageData
from data.io.detect import detect_format
from data.io.dicom import decode_dicom
from data.io.dicom_series import decode_dicom_series, unzip_series
from data.io.labels import as_label_map
from data.io.nifti import decode_nifti
from data.io.nrrd_io import decode_nrrd
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


def read_series(
    sources: list[str | os.PathLike | bytes],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    field: str = "query",
) -> ImageData:
    """One query given as one file (as ``read_image``) or as several DICOM files of one series.

    Several files are sorted by position along the slice normal and checked (``data.io.dicom_series``).

    Raises:
        InputError: as ``read_image``; several files that are not all DICOM, or not one uniform series.
    """
    if len(sources) == 1:
        return read_image(sources[0], max_pixels=max_pixels, max_voxels=max_voxels, field=field)
    parts = [_read_source(src, f"{field}[{i}]") for i, src in enumerate(sources)]
    for i, data in enumerate(parts):
        if detect_format(data) != "dicom":
            raise InputError(f"{field}[{i}]: several {field} files make a DICOM series, and this one is not DICOM; "
                             f"send one file, or only the DICOM files of one series", field=f"{field}[{i}]",
                             code="unsupported_format")
    if max_voxels is not None and sum(map(len, parts)) > 8 * max_voxels + (1 << 20):
        raise InputError(f"{field}: the series is larger than the voxel limit allows", field=field, code="too_large")
    return decode_dicom_series(parts, max_pixels, max_voxels, field)


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
        return decode_dicom(data, max_pixels, field, max_voxels)
    if fmt == "zip":  # a zipped DICOM series (or one zipped file)
        parts = unzip_series(data, max_voxels, field)
        if len(parts) == 1:
            return decode_dicom(parts[0], max_pixels, field, max_voxels)
        return decode_dicom_series(parts, max_pixels, max_voxels, field)
    if fmt == "nrrd":
        return decode_nrrd(data, max_voxels, field)
    raise InputError(
        f"{field}: unrecognised file format (leading bytes {data[:8]!r}); send PNG, JPEG, TIFF, BMP, "
        "NIfTI (.nii or .nii.gz), NRRD, DICOM (a file, a multi-frame instance or a zipped series)",
        field=field, code="unsupported_format",
    )
