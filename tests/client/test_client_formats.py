"""The SDK and the service read a file's format from its leading bytes by the same rules: one table, both
detectors (``icseg_client._inputs.detect_format`` cannot import ``data.io``: the SDK installs alone)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from icseg_client._inputs import detect_format as sdk_detect
from pydicom.data import get_testdata_file

from data.io import detect_format as service_detect
from data.io.dicom import dicom_bytes
from data.io.nifti import nifti_bytes
from data.io.pillow import lossy_bytes, pillow_bytes


def _nifti2() -> bytes:
    return nib.Nifti2Image(np.zeros((4, 4, 2), np.int16), np.eye(4)).to_bytes()


def _swapped(header: bytes) -> bytes:
    """The first field (sizeof_hdr) in the other byte order, as a big-endian writer stores it."""
    (size,) = struct.unpack("<i", header[:4])
    return struct.pack(">i", size) + header[4:]


_image = np.arange(36, dtype=np.uint8).reshape(6, 6)
_nifti1 = nifti_bytes(np.zeros((4, 4, 2), np.float32), None, gzipped=False)
_pair_header = _nifti1[:344] + b"ni1\x00" + _nifti1[348:]  # a .hdr of a .hdr/.img pair

# (case, leading bytes, the service's answer); the SDK says "unknown" where the service says None
TABLE = [
    ("png", pillow_bytes(_image, "PNG", field="x"), "png"),
    ("jpeg", lossy_bytes(_image, "JPEG"), "jpeg"),
    ("tiff-little-endian", pillow_bytes(_image, "TIFF", field="x"), "tiff"),
    ("tiff-big-endian", b"MM\x00*" + b"\x00" * 60, "tiff"),
    ("bigtiff", b"II+\x00" + b"\x00" * 60, "tiff"),
    ("bmp", lossy_bytes(_image, "BMP"), "bmp"),
    ("bm-too-short-for-a-bmp-header", b"BM" + b"\x00" * 10, None),
    ("gzip (a .nii.gz)", gzip.compress(_nifti1), "gzip"),
    ("nifti-1", _nifti1, "nifti"),
    ("nifti-1-big-endian", _swapped(_nifti1), "nifti"),
    ("nifti-1-pair-header", _pair_header, "nifti"),
    ("nifti-2", _nifti2(), "nifti"),
    ("348-bytes-size-without-nifti-magic", struct.pack("<i", 348) + b"\x00" * 400, None),
    ("dicom", dicom_bytes(_image), "dicom"),
    ("empty", b"", None),
    ("text", b"plain text, not an image", None),
    ("html-named-png", b"<html><script>alert(1)</script></html>", None),
    ("zip (a zipped DICOM series)", b"PK\x03\x04" + b"\x00" * 200, "zip"),
    ("nrrd", b"NRRD0004\ntype: uint8\n", "nrrd"),
    # a DICOM whose free preamble starts like a TIFF (pydicom's CT_small.dcm, MR_small.dcm): DICOM wins
    ("dicom-with-tiff-preamble", b"II*\x00" + b"\x00" * 124 + dicom_bytes(_image)[128:], "dicom"),
    ("dicom-with-big-endian-tiff-preamble", b"MM\x00*" + b"\x00" * 124 + dicom_bytes(_image)[128:], "dicom"),
]

# every DICOM file pydicom ships in its wheel (offline): all of them are DICOM by their bytes, whatever
# their preamble holds
_PYDICOM_FILES = sorted(Path(get_testdata_file("CT_small.dcm")).parent.glob("*.dcm"))


@pytest.mark.parametrize(("data", "expected"), [(d, e) for _, d, e in TABLE], ids=[c for c, _, _ in TABLE])
def test_the_sdk_and_the_service_detect_the_same_format(data, expected):
    assert service_detect(data) == expected
    assert sdk_detect(data) == (expected or "unknown")


def test_pydicom_ships_dicom_files_with_tiff_looking_preambles():
    tiff_like = [p.name for p in _PYDICOM_FILES if p.read_bytes()[:4] in (b"II*\x00", b"MM\x00*")]
    assert "CT_small.dcm" in tiff_like and "MR_small.dcm" in tiff_like


@pytest.mark.parametrize("path", _PYDICOM_FILES, ids=lambda p: p.name)
def test_every_dicom_file_pydicom_ships_is_detected_as_dicom(path):
    head = path.read_bytes()[:512]
    if head[128:132] != b"DICM":
        pytest.skip("a raw dataset without the DICM prefix (no File Meta): not a DICOM file by its bytes")
    assert service_detect(head) == "dicom"
    assert sdk_detect(head) == "dicom"
