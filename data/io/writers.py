"""Writing: a mask in the format and geometry of its query, PNG bytes, and any array for tests and examples.
Every file goes through ``write_atomic``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data.errors import InputError
from data.io.atomic import write_atomic
from data.io.base import ImageData
from data.io.dicom import dicom_bytes
from data.io.nifti import nifti_bytes, nifti_mask_bytes, nifti_probs_bytes
from data.io.nrrd_io import nrrd_bytes, seg_nrrd_bytes
from data.io.pillow import lossy_bytes, pillow_bytes
from data.io.segments import labels_present, segments_for

_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def to_png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of (H, W) bool/uint8/uint16 (mode 1/L/I;16) or (H, W, 3|4) uint8 (RGB/RGBA).

    Integer arrays of other types are accepted when their values fit uint8 or uint16.

    Raises:
        InputError: float or out-of-range values, or an unsupported shape.
    """
    return pillow_bytes(array, "PNG", field="array")


def encode_mask(mask: np.ndarray, like: ImageData, names: dict[str, str] | None = None) -> tuple[bytes, str, str]:
    """Encode a label map in the format and geometry of the query it was predicted for.

    Args:
        mask: (H, W) for an image query, (H, W, D) for a volume query; non-negative integers.
        like: the query as read by ``read_image``.
        names: label value (as a string) -> name, for formats that carry names (``.seg.nrrd``).

    Returns:
        (bytes, media type, file extension): PNG for PNG/JPEG/BMP/DICOM queries, TIFF for TIFF queries,
        gzipped NIfTI (.nii.gz) with the query's affine and header for NIfTI queries (DICOM volumes: their
        affine in RAS), ``.seg.nrrd`` with the query's space, directions and origin for NRRD queries (a segment
        per label present, named and coloured). 8-bit when every label is at most 255, else 16-bit.

    Raises:
        InputError: the mask's shape differs from the query's, or its values are not labels.
    """
    mask = np.asarray(mask)
    if mask.shape != like.shape:
        raise InputError(f"mask has shape {mask.shape} but the query has {like.shape}", field="mask")
    if mask.dtype.kind == "f" or mask.dtype.kind == "c":
        raise InputError(f"mask must hold integer labels, got {mask.dtype}", field="mask")
    top = int(mask.max()) if mask.size else 0
    if (mask.size and int(mask.min()) < 0) or top > 65535:
        raise InputError("mask labels must be in 0..65535", field="mask")
    mask = mask.astype(np.uint8 if top <= 255 else np.uint16)
    if like.kind == "volume" and like.format == "nrrd":
        segments = segments_for(labels_present(mask), names)
        payload = seg_nrrd_bytes(mask, like.affine, like.meta.get("space"), segments)
        return payload, "application/x-nrrd", ".seg.nrrd"
    if like.kind == "volume":
        return nifti_mask_bytes(mask, like.as_nifti()), "application/gzip", ".nii.gz"
    if like.format == "tiff":
        return pillow_bytes(mask, "TIFF", field="mask"), "image/tiff", ".tif"
    return pillow_bytes(mask, "PNG", field="mask"), "image/png", ".png"


def encode_probs(probs: np.ndarray, like: ImageData) -> bytes:
    """Per-label probabilities of a volume query as a gzipped float32 NIfTI in its geometry.

    Args:
        probs: (K, H, W, D) float32 in [0, 1], in the order of the label values.
        like: the volume query as read by ``read_image``.

    Returns:
        The .nii.gz bytes of an (H, W, D, K) image with the query's affine and header.
    """
    probs = np.asarray(probs)
    if like.kind != "volume" or probs.shape[1:] != like.shape:
        raise InputError(f"probabilities of shape {probs.shape} do not fit the query {like.shape}", field="probs")
    return nifti_probs_bytes(np.moveaxis(probs, 0, -1), like.as_nifti())


def write_mask(mask: np.ndarray, like: ImageData, path: str | os.PathLike) -> Path:
    """Write ``encode_mask``'s bytes to ``path`` atomically (temporary file, then rename).

    Returns:
        The path written (unchanged: pick the extension from ``encode_mask`` if it matters).
    """
    payload, _, _ = encode_mask(mask, like)
    return write_atomic(Path(path), payload)


def save_image(array: np.ndarray, path: str | os.PathLike, *, affine: np.ndarray | None = None) -> Path:
    """Write an array in the format named by the extension; the inverse of ``read_image`` for tests/examples.

    Args:
        array: (H, W) or (H, W, 3|4) for .png/.jpg/.jpeg/.tif/.tiff/.bmp (uint8, uint16 for PNG/TIFF);
            (H, W) uint8/uint16 for .dcm (a minimal anonymous single-frame DICOM);
            (H, W, D) any real dtype for .nii/.nii.gz and .nrrd (RAS).
        path: destination; written atomically.
        affine: (4, 4) NIfTI affine (identity if None).

    Returns:
        The path written.
    """
    path = Path(path)
    name = path.name.lower()
    array = np.asarray(array)
    if name.endswith((".nii", ".nii.gz")):
        payload = nifti_bytes(array, affine, gzipped=name.endswith(".gz"))
    elif name.endswith(".nrrd"):
        payload = nrrd_bytes(array, affine)
    elif name.endswith(".dcm"):
        payload = dicom_bytes(array)
    else:
        fmt = _SAVE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(f"cannot tell the format from {path.name}; use a known extension", field="path")
        payload = pillow_bytes(array, fmt, field="array") if fmt in ("PNG", "TIFF") else lossy_bytes(array, fmt)
    return write_atomic(path, payload)
