"""Whatever a user holds (a path, bytes, a numpy array, a PIL image, a nibabel image) -> one upload.

Arrays are encoded losslessly: uint8/uint16 (and whole-number labels) as PNG, other 2D numbers as 32-bit
float TIFF, 3D arrays as NIfTI. Files are sent as they are: the service detects formats by their leading
bytes, so file names are never sent (``query.png``, ``support_images-3.nii.gz`` stand in).

Letters: H x W a 2D image; a volume is (H, W, D), D slices along its last axis.
"""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image

from ._errors import InvalidInputError, MissingDependencyError

if TYPE_CHECKING:
    import nibabel

# what the SDK accepts wherever an image, volume or mask goes
ImageInput = Union[
    str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image, "nibabel.spatialimages.SpatialImage",
    IO[bytes],
]

_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "gzip": ".nii.gz", "nifti": ".nii",
               "dicom": ".dcm"}
_MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff", "bmp": "image/bmp",
          "gzip": "application/gzip", "nifti": "application/octet-stream", "dicom": "application/dicom"}
_PNG_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16"}


@dataclass(frozen=True)
class Upload:
    """One file of a multipart request.

    Attributes:
        field: the form field and index it is sent as, e.g. ``support_masks[2]`` (used in error messages).
        content: the file's bytes.
        format: "png", "jpeg", "tiff", "bmp", "nifti", "gzip" (a .nii.gz), "dicom" or "unknown".
    """

    field: str
    content: bytes
    format: str

    @property
    def is_volume(self) -> bool:
        return self.format in ("nifti", "gzip")

    def multipart(self, name: str) -> tuple[str, tuple[str, bytes, str]]:
        stem = self.field.replace("[", "-").replace("]", "")
        filename = stem + _EXTENSIONS.get(self.format, ".bin")
        return name, (filename, self.content, _MEDIA.get(self.format, "application/octet-stream"))


def detect_format(data: bytes) -> str:
    """The format named by a file's leading bytes, or "unknown": the service's own rules (``data/io/detect.py``
    on the server; tests/client/test_client_formats.py pins both to one table)."""
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
    if _nifti_version(data):
        return "nifti"
    if data.startswith(b"NRRD000"):
        return "nrrd"
    if data.startswith(b"PK\x03\x04"):
        return "zip"  # a zipped DICOM series
    return "unknown"


def _nifti_version(head: bytes) -> int:
    """1 or 2 when ``head`` starts a NIfTI header (sizeof_hdr 348 or 540, either byte order), else 0."""
    if len(head) < 4:
        return 0
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order, signed=True)
        if size == 348 and len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
            return 1
        if size == 540 and len(head) >= 12 and head[4:7] in (b"n+2", b"ni2"):
            return 2
    return 0


def _is_nibabel_image(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("affine", "header", "dataobj")) and not isinstance(obj, np.ndarray)


def to_upload(obj: Any, field: str, *, mask: bool = False) -> Upload:
    """Encode one input for sending.

    Args:
        obj: a file path (str or PathLike), the file's bytes, a binary file object, a numpy array
            ((H, W), (H, W, 3|4) uint8 colour, or (H, W, D) a volume), a PIL image or a nibabel image.
        field: the argument's name for error messages, e.g. ``support_images[0]``.
        mask: the input is a label map: floats must hold whole numbers, colour arrays are refused.

    Returns:
        The upload.

    Raises:
        InvalidInputError: a missing file, an empty input, or an array that cannot be encoded.
        MissingDependencyError: a 3D array without nibabel installed.
    """
    if isinstance(obj, str | os.PathLike):
        data = _read_path(obj, field)
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
    elif isinstance(obj, np.ndarray):
        return _from_array(obj, field, mask)
    elif isinstance(obj, Image.Image):
        return _from_pil(obj, field, mask)
    elif _is_nibabel_image(obj):
        return _from_nibabel(obj, field)
    elif hasattr(obj, "read"):
        data = obj.read()
        if not isinstance(data, bytes):
            raise InvalidInputError(f"{field}: open the file in binary mode ('rb')", field)
    else:
        raise InvalidInputError(
            f"{field}: cannot send a {type(obj).__name__}; give a file path, bytes, a numpy array, a PIL image "
            "or a nibabel image", field)
    if not data:
        raise InvalidInputError(f"{field} is empty", field)
    return Upload(field, data, detect_format(data))


def to_uploads(items: Any, field: str, *, mask: bool = False) -> list[Upload]:
    """A support set (a list of inputs; a single input is a list of one) -> uploads ``field[i]``."""
    if items is None:
        return []
    single = isinstance(items, str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | Image.Image)
    if single or _is_nibabel_image(items) or hasattr(items, "read"):
        items = [items]
    try:
        items = list(items)
    except TypeError:
        raise InvalidInputError(f"{field} must be a list of images (paths, bytes, arrays, PIL or nibabel "
                                "images)", field) from None
    return [to_upload(item, f"{field}[{i}]", mask=mask) for i, item in enumerate(items)]


def _read_path(path: str | os.PathLike, field: str) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory; give one file" if p.is_dir() else "file not found"
        raise InvalidInputError(f"{field}: {what}: {p}", field)
    return p.read_bytes()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fast: the bytes are sent once
    return buf.getvalue()


def _from_array(array: np.ndarray, field: str, mask: bool) -> Upload:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8:
        if mask:
            raise InvalidInputError(f"{field}: a mask is a label map (H, W), not a colour image {a.shape}", field)
        return Upload(field, _png(Image.fromarray(np.ascontiguousarray(a))), "png")
    if a.ndim == 3:
        return _from_nibabel(_nibabel().Nifti1Image(np.ascontiguousarray(a), np.eye(4)), field)
    if a.ndim != 2 or a.size == 0:
        raise InvalidInputError(f"{field} must be (H, W), (H, W, 3) uint8 or (H, W, D); got shape {a.shape}", field)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if a.dtype.kind == "f" or a.dtype.kind in "iu":
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InvalidInputError(f"{field} has NaN or infinite values", field)
        lo, hi = float(a.min()), float(a.max())
        whole = a.dtype.kind in "iu" or np.array_equal(a, np.round(a))
        if whole and lo >= 0 and hi <= 65535:
            dtype = np.uint8 if hi <= 255 and a.dtype != np.uint16 else np.uint16
            return Upload(field, _png(Image.fromarray(a.astype(dtype))), "png")
        if mask:
            raise InvalidInputError(f"{field}: a mask holds whole labels 0..65535 (0 background), got values "
                                    f"{lo:g}..{hi:g}", field)
        # 32-bit float TIFF keeps CT/MR intensities (negative, fractional, wide) exactly
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.float32), mode="F").save(buf, format="TIFF")
        return Upload(field, buf.getvalue(), "tiff")
    raise InvalidInputError(f"{field}: arrays of {a.dtype} cannot be sent; use integers, floats or bool", field)


def _from_pil(image: Image.Image, field: str, mask: bool) -> Upload:
    if image.mode in _PNG_MODES and not (mask and image.mode in ("RGB", "RGBA")):
        return Upload(field, _png(image), "png")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        image = image.convert("RGB")
    return _from_array(np.asarray(image), field, mask)


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise MissingDependencyError(
            "NIfTI volumes need nibabel: pip install 'icseg-client[nifti]' (or pip install nibabel)") from None
    return nibabel


def _from_nibabel(image: Any, field: str) -> Upload:
    nib = _nibabel()
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        image = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
    # level 1: most of gzip's gain on masks and smooth volumes for a fraction of its time
    return Upload(field, gzip.compress(image.to_bytes(), compresslevel=1, mtime=0), "gzip")


# -- decoding (results, and queries for overlays) ---------------------------------------------------------


def decode_2d(data: bytes, *, mask: bool = False) -> np.ndarray:
    """A PNG/TIFF/JPEG/BMP file -> (H, W) or (H, W, 3) array, as stored (a palette mask gives its indices)."""
    with Image.open(io.BytesIO(data)) as opened:
        image: Image.Image = opened
        if mask and image.mode == "P":
            return np.asarray(image)
        if image.mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LA"):
            image = image.convert("L" if image.mode == "LA" else "RGB")
        return np.asarray(image)


def decode_nifti(data: bytes):
    """A .nii or .nii.gz file -> a nibabel image (NIfTI-1 or NIfTI-2)."""
    nib = _nibabel()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    klass = nib.Nifti2Image if _nifti_version(data) == 2 else nib.Nifti1Image
    return klass.from_bytes(data)


def decode_probs(data: bytes) -> np.ndarray:
    """A volume's probabilities NIfTI (H, W, D, K) -> (K, H, W, D) float32."""
    return np.moveaxis(np.asarray(decode_nifti(data).dataobj, dtype=np.float32), -1, 0)


def decode_upload(upload: Upload) -> np.ndarray:
    """The pixels of an upload: (H, W[, 3]) for 2D formats, (H, W, D) for NIfTI."""
    if upload.is_volume:
        return np.asanyarray(decode_nifti(upload.content).dataobj)
    if upload.format == "dicom":
        try:
            import pydicom
        except ImportError:
            raise MissingDependencyError("overlays of DICOM queries need pydicom: pip install pydicom") from None
        return pydicom.dcmread(io.BytesIO(upload.content)).pixel_array
    return decode_2d(upload.content)
