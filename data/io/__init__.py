"""Reading images, volumes and masks from bytes or files, and writing masks back in the query's format.

One module per concern, in the reader/writer style of nnU-Net's ``imageio``:

- ``detect``: formats by magic bytes, never by file name;
- ``pillow``, ``nifti``, ``dicom``: PNG/JPEG/TIFF/BMP through Pillow, NIfTI-1/2 (plain or gzipped) through
  nibabel, single-frame DICOM through pydicom; each reads and writes its format;
- ``dicom_series``, ``dicom_seg``, ``nrrd_io``, ``segments``: DICOM volumes (series, zip, multi-frame), DICOM SEG
  through highdicom, NRRD and ``.seg.nrrd`` through pynrrd, label names and colours;
- ``labels``: what a mask must be (a label map);
- ``readers``, ``writers``: ``read_image``/``read_mask`` and ``encode_mask``/``write_mask``/``save_image``;
- ``atomic``: ``write_atomic``, the one atomic writer of the tree.

Every size is checked against the limits from the file's header *before* pixels are decoded
(decompression bombs), and every failure is an ``InputError`` naming the field, saying what to change and
carrying a code ("unsupported_format", "too_large" or "invalid_input").

Letters: H x W a 2D image; a volume is (H, W, D), D slices along its last stored axis.
"""

from data.io.atomic import write_atomic
from data.io.base import DEFAULT_MAX_PIXELS, DEFAULT_MAX_VOXELS, FORMATS, ImageData
from data.io.detect import detect_format
from data.io.readers import read_image, read_mask, read_series
from data.io.writers import encode_mask, encode_probs, save_image, to_png_bytes, write_mask

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_VOXELS",
    "FORMATS",
    "ImageData",
    "detect_format",
    "encode_mask",
    "encode_probs",
    "read_image",
    "read_mask",
    "read_series",
    "save_image",
    "to_png_bytes",
    "write_atomic",
    "write_mask",
]
