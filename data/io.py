"""Reading images, volumes and masks from bytes or files, and writing masks back in the query's format.

Formats are detected by magic bytes, never by file name: PNG, JPEG, TIFF and BMP through Pillow, NIfTI-1/2
(plain or gzipped) through nibabel, single-frame DICOM through pydicom. Every size is checked against the
limits from the file's header *before* pixels are decoded (decompression bombs), and every failure is an
``InputError`` naming the field and saying what to change.

Letters: H x W a 2D image, X x Y x Z a volume.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import struct
import uuid
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, features

from model.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_VOXELS = 512**3

_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
# DICOM attributes copied into ``meta``: acquisition geometry only, never anything about the patient
_DICOM_META = (
    "Modality",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PixelSpacing",
    "SliceThickness",
    "RescaleSlope",
    "RescaleIntercept",
)


@dataclass
class ImageData:
    """A decoded image or volume with what is needed to write a mask back in the same geometry.

    Attributes:
        array: 2D images (H, W) or (H, W, 3) in the decoded dtype (uint8, uint16, int32, float32, bool);
            volumes (X, Y, Z) in the stored dtype (scaled to float when the NIfTI header says so).
        kind: "image" or "volume".
        format: "png", "jpeg", "tiff", "bmp", "nifti" or "dicom".
        affine: (4, 4) voxel-to-world matrix of a NIfTI volume, else None.
        header: the nibabel header of a NIfTI volume, else None.
        meta: format details (PIL mode, dtype, gzip flag, DICOM geometry); never patient data.
    """

    array: np.ndarray
    kind: str
    format: str
    affine: np.ndarray | None = None
    header: object | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape: (H, W) for images, (X, Y, Z) for volumes."""
        return tuple(self.array.shape[:2]) if self.kind == "image" else tuple(self.array.shape)


_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")  # <_io.BytesIO object at 0x7f...>
_QUOTED_PATH = re.compile(r"\s*(['\"])(?:/|[A-Za-z]:\\|~)[^'\"]*\1")  # '/tmp/scan.png', "C:\\data\\x.dcm"


def _reason(exc: BaseException) -> str:
    """A decoder's own message for an error shown to users: without object reprs (Pillow names the file
    object it read from) and without file paths, which say nothing to a user and may name a patient."""
    text = _QUOTED_PATH.sub("", _OBJECT_REPR.sub("", str(exc))).strip(" :")
    return text or type(exc).__name__


def _coded(code: str, message: str, field: str) -> InputError:
    """An InputError with a code more specific than "invalid_input": "too_large" or "unsupported_format".

    A service can then answer 413 / 415 from ``error.code`` without parsing the message.
    """
    error = InputError(message, field=field)
    error.code = code
    return error


# -- reading ---------------------------------------------------------------------------------------------


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
        max_voxels: largest X x Y x Z accepted for volumes (None: no limit).
        field: the input's name, reported in errors.

    Returns:
        ImageData; RGBA becomes RGB, palette images RGB, LA becomes L, 16-bit stays 16-bit.

    Raises:
        InputError: unknown format, damaged or truncated file, too large, unsupported dimensionality.
    """
    data = _read_source(source, field)
    return _decode(data, max_pixels, max_voxels, field, as_mask=False)


def read_mask(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    field: str = "mask",
) -> ImageData:
    """Decode a label map: (H, W) or (X, Y, Z) of non-negative integers (0 background, 1..K structures).

    Palette PNGs give their palette indices; grey RGB(A) PNGs their first channel; float NIfTI masks
    must hold whole numbers.

    Returns:
        ImageData whose array is uint8, uint16 or uint32 (the smallest that holds the labels).

    Raises:
        InputError: as ``read_image``, and colour masks, fractional, negative or non-finite values.
    """
    data = _read_source(source, field)
    image = _decode(data, max_pixels, max_voxels, field, as_mask=True)
    image.array = _as_label_map(image.array, field, colour=image.kind == "image")
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


def detect_format(data: bytes) -> str | None:
    """The format named by the leading bytes ("png", ..., "nifti", "dicom", "gzip"), or None."""
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
    if data[128:132] == b"DICM":
        return "dicom"
    return None


def _nifti_version(head: bytes) -> int:
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


def _decode(data: bytes, max_pixels: int | None, max_voxels: int | None, field: str, as_mask: bool) -> ImageData:
    if not data:
        raise InputError(f"{field} is empty: send an image or volume file", field=field)
    fmt = detect_format(data)
    if fmt in _PILLOW_FORMATS:
        return _decode_pillow(data, fmt, max_pixels, field, as_mask)
    if fmt in ("nifti", "gzip"):
        return _decode_nifti(data, fmt == "gzip", max_voxels, field)
    if fmt == "dicom":
        return _decode_dicom(data, max_pixels, field)
    raise _coded(
        "unsupported_format",
        f"{field}: unrecognised file format (leading bytes {data[:8]!r}); send PNG, JPEG, TIFF, BMP, "
        "NIfTI (.nii or .nii.gz) or single-frame DICOM",
        field,
    )


# -- 2D formats through Pillow ---------------------------------------------------------------------------


def _decode_pillow(data: bytes, fmt: str, max_pixels: int | None, field: str, as_mask: bool) -> ImageData:
    name = fmt.upper()
    try:
        # our own max_pixels check below is the one that decides; Pillow's warnings (bomb, corrupt EXIF of a
        # damaged file) are logged rather than shown to a service's users
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            im = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
        for w in caught:
            log.debug("%s: Pillow warned while opening: %s", field, w.message)
    except Image.DecompressionBombError as exc:
        raise _coded(
            "too_large", f"{field}: the {name} declares too many pixels ({_reason(exc)}); send a smaller image",
            field,
        ) from exc
    except Exception as exc:  # Pillow raises many types for damaged headers
        raise InputError(f"{field}: cannot read this {name} ({_reason(exc)}); the file may be damaged",
                         field=field) from exc
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise InputError(f"{field}: the {name} declares an empty size {width}x{height}", field=field)
        if max_pixels is not None and width * height > max_pixels:
            raise _coded(
                "too_large",
                f"{field}: the {name} declares {width}x{height} = {width * height:,} pixels, above the limit of "
                f"{max_pixels:,}; downscale or crop it",
                field,
            )
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            raise InputError(
                f"{field}: the {name} holds {frames} frames/pages; send a single 2D image (or a NIfTI volume)",
                field=field,
            )
        mode = im.mode
        meta = {"mode": mode, "size": (width, height)}
        orientation = im.getexif().get(0x0112) if fmt in ("jpeg", "tiff") else None
        if orientation not in (None, 1):
            # the pixel grid is kept as stored so that the mask matches it; viewers may rotate both
            meta["exif_orientation"] = int(orientation)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                im.load()
                array = _pillow_array(im, as_mask)
            for w in caught:
                log.debug("%s: Pillow warned while decoding: %s", field, w.message)
        except InputError:
            raise
        except Exception as exc:  # truncated data, unsupported compression or bit depth
            raise InputError(
                f"{field}: cannot decode this {name} ({_reason(exc)}); the file may be truncated or use an "
                "unsupported encoding (send 8-bit or 16-bit grayscale, or 8-bit RGB)",
                field=field,
            ) from exc
    meta["dtype"] = str(array.dtype)
    return ImageData(array=array, kind="image", format=fmt, meta=meta)


def _pillow_array(im: Image.Image, as_mask: bool) -> np.ndarray:
    """Decoded pixels: (H, W) for single-channel modes, (H, W, 3) for colour."""
    mode = im.mode
    if mode in ("P", "PA") and as_mask:
        return np.asarray(im.convert("P") if mode == "PA" else im)  # palette indices are the labels
    if mode in ("LA", "La"):
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB").convert("RGB")
    elif mode in ("RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    array = np.asarray(im)
    if array.dtype.byteorder not in ("=", "|"):  # e.g. I;16B: hand native byte order to numpy/torch users
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return np.ascontiguousarray(array)


# -- NIfTI through nibabel -------------------------------------------------------------------------------


def _decode_nifti(data: bytes, gzipped: bool, max_voxels: int | None, field: str) -> ImageData:
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if gzipped else io.BytesIO(data)
    try:
        head = stream.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{field}: damaged gzip data ({_reason(exc)}); send an intact .nii.gz",
                         field=field) from exc
    version = _nifti_version(head)
    if not version:
        what = "a gzip file that does not hold a NIfTI volume" if gzipped else "not a NIfTI file"
        raise InputError(f"{field}: {what}; send a .nii or .nii.gz volume", field=field)
    if head[344:347] == b"ni1" or head[4:7] == b"ni2":
        raise InputError(f"{field}: a .hdr/.img pair cannot be sent as one file; convert it to .nii.gz", field=field)
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    try:
        header = klass.header_class.from_fileobj(io.BytesIO(head), check=False)
        shape = tuple(int(d) for d in header.get_data_shape())
        dtype = header.get_data_dtype()
        # a single-file NIfTI's data never starts inside its header: a smaller vox_offset (0 from some
        # writers) is fixed here, otherwise nibabel would read the header bytes as voxels
        bad_offset = int(header.get_data_offset()) < int(header.single_vox_offset)
        if bad_offset:
            header.set_data_offset(int(header.single_vox_offset))
        offset = int(header.get_data_offset())
    except Exception as exc:
        raise InputError(f"{field}: invalid NIfTI header ({_reason(exc)})", field=field) from exc
    if dtype.fields is not None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{field}: NIfTI voxel type {dtype} is not supported; store real scalar voxels", field=field)
    shape = _volume_shape(shape, field)
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if max_voxels is not None and n_voxels > max_voxels:
        raise _coded(
            "too_large",
            f"{field}: the NIfTI declares {'x'.join(map(str, shape))} = {n_voxels:,} voxels, above the limit of "
            f"{max_voxels:,}; crop or downsample the volume",
            field,
        )
    needed = offset + n_voxels * dtype.itemsize
    if gzipped:
        try:
            # reads no more than the header declares: a gzip bomb stops here
            raw = head + stream.read(max(0, needed - len(head)))
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(
                f"{field}: damaged or truncated gzip data ({_reason(exc)}); send an intact .nii.gz",
                field=field,
            ) from exc
    else:
        raw = data
    if len(raw) < needed:
        raise InputError(
            f"{field}: the NIfTI is truncated ({len(raw):,} of {needed:,} bytes); send the complete file",
            field=field,
        )
    if bad_offset:
        raw = header.binaryblock + raw[len(header.binaryblock) :]
    try:
        img = klass.from_bytes(raw if len(raw) == needed else raw[:needed])
        array = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"{field}: cannot read this NIfTI ({_reason(exc)})", field=field) from exc
    array = array.reshape(shape)
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    meta = {
        "gzip": gzipped,
        "nifti_version": version,
        "dtype": str(array.dtype),
        "stored_shape": tuple(int(d) for d in img.header.get_data_shape()),
        "zooms": tuple(float(z) for z in img.header.get_zooms()[:3]),
    }
    return ImageData(array=array, kind="volume", format="nifti", affine=img.affine.copy(), header=img.header, meta=meta)


def _volume_shape(shape: tuple[int, ...], field: str) -> tuple[int, int, int]:
    """Stored NIfTI dims -> (X, Y, Z): trailing singleton dims dropped, a 2D slice becomes (X, Y, 1)."""
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise InputError(f"{field}: NIfTI has unusable dimensions {shape}; send a 3D volume", field=field)
    extra = shape[3:]
    if any(d > 1 for d in extra):
        raise InputError(
            f"{field}: NIfTI has shape {shape}: {len(shape)}D data with more than one time point or channel; "
            "send one 3D volume (e.g. extract a single time point)",
            field=field,
        )
    return (shape[0], shape[1], shape[2] if len(shape) > 2 else 1)


# -- DICOM through pydicom -------------------------------------------------------------------------------


def _decode_dicom(data: bytes, max_pixels: int | None, field: str) -> ImageData:
    import pydicom  # imported here: only DICOM users pay for it

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        has_pixels = "PixelData" in ds
    except Exception as exc:
        raise InputError(f"{field}: cannot read this DICOM ({_reason(exc)}); the file may be damaged",
                         field=field) from exc
    if not has_pixels:
        raise InputError(f"{field}: the DICOM holds no pixel data; send an image instance", field=field)
    if frames > 1:
        raise InputError(
            f"{field}: multi-frame DICOM ({frames} frames) is not supported; send one frame or a NIfTI volume",
            field=field,
        )
    if max_pixels is not None and rows * cols > max_pixels:
        raise _coded(
            "too_large", f"{field}: the DICOM declares {cols}x{rows} pixels, above the limit of {max_pixels:,}", field
        )
    try:
        array = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise InputError(
            f"{field}: cannot decode the DICOM pixels ({_reason(exc)}); transfer syntax "
            f"{getattr(syntax, 'name', syntax)}. Send an uncompressed DICOM (e.g. `gdcmconv --raw`)",
            field=field,
        ) from exc
    meta = {k: _plain(getattr(ds, k)) for k in _DICOM_META if k in ds}
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        meta["TransferSyntaxUID"] = str(syntax)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise InputError(f"{field}: DICOM pixels have shape {array.shape}; send a 2D image", field=field)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        # MONOCHROME1 shows low values white: invert within the stored range so that the image looks as displayed
        array = (array.max() - array + array.min()).astype(array.dtype)
    meta["dtype"] = str(array.dtype)
    return ImageData(array=np.ascontiguousarray(array), kind="image", format="dicom", meta=meta)


def _plain(value):
    if isinstance(value, str | int | float):
        return value
    try:
        return [float(v) for v in value]
    except TypeError:
        return str(value)


# -- masks -----------------------------------------------------------------------------------------------


def _as_label_map(array: np.ndarray, field: str, colour: bool) -> np.ndarray:
    """Any decoded array -> a non-negative integer label map, or an InputError saying why not.

    ``colour`` says that a trailing axis of 3 is RGB (2D images), not the Z of a volume.
    """
    if array.dtype == bool:
        return array.astype(np.uint8)
    if colour and array.ndim == 3:
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            raise InputError(
                f"{field}: a colour mask cannot be read: masks are label maps, one channel with 0 background and "
                "1..K structures (save it as a grayscale or palette PNG)",
                field=field,
            )
        array = array[..., 0]
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{field}: the mask has NaN or infinite values", field=field)
        if not np.array_equal(array, np.round(array)):
            raise InputError(
                f"{field}: the mask holds fractional values; a mask is a label map of whole numbers "
                "(0 background, 1..K)",
                field=field,
            )
    elif not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{field}: mask type {array.dtype} is not a label map", field=field)
    if array.size and array.min() < 0:
        raise InputError(f"{field}: the mask has negative values; use 0 for background and 1..K", field=field)
    top = int(array.max()) if array.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return array.astype(dtype, copy=False)
    raise InputError(f"{field}: label value {top} is too large", field=field)


# -- writing ---------------------------------------------------------------------------------------------


def to_png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of (H, W) bool/uint8/uint16 (mode 1/L/I;16) or (H, W, 3|4) uint8 (RGB/RGBA).

    Integer arrays of other types are accepted when their values fit uint8 or uint16.

    Raises:
        InputError: float or out-of-range values, or an unsupported shape.
    """
    return _to_pillow_bytes(array, "PNG", field="array")


def _to_pillow_bytes(array: np.ndarray, fmt: str, field: str) -> bytes:
    im = _to_pillow(np.asarray(array), field)
    buf = io.BytesIO()
    if fmt == "TIFF":
        im.save(buf, format="TIFF", compression="tiff_adobe_deflate" if features.check("libtiff") else None)
    else:
        im.save(buf, format=fmt, **({"optimize": False, "compress_level": 6} if fmt == "PNG" else {}))
    return buf.getvalue()


def _to_pillow(array: np.ndarray, field: str) -> Image.Image:
    if array.dtype == bool:
        if array.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(array))  # mode "1": reads back as bool
        array = array.astype(np.uint8) * 255
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if array.dtype != np.uint8:
            raise InputError(f"{field}: colour images must be uint8, got {array.dtype}", field=field)
        return Image.fromarray(np.ascontiguousarray(array))
    if array.ndim != 2:
        raise InputError(f"{field} must be (H, W) or (H, W, 3|4), got shape {array.shape}", field=field)
    if array.dtype.kind not in "ui":
        raise InputError(f"{field}: {array.dtype} cannot be written losslessly as 8/16 bits; cast first", field=field)
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise InputError(f"{field}: values {lo}..{hi} do not fit 8 or 16 bits", field=field)
    # uint16 stays 16-bit even when its values are small; other integer types take the smallest that fits
    dtype = np.uint16 if array.dtype == np.uint16 or hi > 255 else np.uint8
    return Image.fromarray(np.ascontiguousarray(array.astype(dtype, copy=False)))


def encode_mask(mask: np.ndarray, like: ImageData) -> tuple[bytes, str, str]:
    """Encode a label map in the format and geometry of the query it was predicted for.

    Args:
        mask: (H, W) for an image query, (X, Y, Z) for a volume query; non-negative integers.
        like: the query as read by ``read_image``.

    Returns:
        (bytes, media type, file extension): PNG for PNG/JPEG/BMP/DICOM queries, TIFF for TIFF queries,
        gzipped NIfTI (.nii.gz) with the query's affine and header for NIfTI queries. 8-bit when every label
        is at most 255, else 16-bit.

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
    if like.kind == "volume":
        return _nifti_bytes(mask, like), "application/gzip", ".nii.gz"
    if like.format == "tiff":
        return _to_pillow_bytes(mask, "TIFF", field="mask"), "image/tiff", ".tif"
    return _to_pillow_bytes(mask, "PNG", field="mask"), "image/png", ".png"


def _nifti_bytes(mask: np.ndarray, like: ImageData) -> bytes:
    version = like.meta.get("nifti_version", 1)
    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    if like.header is not None:
        header = klass.header_class.from_header(like.header)  # a copy, converted if need be
    else:
        header = klass.header_class()
    header.set_data_dtype(mask.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 0
    header.set_intent("label")
    affine = like.affine if like.affine is not None else np.eye(4)
    # the affine equals the header's best affine, so nibabel keeps the header's sform/qform as they are
    img = klass(mask, affine, header=header)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def write_mask(mask: np.ndarray, like: ImageData, path: str | os.PathLike) -> Path:
    """Write ``encode_mask``'s bytes to ``path`` atomically (temporary file, then rename).

    Returns:
        The path written (unchanged: pick the extension from ``encode_mask`` if it matters).
    """
    payload, _, _ = encode_mask(mask, like)
    return write_atomic(Path(path), payload)


def write_atomic(path: Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` (parents created) through a temporary file and a rename: a reader, or a
    rerun after a crash, never sees half a file. Safe for several threads and processes writing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_image(array: np.ndarray, path: str | os.PathLike, *, affine: np.ndarray | None = None) -> Path:
    """Write an array in the format named by the extension; the inverse of ``read_image`` for tests/examples.

    Args:
        array: (H, W) or (H, W, 3|4) for .png/.jpg/.jpeg/.tif/.tiff/.bmp (uint8, uint16 for PNG/TIFF);
            (H, W) uint8/uint16 for .dcm (a minimal anonymous single-frame DICOM);
            (X, Y, Z) any real dtype for .nii/.nii.gz.
        path: destination; written atomically.
        affine: (4, 4) NIfTI affine (identity if None).

    Returns:
        The path written.
    """
    path = Path(path)
    name = path.name.lower()
    array = np.asarray(array)
    if name.endswith((".nii", ".nii.gz")):
        img = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
        payload = img.to_bytes()
        if name.endswith(".gz"):
            payload = gzip.compress(payload, mtime=0)
    elif name.endswith(".dcm"):
        payload = _dicom_bytes(array)
    else:
        fmt = _SAVE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(f"cannot tell the format from {path.name}; use a known extension", field="path")
        if fmt in ("PNG", "TIFF"):
            payload = _to_pillow_bytes(array, fmt, field="array")
        else:
            im = Image.fromarray(np.ascontiguousarray(array))
            if im.mode == "RGBA" and fmt == "JPEG":
                im = im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            payload = buf.getvalue()
    return write_atomic(path, payload)


def _dicom_bytes(array: np.ndarray) -> bytes:
    """A minimal, anonymous, uncompressed single-frame MONOCHROME2 DICOM."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise InputError("DICOM export takes a 2D uint8 or uint16 array", field="array")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = array.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
