"""Support sets: the checks every support set passes once (counts, labels) and ``PreparedSupport``, a 2D
support set normalised and resized for the network (what a stored prompt keeps).

Letters: S support items, K labels, N the network side, H x W an item's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data.errors import InputError
from data.preprocess import check_mask, label_values, prepare_gray, prepare_mask, to_gray

MAX_POOL = 512  # the most items a 2D support set (a stored prompt) may hold by default; see model.retrieval


@dataclass
class PreparedSupport:
    """A 2D support set after normalisation and resizing: what a stored prompt keeps.

    Attributes:
        images: the support images, (S, N, N) float32 in [0, 1].
        masks: the support masks, (K, S, N, N) float32 in [0, 1]: one soft binary mask per label and item,
            label first, because every label is its own pass of the network.
        labels: the K label values, ascending.
    """

    images: torch.Tensor
    masks: torch.Tensor
    labels: tuple[int, ...]

    @property
    def size(self) -> int:
        """S, the number of support items."""
        return int(self.images.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays a stored prompt keeps (keys "images", "masks", "labels": the stored format)."""
        return {"images": self.images.numpy(), "masks": self.masks.numpy(), "labels": np.array(self.labels)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PreparedSupport:
        return cls(
            torch.from_numpy(np.asarray(arrays["images"], dtype=np.float32)),
            torch.from_numpy(np.asarray(arrays["masks"], dtype=np.float32)),
            tuple(int(v) for v in arrays["labels"]),
        )


def check_support_counts(n_images: int, n_masks: int, max_support: int) -> None:
    """The one count check of a support set (2D items or 3D volumes).

    Raises:
        InputError: "missing_support" (no images or no masks), "support_count_mismatch" or
            "too_many_support_items".
    """
    if n_images == 0 or n_masks == 0:
        missing = "support_images" if n_images == 0 else "support_masks"
        raise InputError(f"{missing} is missing: send support images and masks paired by order", field=missing,
                         code="missing_support")
    if n_images != n_masks:
        raise InputError(f"{n_images} support images but {n_masks} support masks; pair them one to one",
                         field="support_masks", code="support_count_mismatch")
    if n_images > max_support:
        raise InputError(f"{n_images} support items exceed the maximum of {max_support}; send fewer",
                         field="support_images", code="too_many_support_items")


def check_at_once(n_items: int, max_support: int) -> None:
    """Raises "too_many_support_items" when a support set holds more items than the model takes at once."""
    if n_items > max_support:
        raise InputError(f"{n_items} support items exceed the {max_support} the model takes at once; choose "
                         "support_size of them (select=similar or random, model.retrieval)", field="support_images",
                         code="too_many_support_items")


def label_set(masks: Sequence[np.ndarray], max_labels: int | None) -> tuple[int, ...]:
    """The support masks' label values, computed once.

    Every label is its own pass of the network and its own probability map, so a mask of noise (a 16-bit
    image sent as a mask holds thousands of values) would cost minutes and gigabytes: counting stops as soon
    as ``max_labels`` is passed.

    Raises:
        InputError: "too_many_labels" above ``max_labels``; "invalid_input" when no mask has foreground.
    """
    labels: set[int] = set()
    for i, mask in enumerate(masks):
        labels.update(label_values(mask))
        if max_labels is not None and len(labels) > max_labels:
            raise InputError(f"the support masks hold {len(labels):,} or more distinct labels, above the limit of "
                             f"{max_labels} (max_labels; ICSEG_MAX_LABELS in the service); a mask is a label map "
                             "(0 background, 1..K structures): check that no image was sent as a mask",
                             field=f"support_masks[{i}]", code="too_many_labels")
    if not labels:
        raise InputError("no support mask has any foreground: label the structure (values 1..K)",
                         field="support_masks")
    return tuple(sorted(labels))


def prepare_support(
    support_images: Sequence[np.ndarray],
    support_masks: Sequence[np.ndarray],
    *,
    size: int,
    max_support: int,
    max_labels: int | None = None,
    clip_percentiles: tuple[float, float] | None = None,
) -> PreparedSupport:
    """Validate, normalise and resize a 2D support set once (see ``Segmenter.prepare_support``)."""
    support_images = [] if support_images is None else support_images
    support_masks = [] if support_masks is None else support_masks
    check_support_counts(len(support_images), len(support_masks), max_support)
    grays, masks = [], []
    for i, (image, mask) in enumerate(zip(support_images, support_masks)):
        gray = to_gray(image, field=f"support_images[{i}]")  # (H_i, W_i) float32, the one conversion
        masks.append(check_mask(mask, gray.shape, field=f"support_masks[{i}]"))
        grays.append(gray)
    labels = label_set(masks, max_labels)
    images = torch.stack([prepare_gray(g, size, clip_percentiles) for g in grays])  # (S, N, N)
    per_item = torch.stack([prepare_mask(m, list(labels), size) for m in masks])  # (S, K, N, N)
    return PreparedSupport(images, per_item.transpose(0, 1).contiguous(), labels)  # masks (K, S, N, N)


def merge_labels(probs: np.ndarray, labels: Sequence[int], threshold: float) -> np.ndarray:
    """(K, ...) probabilities -> label map: the most probable label where it reaches ``threshold``, else 0.

    Returns:
        uint8 (uint16 when a label exceeds 255), the probabilities' shape without K.
    """
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold}", field="threshold")
    dtype = np.uint8 if max(labels) <= 255 else np.uint16
    best = probs.argmax(axis=0)
    values = np.asarray(labels, dtype=dtype)[best]
    return np.where(probs.max(axis=0) >= threshold, values, 0).astype(dtype)
