"""Overlays: a query as RGB with each label's contour in its own colour."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# distinct on gray anatomy and for the common colour-vision deficiencies (Okabe-Ito, then Tol's bright)
PALETTE = np.array(
    [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167),
     (238, 102, 119), (34, 136, 51), (170, 51, 119)],
    dtype=np.uint8,
)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3|4) of any dtype -> (H, W, 3) uint8 for display.

    uint8 is kept; other types are scaled between their 0.5th and 99.5th percentiles (CT, MR, 16-bit).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    if image.dtype != np.uint8:
        values = image.astype(np.float32)
        finite = values[np.isfinite(values)]
        lo, hi = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
        values = np.clip((np.nan_to_num(values) - lo) / max(hi - lo, 1e-6), 0, 1)
        image = np.round(values * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"cannot display an image of shape {image.shape} as RGB")
    return np.ascontiguousarray(image)


def boundary(region: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the pixels of the region with a 4-neighbour outside it (the image edge counts as outside)."""
    padded = np.pad(region, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~inner


def _dilate(region: np.ndarray) -> np.ndarray:
    padded = np.pad(region, 1, constant_values=False)
    return padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    labels: Sequence[int] | None = None,
    *,
    thickness: int | None = None,
    fill: float = 0.0,
) -> np.ndarray:
    """Draw each label's contour over the image.

    Args:
        image: (H, W) or (H, W, 3) of any dtype.
        mask: (H, W) label map, 0 background.
        labels: the labels to draw, each in ``PALETTE[i % 10]`` by its position here; default: those present.
        thickness: contour width in pixels; default grows with the image (1 px up to 512 px).
        fill: opacity in [0, 1] of a tint inside each region (0: contours only).

    Returns:
        (H, W, 3) uint8.
    """
    rgb = to_rgb8(image).copy()
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"the mask has shape {mask.shape} but the image has {rgb.shape[:2]}")
    if labels is None:
        labels = [int(v) for v in np.unique(mask) if v != 0]
    if thickness is None:
        thickness = max(1, round(max(mask.shape) / 512))
    for i, label in enumerate(labels):
        colour = PALETTE[i % len(PALETTE)]
        region = mask == label
        if fill > 0:
            rgb[region] = np.round((1 - fill) * rgb[region] + fill * colour).astype(np.uint8)
        edge = boundary(region)
        for _ in range(thickness - 1):
            edge = _dilate(edge)
        rgb[edge] = colour
    return rgb
