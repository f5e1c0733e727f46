"""PNG, JPEG, TIFF and BMP through Pillow: reading (sizes checked from the header before pixels are
decoded) and lossless writing."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, features

from data.errors import InputError
from data.io.base import ImageData, reason

log = logging.getLogger(__name__)

PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}


def decode_pillow(data: bytes, fmt: str, max_pixels: int | None, field: str, as_mask: bool) -> ImageData:
    """A 2D file -> ImageData (H, W) or (H, W, 3); raises InputError (code "too_large" above ``max_pixels``)."""
    name = fmt.upper()
    try:
        # our own max_pixels check below is the one that decides; Pillow's warnings (bomb, corrupt EXIF of a
        # damaged file) are logged rather than shown to a service's users
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            im = Image.open(io.BytesIO(data), formats=[PILLOW_FORMATS[fmt]])
        for w in caught:
            log.debug("%s: Pillow warned while opening (%s)", field, w.category.__name__)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{field}: the {name} declares too many pixels ({reason(exc)}); send a smaller image",
                         field=field, code="too_large") from exc
    except Exception as exc:  # Pillow raises many types for damaged headers
        raise InputError(f"{field}: cannot read this {name} ({reason(exc)}); the file may be damaged",
                         field=field) from exc
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise InputError(f"{field}: the {name} declares an empty size {width}x{height}", field=field)
        if max_pixels is not None and width * height > max_pixels:
            raise InputError(
                f"{field}: the {name} declares {width}x{height} = {width * height:,} pixels, above the limit of "
                f"{max_pixels:,}; downscale or crop it",
                field=field, code="too_large",
            )
        try:  # counting TIFF pages walks the IFD chain: a damaged next-IFD pointer fails here
            frames = getattr(im, "n_frames", 1)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged IFDs
            raise InputError(f"{field}: cannot read the pages of this {name} ({reason(exc)}); the file may be "
                             "damaged", field=field) from exc
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
                log.debug("%s: Pillow warned while decoding (%s)", field, w.category.__name__)
        except InputError:
            raise
        except Exception as exc:  # truncated data, unsupported compression or bit depth
            raise InputError(
                f"{field}: cannot decode this {name} ({reason(exc)}); the file may be truncated or use an "
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


# -- writing ---------------------------------------------------------------------------------------------


def pillow_bytes(array: np.ndarray, fmt: str, field: str) -> bytes:
    """Lossless PNG or TIFF (deflate) of (H, W) bool/uint8/uint16 or (H, W, 3|4) uint8."""
    im = _to_pillow(np.asarray(array), field)
    buf = io.BytesIO()
    if fmt == "TIFF":
        im.save(buf, format="TIFF", compression="tiff_adobe_deflate" if features.check("libtiff") else None)
    else:
        im.save(buf, format=fmt, **({"optimize": False, "compress_level": 6} if fmt == "PNG" else {}))
    return buf.getvalue()


def lossy_bytes(array: np.ndarray, fmt: str) -> bytes:
    """JPEG (quality 95) or BMP of an image array, for examples and tests; never for masks."""
    im = Image.fromarray(np.ascontiguousarray(array))
    if im.mode == "RGBA" and fmt == "JPEG":
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
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
