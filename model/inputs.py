"""Support files -> a prepared support set: the one path from uploaded bytes (or files on disk) to what the
network takes. The service (/segment, /jobs, /prompts), ``icseg segment`` and ``icseg batch`` all use it.

Each file is decoded once (``data.io``, with the caller's size limits); each check is made once, by
``Segmenter.prepare_support`` (2D) or ``Segmenter.prepare_volume_support`` (3D): counts, labels, values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data.errors import InputError
from data.io import DEFAULT_MAX_PIXELS, DEFAULT_MAX_VOXELS, read_image, read_mask
from model.segmenter import Segmenter
from model.support import PreparedSupport
from model.volume import VolumeSupport

Source = bytes | str | os.PathLike


@dataclass
class SupportFiles:
    """Decoded support pairs, all 2D or all 3D.

    Attributes:
        images: 2D items (H_i, W_i) or (H_i, W_i, 3); or 3D volumes (H_i, W_i, D_i).
        masks: their label maps, the same shapes without colour.
        volumes: True for 3D volumes (position-matched support), False for 2D items.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    volumes: bool

    def prepare(self, segmenter: Segmenter, axis: int = 2) -> PreparedSupport | VolumeSupport:
        """Blocking: the support set prepared for the network (``axis``: the slicing axis of 3D volumes)."""
        if self.volumes:
            return segmenter.prepare_volume_support(self.images, self.masks, axis)
        return segmenter.prepare_support(self.images, self.masks)


def read_support(
    images: Sequence[Source],
    masks: Sequence[Source],
    *,
    volumes: bool,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
) -> SupportFiles:
    """Blocking: decode every support file once.

    Args:
        images, masks: the support files (bytes or paths), paired by order.
        volumes: 3D support volumes are accepted (a volume query); then the items are all 3D or all 2D.
            Otherwise every item must be 2D (a NIfTI holding one slice counts as 2D).
        max_pixels, max_voxels: size limits checked from each file's header before decoding.

    Raises:
        InputError: a file that cannot be decoded (its code says why), a 3D item where 2D is needed, a mix.
    """
    decoded = [read_image(src, max_pixels=max_pixels, max_voxels=max_voxels, field=f"support_images[{i}]")
               for i, src in enumerate(images)]
    labels = [read_mask(src, max_pixels=max_pixels, max_voxels=max_voxels, field=f"support_masks[{i}]")
              for i, src in enumerate(masks)]
    is_3d = [item.is_3d for item in decoded]
    if volumes and is_3d and all(is_3d):
        return SupportFiles([item.array for item in decoded], [m.array for m in labels], volumes=True)
    if volumes and any(is_3d):
        raise InputError("mix of 3D and 2D support items: send only NIfTI volumes or only 2D images",
                         field="support_images")
    return SupportFiles([item.as_2d(f"support_images[{i}]") for i, item in enumerate(decoded)],
                        [m.as_2d(f"support_masks[{i}]") for i, m in enumerate(labels)], volumes=False)
