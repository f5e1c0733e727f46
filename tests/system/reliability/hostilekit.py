"""The files of the adversarial review (issue 13), built byte by byte: each is a few kilobytes on the wire
and, before the per-request budget, took gigabytes, hours of model time or a 500.

Shared by tests/system/reliability/test_hostile_requests.py and bench/bench_hostile.py.
"""

from __future__ import annotations

import gzip
import io
import struct

import nibabel as nib
import numpy as np
from PIL import Image

from data.io.dicom import dicom_bytes


def png_gray(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def big_png(side: int = 6000, value: int = 0) -> bytes:
    """A valid side x side grey PNG of one value: tens of kilobytes that decode to side^2 bytes."""
    return png_gray(np.full((side, side), value, np.uint8))


def labels_mask(side: int = 64, labels: int = 16) -> bytes:
    """A side x side mask holding ``labels`` labels in vertical bands (every label is one model pass)."""
    mask = (np.arange(side)[None, :] * labels // side + 1).repeat(side, 0).astype(np.uint8)
    return png_gray(mask)


def big_support_pair(side: int = 6000) -> tuple[bytes, bytes]:
    image = np.zeros((side, side), np.uint8)
    mask = np.zeros((side, side), np.uint8)
    image[side // 4: side // 2, side // 4: side // 2] = 200
    mask[side // 4: side // 2, side // 4: side // 2] = 1
    return png_gray(image), png_gray(mask)


def nifti_gz(volume: np.ndarray, affine: np.ndarray | None = None, version: int = 1) -> bytes:
    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    return gzip.compress(klass(volume, np.eye(4) if affine is None else affine).to_bytes(), compresslevel=6)


def cube_pair(side: int = 400) -> tuple[bytes, bytes]:
    """A 3D support pair of side^3 voxels (a ball of label 1), gzipped: ~200 KB for 64 M voxels."""
    volume = np.zeros((side,) * 3, np.uint8)
    c = side // 2
    volume[c - side // 8: c + side // 8, c - side // 8: c + side // 8, c - side // 8: c + side // 8] = 1
    return nifti_gz(volume * 100), nifti_gz(volume)


def float64_header_bomb(voxels: int = 100_000_000) -> bytes:
    """A .nii.gz of ``voxels`` float64 zeros: under 1 MB gzipped, 800 MB decoded."""
    side = round(voxels ** (1 / 3))
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float64)
    header.set_data_shape((side, side, voxels // side // side))
    header["vox_offset"] = 352
    n = int(np.prod(header.get_data_shape())) * 8
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(header.binaryblock + b"\x00" * 4)
        block = b"\x00" * (1 << 22)
        for start in range(0, n, len(block)):
            gz.write(block[: min(len(block), n - start)])
    return out.getvalue()


def one_slice_nifti(side: int = 7000) -> bytes:
    """A (side, side, 1) uint8 NIfTI: a 2D image of side^2 pixels that a voxel limit let through."""
    return nifti_gz(np.zeros((side, side, 1), np.uint8))


def long_line_nifti2(length: int = 8_000_000) -> bytes:
    """A 1 x 1 x ``length`` NIfTI-2 (a few KB): within the voxel limit, ``length`` slices of model work."""
    return nifti_gz(np.zeros((1, 1, length), np.uint8), version=2)


def jpeg_declaring(width: int = 6000, height: int = 6000) -> bytes:
    """A ~700-byte JPEG of 16 x 16 pixels whose SOF header is patched to claim width x height."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(buf, format="JPEG", quality=50)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def deflated_dicom(private_mb: int = 300) -> bytes:
    """A deflated DICOM whose private element inflates to ``private_mb`` MB of zeros (a few hundred KB sent)."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((8, 8), np.uint8))))
    ds.add_new(0x00091010, "LO", "ICSEG ATTACK")  # private creator
    ds.add_new(0x00091011, "OB", b"\x00" * (private_mb << 20))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# -- the eight 500s --------------------------------------------------------------------------------------


def tiff_with_bad_next_ifd(array: np.ndarray | None = None) -> bytes:
    """A little-endian TIFF whose first IFD's next-IFD pointer leads to an IFD without an ImageWidth tag."""
    array = np.full((16, 16), 100, np.uint8) if array is None else array
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"II*\x00"
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    next_at = first + 2 + 12 * count
    extra = len(data) + (len(data) % 2)
    data += b"\x00" * (extra - len(data))
    # one entry: PhotometricInterpretation = 1, then "no next IFD"
    data += struct.pack("<H", 1) + struct.pack("<HHII", 262, 3, 1, 1) + struct.pack("<I", 0)
    struct.pack_into("<I", data, next_at, extra)
    return bytes(data)


def dicom_with_pixel_spacing(text: bytes = b"abc\\defg") -> bytes:
    """A DICOM whose PixelSpacing (DS, two numbers) holds ``text`` (8 bytes), e.g. b"Jane\\\\Doe"."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.full((16, 16), 100, np.uint8))))
    ds.PixelSpacing = [1.25, 1.5]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    assert len(text) == 8 and raw.count(b"1.25\\1.5") == 1
    return raw.replace(b"1.25\\1.5", text)


def mask_with_label(value: int = 70_000, shape: tuple[int, int] = (48, 56)) -> bytes:
    """A 2D mask (a one-slice int32 NIfTI) holding label ``value``: above what a PNG mask holds."""
    mask = np.zeros((*shape, 1), np.int32)
    mask[10:30, 10:30] = value
    return nifti_gz(mask)


def nifti_nan_srow(volume: np.ndarray) -> bytes:
    """A NIfTI whose sform rows are all NaN (sform_code 1)."""
    img = nib.Nifti1Image(volume, np.eye(4))
    header = img.header
    header.set_sform(np.eye(4), code=1)
    raw = bytearray(img.to_bytes())
    for name in ("srow_x", "srow_y", "srow_z"):
        offset = {"srow_x": 280, "srow_y": 296, "srow_z": 312}[name]
        struct.pack_into("<4f", raw, offset, *([float("nan")] * 4))
    struct.pack_into("<h", raw, 252, 0)  # qform_code 0: the NaN sform is the only orientation
    struct.pack_into("<h", raw, 254, 1)  # sform_code 1
    return gzip.compress(bytes(raw))


def nifti_huge_vox_offset(volume: np.ndarray) -> bytes:
    raw = bytearray(nib.Nifti1Image(volume, np.eye(4)).to_bytes())
    struct.pack_into("<f", raw, 108, 1e38)  # vox_offset
    return gzip.compress(bytes(raw))
