"""Formats by their leading bytes, never by file name (the SDK's ``icseg_client._inputs.detect_format``
gives the same answers: tests/client/test_client_formats.py pins both to one table)."""

from __future__ import annotations

import struct


def detect_format(data: bytes) -> str | None:
    """The format named by the leading bytes ("png", ..., "nifti", "dicom", "gzip"), or None."""
    # DICOM first: its 128-byte preamble is free and often holds a TIFF header (``II*\0``, as in pydicom's
    # CT_small.dcm), so the TIFF magic at byte 0 says nothing once "DICM" stands at byte 128
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data.startswith(b"\x1f\x8b"):
        return "gzip"
    if nifti_version(data):
        return "nifti"
    if data.startswith(b"NRRD000"):
        return "nrrd"
    if data.startswith(b"PK\x03\x04"):
        return "zip"  # a zipped DICOM series
    return None


def nifti_version(head: bytes) -> int:
    """1 or 2 when ``head`` starts a NIfTI header (sizeof_hdr 348 or 540, either byte order), else 0."""
    if len(head) < 4:
        return 0
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348 and len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
            return 1
        if size == 540 and len(head) >= 12 and head[4:7] in (b"n+2", b"ni2"):
            return 2
    return 0
