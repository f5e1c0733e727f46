"""NIfTI-1/2 volumes (plain or gzipped) through nibabel: reading (the size checked from the header, a gzip
bomb never inflated past what the header declares) and writing masks with the query's affine and header."""

from __future__ import annotations

import gzip
import io
import zlib

import nibabel as nib
import numpy as np

from data.errors import InputError
from data.io.base import ImageData, reason
from data.io.detect import nifti_version


def decode_nifti(data: bytes, gzipped: bool, max_voxels: int | None, field: str) -> ImageData:
    """A .nii or .nii.gz file -> ImageData (H, W, D); raises InputError (code "too_large" above ``max_voxels``)."""
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if gzipped else io.BytesIO(data)
    try:
        head = stream.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{field}: damaged gzip data ({reason(exc)}); send an intact .nii.gz",
                         field=field) from exc
    version = nifti_version(head)
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
        raise InputError(f"{field}: invalid NIfTI header ({reason(exc)})", field=field) from exc
    if dtype.fields is not None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{field}: NIfTI voxel type {dtype} is not supported; store real scalar voxels", field=field)
    if not 0 <= offset < 2**31:  # vox_offset is a float32: 1e38 would overflow every read below
        raise InputError(f"{field}: the NIfTI header's vox_offset ({offset:.3g}) is implausible; the file is damaged",
                         field=field)
    shape = _volume_shape(shape, field)
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if max_voxels is not None and n_voxels > max_voxels:
        raise InputError(
            f"{field}: the NIfTI declares {'x'.join(map(str, shape))} = {n_voxels:,} voxels, above the limit of "
            f"{max_voxels:,}; crop or downsample the volume",
            field=field, code="too_large",
        )
    needed = offset + n_voxels * dtype.itemsize
    if gzipped:
        try:
            # reads no more than the header declares: a gzip bomb stops here
            raw = head + stream.read(max(0, needed - len(head)))
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(
                f"{field}: damaged or truncated gzip data ({reason(exc)}); send an intact .nii.gz",
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
        raise InputError(f"{field}: cannot read this NIfTI ({reason(exc)})", field=field) from exc
    affine = img.affine
    if affine is None or not np.isfinite(affine).all():  # NaN srow/qform: no mask could be written back
        raise InputError(f"{field}: the NIfTI's affine (sform/qform) holds NaN or infinite values; fix the "
                         "header's orientation", field=field)
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
    """Stored NIfTI dims -> (H, W, D): trailing singleton dims dropped, a 2D slice becomes (H, W, 1)."""
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


# -- writing ---------------------------------------------------------------------------------------------


def nifti_mask_bytes(mask: np.ndarray, like: ImageData) -> bytes:
    """A gzipped NIfTI label map with the affine and header (version, sform/qform) of the query ``like``."""
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


def nifti_probs_bytes(probs: np.ndarray, like: ImageData) -> bytes:
    """A gzipped float32 NIfTI of per-label probabilities (H, W, D, K) with the query's affine and header."""
    version = like.meta.get("nifti_version", 1)
    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    header = klass.header_class.from_header(like.header) if like.header is not None else klass.header_class()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 1
    header.set_intent("none")
    affine = like.affine if like.affine is not None else np.eye(4)
    img = klass(np.asarray(probs, dtype=np.float32), affine, header=header)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def nifti_bytes(array: np.ndarray, affine: np.ndarray | None, gzipped: bool) -> bytes:
    """A NIfTI-1 file of any real (H, W, D) array (identity affine if None)."""
    payload = nib.Nifti1Image(array, np.eye(4) if affine is None else affine).to_bytes()
    return gzip.compress(payload, mtime=0) if gzipped else payload
