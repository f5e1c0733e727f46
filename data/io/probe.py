"""What a file will cost, from its header alone: pixels or voxels, channels and bytes once decoded.

A service prices a whole request with these figures *before* any pixel is decoded (``app.budget``). Nothing
here decodes pixel data: Pillow's ``open`` reads the PNG IHDR / JPEG SOF / TIFF IFD / BMP header, NIfTI
headers are parsed from their first 540 (inflated) bytes, DICOM headers with pydicom without the pixels.
A deflated DICOM is inflated only up to ``max_bytes``: the inflation bound is checked here, not by the
decoder, which inflates everything.

Letters: H x W a 2D image, (H, W, D) a volume.
"""

from __future__ import annotations

import gzip
import io
import logging
import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from data.errors import InputError
from data.io.detect import detect_format, nifti_version

log = logging.getLogger(__name__)

_SAMPLE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
# a JPEG of a flat image compresses about 200:1; one that claims 1000 times its size in pixels is forged
MAX_JPEG_RATIO = 1000
DEFLATED = "1.2.840.10008.1.2.1.99"
DEFLATE_RATIO = 100  # a deflated DICOM inflating more than 100:1 (past DEFLATE_FLOOR) is a bomb, not an image
DEFLATE_FLOOR = 64 << 20


@dataclass(frozen=True)
class Probe:
    """A file's size as its header declares it.

    Attributes:
        format: "png", "jpeg", "tiff", "bmp", "nifti" or "dicom".
        shape: (H, W) for 2D images; (H, W, D) for NIfTI volumes and multi-frame DICOM (D frames).
        channels: samples per pixel once decoded (3 for colour).
        itemsize: bytes per sample once decoded.
    """

    format: str
    shape: tuple[int, ...]
    channels: int = 1
    itemsize: int = 1

    @property
    def is_volume(self) -> bool:
        return len(self.shape) == 3

    @property
    def pixels(self) -> int:
        """Pixels (2D) or voxels (volumes)."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def decoded_bytes(self) -> int:
        return self.pixels * self.channels * self.itemsize


def probe(data: bytes, field: str, max_bytes: int | None = None) -> Probe | None:
    """The declared size of ``data``, or None when the header cannot be read here (the decoder then
    reports what is wrong with the file, with its own limits).

    Raises:
        InputError: "too_large" for a deflated DICOM that inflates past ``max_bytes`` or a JPEG whose
            declared pixels are forged (a few hundred bytes claiming 36 Mpx).
    """
    fmt = detect_format(data)
    try:
        if fmt in ("png", "jpeg", "tiff", "bmp"):
            return _probe_pillow(data, fmt, field)
        if fmt in ("nifti", "gzip"):
            return _probe_nifti(data, fmt == "gzip")
        if fmt == "dicom":
            return _probe_dicom(data, field, max_bytes)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any header the probe cannot read is left to the decoder
        log.debug("%s: header not probed (%s)", field, type(exc).__name__)
    return None


def _probe_pillow(data: bytes, fmt: str, field: str) -> Probe:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = Image.open(io.BytesIO(data), formats=[fmt.upper()])  # lazy: the header only
    with im:
        width, height = im.size
        mode = im.mode
        channels = 3 if mode not in _SAMPLE_BYTES and mode not in ("LA", "La", "PA") else 1
    probe_ = Probe(fmt, (int(height), int(width)), channels, _SAMPLE_BYTES.get(mode, 1))
    if fmt == "jpeg" and probe_.pixels > MAX_JPEG_RATIO * max(len(data), 1):
        raise InputError(f"{field}: the JPEG declares {width}x{height} pixels but holds only {len(data):,} bytes; "
                         "it is truncated or forged", field=field, code="too_large")
    return probe_


def _probe_nifti(data: bytes, gzipped: bool) -> Probe | None:
    import nibabel as nib

    head = gzip.GzipFile(fileobj=io.BytesIO(data)).read(540) if gzipped else data[:540]
    version = nifti_version(head)
    if not version:
        return None
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    header = klass.header_class.from_fileobj(io.BytesIO(head), check=False)
    shape = tuple(int(d) for d in header.get_data_shape())
    dtype = header.get_data_dtype()
    slope, _ = header.get_slope_inter()
    itemsize = max(dtype.itemsize, 8 if slope not in (None, 1.0) else 0)  # scaled voxels decode as float64
    if len(shape) < 2 or any(d < 1 for d in shape):
        return None
    volume = (shape[0], shape[1], shape[2] if len(shape) > 2 else 1)
    extra = int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1
    return Probe("nifti", volume, max(1, extra), itemsize)


def _probe_dicom(data: bytes, field: str, max_bytes: int | None) -> Probe | None:
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    if str(getattr(meta, "TransferSyntaxUID", "")) == DEFLATED:
        # pydicom inflates the whole dataset at once: count the inflated bytes here first, streaming (nothing
        # kept), and stop at the smaller of the budget and a ratio no real image reaches
        cap = max(DEFLATE_RATIO * len(data), DEFLATE_FLOOR)
        cap = cap if max_bytes is None else min(cap, max_bytes)
        inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), data[fp.tell():], 0
        try:
            while pending:
                total += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
                if total > cap:
                    raise InputError(f"{field}: the deflated DICOM inflates past {cap:,} bytes from {len(data):,}, "
                                     "more than this request may decode; send it uncompressed or smaller",
                                     field=field, code="too_large")
        except zlib.error as exc:
            raise InputError(f"{field}: the deflated DICOM is damaged", field=field) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        channels = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        bits = int(getattr(ds, "BitsAllocated", 16) or 16)
    shape = (rows, cols, frames) if frames > 1 else (rows, cols)
    return Probe("dicom", shape, channels, max(1, bits // 8))
