"""Turning user arrays of any size, dtype and colour into network-ready tensors, and back.

Letters: H x W a user's image, N the network side.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data.errors import InputError

# ITU-R BT.601 luma weights: RGB photographs (endoscopy, dermoscopy, histology) become one channel
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_gray(image: np.ndarray, field: str = "query") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of any numeric dtype -> (H, W) float32.

    Raises:
        InputError: wrong dimensionality, empty image or non-finite pixels.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.float32)
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise InputError(f"{field} must hold real numbers, got dtype {image.dtype}", field=field)
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        if image.shape[-1] == 1:
            image = image[..., 0]
        else:
            image = image[..., :3].astype(np.float32) @ _LUMA
    if image.ndim != 2:
        raise InputError(
            f"{field} must be a 2D image (H, W) or (H, W, 3); got shape {image.shape}. "
            "Use predict_volume for 3D volumes",
            field=field,
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{field} is empty (shape {image.shape})", field=field)
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InputError(f"{field} has NaN or infinite pixels; replace them before segmenting", field=field)
    return image


def normalize(image: np.ndarray, clip_percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max to [0, 1], optionally after clipping to percentiles (robust for CT/MR). Constant -> zeros."""
    if clip_percentiles is not None:
        lo, hi = np.percentile(image, clip_percentiles)
        image = np.clip(image, lo, hi)
    lo, hi = float(image.min()), float(image.max())
    if hi - lo <= 0:
        return np.zeros_like(image, dtype=np.float32)
    return ((image - lo) / (hi - lo)).astype(np.float32)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (..., H, W) float tensors; antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return out.reshape(*lead, *size)


def prepare_image(
    image: np.ndarray, size: int, field: str, clip_percentiles: tuple[float, float] | None = None
) -> torch.Tensor:
    """Any 2D image -> (N, N) float32 tensor in [0, 1], N = ``size``."""
    return prepare_gray(to_gray(image, field), size, clip_percentiles)


def prepare_gray(gray: np.ndarray, size: int, clip_percentiles: tuple[float, float] | None = None) -> torch.Tensor:
    """A ``to_gray`` image (H, W) float32 -> (N, N) float32 tensor in [0, 1], N = ``size``."""
    return resize(torch.from_numpy(normalize(gray, clip_percentiles)), (size, size)).clamp_(0, 1)


def label_values(mask: np.ndarray) -> list[int]:
    """Sorted non-zero label values of a label map."""
    return [int(v) for v in np.unique(mask) if v != 0]


def check_mask(mask: np.ndarray, image_shape: tuple[int, int], field: str) -> np.ndarray:
    """A 2D integer label map the size of its image.

    Raises:
        InputError: wrong size, non-integer or negative values.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(f"{field} must be a 2D label map, got shape {mask.shape}", field=field)
    if mask.shape != tuple(image_shape):
        raise InputError(
            f"{field} has shape {mask.shape} but its image has {tuple(image_shape)}; a mask must match its image",
            field=field,
        )
    if mask.dtype == bool:
        return mask.astype(np.int64)
    if np.issubdtype(mask.dtype, np.floating):
        if not np.isfinite(mask).all():
            raise InputError(f"{field} has NaN or infinite values", field=field)
        if not np.all(mask == np.round(mask)):
            raise InputError(f"{field} must hold integer labels (0 background, 1..K structures)", field=field)
    if mask.min() < 0:
        raise InputError(f"{field} has negative labels; use 0 for background and 1..K", field=field)
    return mask.astype(np.int64)


def prepare_mask(mask: np.ndarray, labels: list[int], size: int) -> torch.Tensor:
    """Label map (H, W) -> (K, N, N) float32 in [0, 1], one soft binary mask per label (antialiased resize)."""
    binary = torch.from_numpy(np.stack([mask == v for v in labels]).astype(np.float32))
    return resize(binary, (size, size)).clamp_(0, 1)
