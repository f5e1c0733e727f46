"""Label maps: what a decoded mask must be (non-negative whole numbers, one channel) and its smallest dtype."""

from __future__ import annotations

import numpy as np

from data.errors import InputError

# the largest label value: what a 16-bit PNG or TIFF mask holds (the answer to a 2D query is such a file), so
# that every accepted support mask can be answered and stored; NIfTI masks are held to it too, one rule
MAX_LABEL = 65535


def as_label_map(array: np.ndarray, field: str, colour: bool) -> np.ndarray:
    """Any decoded array -> a non-negative integer label map (uint8, uint16 or uint32), or an InputError.

    ``colour`` says that a trailing axis of 3 is RGB (2D images), not the D of a volume.
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
    if top > MAX_LABEL:
        raise InputError(f"{field}: label value {top:,} is above {MAX_LABEL:,}, the largest a mask file (16-bit PNG "
                         "or TIFF) holds; renumber the labels 1..K", field=field)
    return array.astype(np.uint8 if top <= 255 else np.uint16, copy=False)
