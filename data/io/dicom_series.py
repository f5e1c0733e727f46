"""DICOM volumes through pydicom: a series given as several files or as a zip, and multi-frame instances.

Slices are sorted by their ImagePositionPatient projected on the slice normal (the cross product of the
ImageOrientationPatient cosines), never by file order, InstanceNumber or file name; the series is checked
for one SeriesInstanceUID, one orientation, one pixel grid and uniform spacing. The volume is
(H, W, D) = (Rows, Columns, slices in position order) and its ``affine`` maps (row, column, slice) indices to
DICOM patient coordinates (LPS, millimetres):

    world = IPP_0 + row * PixelSpacing[0] * IOP[3:] + column * PixelSpacing[1] * IOP[:3] + slice * dz * normal

A zip is inflated member by member, and never past ``max_unzipped_bytes`` in all (declared sizes are checked
before anything is inflated, and zipfile never writes more than a member declares): a zip bomb is a
"too_large" error. The source datasets (without their pixels) stay in ``ImageData.header``, in slice
order, so that a DICOM SEG can reference them.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import numpy as np

from data.errors import InputError
from data.io.base import ImageData, reason

MAX_MEMBERS = 4096  # files in one zipped series
ZIP_OVERHEAD = 1 << 20  # headers on top of the pixels (bytes)


def max_unzipped_bytes(max_voxels: int | None) -> int | None:
    """The most bytes a zipped series may inflate to: 8 bytes per allowed voxel and 1 MiB for headers."""
    return None if max_voxels is None else 8 * max_voxels + ZIP_OVERHEAD


def unzip_series(data: bytes, max_voxels: int | None, field: str) -> list[bytes]:
    """The DICOM files of a zip (other members, folders and DICOMDIR are skipped).

    Raises:
        InputError: not a readable zip, no DICOM inside, too many members, or more inflated bytes than
            ``max_unzipped_bytes`` ("too_large").
    """
    limit = max_unzipped_bytes(max_voxels)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"{field}: not a readable zip ({reason(exc)}); a zip is read only as a zipped DICOM "
                         "series: send one, or another supported format", field=field,
                         code="unsupported_format") from exc
    if len(members) > MAX_MEMBERS:
        raise InputError(f"{field}: the zip holds {len(members):,} files, more than {MAX_MEMBERS:,}; send one "
                         "series", field=field, code="too_large")
    declared = sum(m.file_size for m in members)
    if limit is not None and declared > limit:
        raise InputError(f"{field}: the zip inflates to {declared:,} bytes, above the limit of {limit:,}; send "
                         "a smaller series", field=field, code="too_large")
    files, total = [], 0
    for member in members:
        try:
            with archive.open(member) as stream:
                head = stream.read(132)
                if head[128:132] != b"DICM":  # DICOMDIR is DICOM too, but holds no pixels: skipped below
                    continue
                # zipfile stops at the declared size (and checks the CRC): a lying header cannot inflate more
                body = head + stream.read()
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise InputError(f"{field}: damaged zip member ({reason(exc)})", field=field) from exc
        total += len(body)
        if limit is not None and total > limit:
            raise InputError(f"{field}: the zip inflates past the limit of {limit:,} bytes", field=field,
                             code="too_large")
        files.append(body)
    if not files:
        raise InputError(f"{field}: the zip holds no DICOM file (files with 'DICM' at byte 128): a zip is read "
                         "only as a zipped DICOM series; send one, or another supported format", field=field,
                         code="unsupported_format")
    return files


def _read(data: bytes, field: str):
    import pydicom  # imported here: only DICOM users pay for it

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise InputError(f"{field}: cannot read this DICOM ({reason(exc)}); the file may be damaged",
                         field=field) from exc


def _floats(value, n: int, what: str, field: str) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,) or not np.isfinite(out).all():
        raise InputError(f"{field}: {what} is missing or invalid; a DICOM volume needs it", field=field)
    return out


def _pixels(ds, field: str) -> np.ndarray:
    try:
        array = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise InputError(f"{field}: cannot decode the DICOM pixels ({reason(exc)}); transfer syntax "
                         f"{getattr(syntax, 'name', syntax)}. Send uncompressed DICOM (e.g. `gdcmconv --raw`)",
                         field=field) from exc
    slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        array = array.astype(np.float32) * slope + intercept
    return array


def without_pixels(ds):
    """A copy of a dataset without its pixel data (what a DICOM SEG needs to reference it)."""
    ds = ds.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            del ds[keyword]
    return ds


def _check_size(rows: int, cols: int, depth: int, max_pixels: int | None, max_voxels: int | None, field: str):
    if max_pixels is not None and rows * cols > max_pixels:
        raise InputError(f"{field}: the DICOM declares {cols}x{rows} pixels, above the limit of {max_pixels:,}",
                         field=field, code="too_large")
    if max_voxels is not None and rows * cols * depth > max_voxels:
        raise InputError(f"{field}: the DICOM series declares {rows}x{cols}x{depth} = {rows * cols * depth:,} "
                         f"voxels, above the limit of {max_voxels:,}", field=field, code="too_large")


def _affine(origin: np.ndarray, iop: np.ndarray, spacing: np.ndarray, dz: float) -> np.ndarray:
    x, y = iop[:3], iop[3:]
    normal = np.cross(x, y)
    affine = np.eye(4)
    affine[:3, 0] = y * spacing[0]  # down the rows: the column cosines, at the row spacing
    affine[:3, 1] = x * spacing[1]  # along a row: the row cosines, at the column spacing
    affine[:3, 2] = normal * dz
    affine[:3, 3] = origin
    return affine


def _slice_step(positions: np.ndarray, field: str) -> float:
    """The uniform distance between sorted slice positions (along the normal), or an InputError."""
    if len(positions) < 2:
        return 1.0
    steps = np.diff(positions)
    if np.any(steps < 1e-4):
        raise InputError(f"{field}: two slices share one position: send one series (one acquisition, one "
                         "echo, one time point)", field=field)
    if np.ptp(steps) > max(1e-3, 0.01 * float(np.median(steps))):
        raise InputError(f"{field}: slice spacing is not uniform ({steps.min():.3f} to {steps.max():.3f} mm): "
                         "a slice is missing or the files are from several series", field=field)
    return float(np.mean(steps))


def decode_dicom_series(parts: Sequence[bytes], max_pixels: int | None, max_voxels: int | None,
                        field: str) -> ImageData:
    """Several single-frame DICOM files of one series -> ImageData volume (H, W, D) with its LPS affine.

    Raises:
        InputError: several series, orientations or pixel grids, duplicate or unevenly spaced positions,
            missing geometry, too many voxels ("too_large"), undecodable pixels.
    """
    import pydicom

    heads = []
    for i, data in enumerate(parts):
        name = f"{field}[{i}]"
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as exc:
            raise InputError(f"{name}: cannot read this DICOM ({reason(exc)})", field=name) from exc
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{name}: a multi-frame DICOM inside a series; send it alone", field=name)
        heads.append(ds)
    first = heads[0]
    rows, cols = int(first.get("Rows", 0)), int(first.get("Columns", 0))
    _check_size(rows, cols, len(heads), max_pixels, max_voxels, field)
    iop = _floats(first.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", field)
    spacing = _floats(first.get("PixelSpacing"), 2, "PixelSpacing", field)
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in heads}
    if len(series) > 1:
        raise InputError(f"{field}: the files come from {len(series)} series; send one series", field=field)
    for i, ds in enumerate(heads):
        if (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != (rows, cols):
            raise InputError(f"{field}[{i}]: {ds.get('Rows')}x{ds.get('Columns')} pixels where the series has "
                             f"{rows}x{cols}", field=f"{field}[{i}]")
        if not np.allclose(_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", field), iop,
                           atol=1e-4):
            raise InputError(f"{field}[{i}]: another orientation than the first slice; send one series of "
                             "parallel slices", field=f"{field}[{i}]")
        if not np.allclose(_floats(ds.get("PixelSpacing"), 2, "PixelSpacing", field), spacing, atol=1e-4):
            raise InputError(f"{field}[{i}]: another PixelSpacing than the first slice", field=f"{field}[{i}]")
    normal = np.cross(iop[:3], iop[3:])
    ipp = np.stack([_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", field) for ds in heads])
    order = np.argsort(ipp @ normal, kind="stable")
    dz = _slice_step((ipp @ normal)[order], field)
    slices = [_pixels(_read(parts[k], f"{field}[{k}]"), f"{field}[{k}]") for k in order]
    if any(s.ndim != 2 for s in slices):
        raise InputError(f"{field}: a DICOM volume needs one grey channel per slice", field=field)
    dtype = np.result_type(*[s.dtype for s in slices])
    array = np.stack([s.astype(dtype, copy=False) for s in slices], axis=-1)  # (H, W, D)
    meta = {"space": "LPS", "series": True, "dtype": str(array.dtype), "slices": len(slices),
            "Modality": str(first.get("Modality", ""))}
    return ImageData(array=np.ascontiguousarray(array), kind="volume", format="dicom",
                     affine=_affine(ipp[order[0]], iop, spacing, dz), header=[heads[k] for k in order], meta=meta)


def decode_multiframe(ds, max_pixels: int | None, max_voxels: int | None, field: str) -> ImageData:
    """One multi-frame DICOM (enhanced CT/MR, or legacy with ImagePositionPatient) -> ImageData (H, W, D).

    Frames are sorted by position along the normal when per-frame positions are given.
    """
    rows, cols, frames = int(ds.Rows), int(ds.Columns), int(ds.NumberOfFrames)
    _check_size(rows, cols, frames, max_pixels, max_voxels, field)
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])

    def group(item, sequence, keyword):
        inner = item.get(sequence) if item is not None else None
        return inner[0].get(keyword) if inner else None

    iop = ds.get("ImageOrientationPatient") or group(shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    if iop is None and per_frame:
        iop = group(per_frame[0], "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = ds.get("PixelSpacing") or group(shared, "PixelMeasuresSequence", "PixelSpacing")
    if spacing is None and per_frame:
        spacing = group(per_frame[0], "PixelMeasuresSequence", "PixelSpacing")
    iop = _floats(iop, 6, "ImageOrientationPatient", field)
    spacing = _floats(spacing, 2, "PixelSpacing", field)
    normal = np.cross(iop[:3], iop[3:])
    if len(per_frame) == frames and all(group(f, "PlanePositionSequence", "ImagePositionPatient") for f in per_frame):
        ipp = np.stack([_floats(group(f, "PlanePositionSequence", "ImagePositionPatient"), 3,
                                "ImagePositionPatient", field) for f in per_frame])
        order = np.argsort(ipp @ normal, kind="stable")
        dz = _slice_step((ipp @ normal)[order], field)
        origin = ipp[order[0]]
    else:  # legacy multi-frame: one position, frames SpacingBetweenSlices (or SliceThickness) apart
        origin = _floats(ds.get("ImagePositionPatient", [0, 0, 0]), 3, "ImagePositionPatient", field)
        dz = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        order = np.arange(frames)
    array = _pixels(ds, field)
    if array.ndim != 3 or array.shape[0] != frames:
        raise InputError(f"{field}: multi-frame pixels have shape {array.shape}; send grey frames", field=field)
    array = np.moveaxis(array[order], 0, -1)  # (D, H, W) -> (H, W, D)
    meta = {"space": "LPS", "multiframe": True, "dtype": str(array.dtype), "slices": frames,
            "frame_order": [int(k) for k in order], "Modality": str(ds.get("Modality", ""))}
    return ImageData(array=np.ascontiguousarray(array), kind="volume", format="dicom",
                     affine=_affine(origin, iop, spacing, dz), header=[without_pixels(ds)], meta=meta)


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """An LPS affine (DICOM) -> the RAS affine NIfTI stores (x and y flipped)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
