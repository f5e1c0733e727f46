"""Single-frame DICOM through pydicom: reading the pixels (never the patient attributes) and writing a
minimal anonymous instance for tests and examples. pydicom is imported only when DICOM is used."""

from __future__ import annotations

import io

import numpy as np

from data.errors import InputError
from data.io.base import ImageData, reason
from data.io.dicom_series import decode_multiframe, without_pixels

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


def decode_dicom(data: bytes, max_pixels: int | None, field: str, max_voxels: int | None = None) -> ImageData:
    """A DICOM file -> ImageData (H, W) or (H, W, 3), or a volume (H, W, D) for a multi-frame instance
    (``data.io.dicom_series``); raises InputError (code "too_large" above ``max_pixels``/``max_voxels``).

    ``header`` holds the dataset without its pixels, for a DICOM SEG that references it."""
    import pydicom  # imported here: only DICOM users pay for it

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        has_pixels = "PixelData" in ds
    except Exception as exc:
        raise InputError(f"{field}: cannot read this DICOM ({reason(exc)}); the file may be damaged",
                         field=field) from exc
    if not has_pixels:
        raise InputError(f"{field}: the DICOM holds no pixel data; send an image instance", field=field)
    if frames > 1:
        return decode_multiframe(ds, max_pixels, max_voxels, field)
    if max_pixels is not None and rows * cols > max_pixels:
        raise InputError(f"{field}: the DICOM declares {cols}x{rows} pixels, above the limit of {max_pixels:,}",
                         field=field, code="too_large")
    try:
        array = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise InputError(
            f"{field}: cannot decode the DICOM pixels ({reason(exc)}); transfer syntax "
            f"{getattr(syntax, 'name', syntax)}. Send an uncompressed DICOM (e.g. `gdcmconv --raw`)",
            field=field,
        ) from exc
    meta = geometry_meta(ds, field)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        meta["TransferSyntaxUID"] = str(syntax)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise InputError(f"{field}: DICOM pixels have shape {array.shape}; send a 2D image", field=field)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        # MONOCHROME1 shows low values white: invert within the stored range so that the image looks as displayed
        array = (array.max() - array + array.min()).astype(array.dtype)
    meta["dtype"] = str(array.dtype)

    return ImageData(array=np.ascontiguousarray(array), kind="image", format="dicom", header=[without_pixels(ds)],
                     meta=meta)


def geometry_meta(ds, field: str = "query") -> dict:
    """The ``_DICOM_META`` attributes of a dataset.

    Raises:
        InputError: an attribute holding text where numbers belong (PixelSpacing ``abc\\defg``); the message
            names the attribute, never its value (which may name someone).
    """
    meta = {}
    for key in _DICOM_META:
        try:
            value = _plain(getattr(ds, key)) if key in ds else None
        except (ValueError, TypeError, OverflowError):
            value = None
        if value is None and key in ds:
            raise InputError(f"{field}: the DICOM's {key} is not a valid number; fix or remove that attribute",
                             field=field)
        if value is not None:
            meta[key] = value
    return meta


def _plain(value):
    if isinstance(value, str | int | float):
        return value
    try:
        return [float(v) for v in value]
    except TypeError:
        return str(value)
    except ValueError:  # a number-valued attribute holding text (PixelSpacing "abc\\defg"): not geometry
        return None


def dicom_bytes(array: np.ndarray) -> bytes:
    """A minimal, anonymous, uncompressed single-frame MONOCHROME2 DICOM of (H, W) uint8 or uint16."""
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
