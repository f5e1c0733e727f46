"""NRRD volumes through pynrrd: reading (attached data only; the size checked from the header and compressed
data never inflated past what the header declares) and writing label maps as ``.seg.nrrd`` with the query's
space, space directions and origin, and 3D Slicer's segment fields (names, colours, label values).

The array is pynrrd's Fortran index order: (H, W, D) = the NRRD's axes 0, 1, 2; ``affine`` maps these indices to
the NRRD's ``space`` (column i = space direction i, last column = space origin). A 2D NRRD is (H, W, 1).
"""

from __future__ import annotations

import bz2
import io
import zlib

import numpy as np

from data.errors import InputError
from data.io.base import ImageData, reason
from data.io.segments import Segment

_SPACES = {"RAS": "right-anterior-superior", "LPS": "left-posterior-superior", "LAS": "left-anterior-superior"}


def _inflate(rest: bytes, encoding: str, needed: int, field: str) -> bytes:
    try:
        if encoding in ("gzip", "gz"):
            out = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(rest, needed)
        else:
            out = bz2.BZ2Decompressor().decompress(rest, max_length=needed)
    except (zlib.error, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{field}: damaged {encoding} data in the NRRD ({reason(exc)})", field=field) from exc
    return out


def decode_nrrd(data: bytes, max_voxels: int | None, field: str) -> ImageData:
    """A .nrrd (or .seg.nrrd) file with attached data -> ImageData volume (H, W, D) with its affine.

    Raises:
        InputError: detached data (.nhdr), more than 3 axes, more voxels than ``max_voxels`` ("too_large"),
            damaged or truncated data.
    """
    import nrrd  # imported here: only NRRD users pay for it

    stream = io.BytesIO(data)
    try:
        header = nrrd.read_header(stream)
        dtype = nrrd.reader._determine_datatype(header)
        sizes = [int(s) for s in header["sizes"]]
    except Exception as exc:
        raise InputError(f"{field}: invalid NRRD header ({reason(exc)})", field=field) from exc
    if header.get("data file") or header.get("datafile"):
        raise InputError(f"{field}: the NRRD's data is in another file (.nhdr + .raw); save it as one .nrrd",
                         field=field)
    if len(sizes) not in (2, 3) or min(sizes) < 1:
        raise InputError(f"{field}: NRRD with sizes {sizes}; send one 2D or 3D scalar volume", field=field)
    n_voxels = int(np.prod(sizes, dtype=np.int64))
    if max_voxels is not None and n_voxels > max_voxels:
        raise InputError(f"{field}: the NRRD declares {'x'.join(map(str, sizes))} = {n_voxels:,} voxels, above "
                         f"the limit of {max_voxels:,}; crop or downsample the volume", field=field, code="too_large")
    encoding = str(header.get("encoding", "raw")).lower()
    if encoding in ("gzip", "gz", "bzip2", "bz2"):
        skip = int(header.get("byte skip", header.get("byteskip", 0)))
        # pynrrd inflates everything there is: a bomb is stopped here, at the size the header declares
        raw = _inflate(stream.read(), encoding, n_voxels * dtype.itemsize + max(skip, 0), field)
        header["encoding"] = "raw"
        stream = io.BytesIO(raw)
    try:
        array = nrrd.read_data(header, stream, index_order="F")
    except Exception as exc:
        raise InputError(f"{field}: cannot read the NRRD data ({reason(exc)}); the file may be truncated",
                         field=field) from exc
    array = np.asarray(array).reshape(sizes, order="F")
    if array.ndim == 2:
        array = array[..., None]
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(d, dtype=np.float64) for d in directions]
        rows = [r for r in rows if np.isfinite(r).all()]  # "none" for non-spatial axes
        for i, row in enumerate(rows[:3]):
            affine[: len(row), i] = row
    origin = header.get("space origin")
    if origin is not None:
        affine[: len(origin), 3] = np.asarray(origin, dtype=np.float64)
    space = str(header.get("space", "")) or None
    meta = {"dtype": str(array.dtype), "space": space, "stored_shape": tuple(sizes)}
    return ImageData(array=np.ascontiguousarray(array), kind="volume", format="nrrd", affine=affine,
                     header=dict(header), meta=meta)


def seg_nrrd_bytes(mask: np.ndarray, affine: np.ndarray | None, space: str | None, segments: list[Segment]) -> bytes:
    """A 3D Slicer ``.seg.nrrd``: the (H, W, D) label map gzipped, the affine as space directions and origin, one
    ``SegmentN_*`` group per segment (ID, Name, Color in 0..1, LabelValue, Layer 0, Extent)."""
    import nrrd

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    space = _SPACES.get(space or "", space) or "right-anterior-superior"
    header: dict = {
        "type": str(mask.dtype), "encoding": "gzip", "space": space,
        "space directions": affine[:3, :3].T.copy(), "space origin": affine[:3, 3].copy(),
        "kinds": ["domain", "domain", "domain"],
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    extent = " ".join(f"0 {n - 1}" for n in mask.shape)
    for i, seg in enumerate(segments):
        r, g, b = (c / 255 for c in seg.colour)
        header.update({f"Segment{i}_ID": f"Segment_{seg.label}", f"Segment{i}_Name": seg.name,
                       f"Segment{i}_Color": f"{r:.6g} {g:.6g} {b:.6g}", f"Segment{i}_LabelValue": str(seg.label),
                       f"Segment{i}_Layer": "0", f"Segment{i}_Extent": extent,
                       f"Segment{i}_NameAutoGenerated": "0", f"Segment{i}_ColorAutoGenerated": "0"})
    buf = io.BytesIO()
    nrrd.write(buf, np.ascontiguousarray(mask), header, compression_level=6, index_order="F")
    return buf.getvalue()


def nrrd_bytes(array: np.ndarray, affine: np.ndarray | None = None, space: str = "RAS") -> bytes:
    """A plain .nrrd of any real (H, W, D) array (identity affine if None), for tests and examples."""
    import nrrd

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    header = {"space": _SPACES.get(space, space), "space directions": affine[:3, :3].T.copy(),
              "space origin": affine[:3, 3].copy(), "encoding": "gzip"}
    buf = io.BytesIO()
    nrrd.write(buf, np.ascontiguousarray(array), header, index_order="F")
    return buf.getvalue()
