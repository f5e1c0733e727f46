"""Superpixel tasks on real images (the recipe of ScribblePrompt and MultiverSeg).

One real image is over-segmented with scikit-image (``felzenszwalb`` or ``slic``); the foreground is one
superpixel or a union of neighbouring ones. The subjects of the task are that image and mask under
independent smooth deformations and intensity changes, so the task is "this region of this kind of image".
Seeded: a numpy ``Generator`` picks the segmentation and the region, a torch ``Generator`` the deformations.
Letters: n subjects, N side.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import felzenszwalb, slic

from data.synthetic import _rand, _smooth_noise
from data.synthetic_shapes import tone_curve, warp


def superpixels(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, N) int label map of superpixels of a (N, N) float image in [0, 1], with random granularity."""
    if rng.random() < 0.5:
        return felzenszwalb(image, scale=float(rng.uniform(20, 400)), sigma=float(rng.uniform(0.3, 1.2)),
                            min_size=int(rng.integers(10, 60)))
    return slic(image, n_segments=int(rng.integers(8, 80)), compactness=float(rng.uniform(0.02, 0.3)),
                channel_axis=None, start_label=0)


def superpixel_mask(segments: np.ndarray, rng: np.random.Generator, min_frac: float = 0.004,
                    max_frac: float = 0.45) -> np.ndarray | None:
    """(N, N) bool: one superpixel, or it and up to three neighbours; None if no region has a usable size."""
    ids, counts = np.unique(segments, return_counts=True)
    frac = counts / segments.size
    usable = ids[(frac >= min_frac) & (frac <= max_frac)]
    if usable.size == 0:
        return None
    mask = segments == rng.choice(usable)
    for _ in range(int(rng.integers(0, 4))):
        ring = ndimage.binary_dilation(mask) & ~mask
        neighbours = np.unique(segments[ring])
        if neighbours.size == 0:
            break
        grown = mask | (segments == rng.choice(neighbours))
        if grown.mean() > max_frac:
            break
        mask = grown
    return mask


def superpixel_episode(
    image: torch.Tensor, n: int, gen: torch.Generator, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """n subjects of a superpixel task on ``image`` (N, N) float in [0, 1].

    Returns:
        images (n, N, N) in [0, 1] and masks (n, N, N) in [0, 1], or None when the image gives no usable region.
    """
    size = image.shape[-1]
    base = image.float().numpy()
    mask = superpixel_mask(superpixels(base, rng), rng)
    if mask is None:
        return None
    pair = torch.stack([image.float(), torch.from_numpy(mask.astype(np.float32))])  # (2, N, N)
    disp = _smooth_noise(gen, 2, size, int(rng.integers(3, 7)), batch=n) * float(_rand(gen, 0.02, 0.12))
    # one warp for image and mask of each subject: (n, 2, N, N) resampled as 2n single-channel maps
    stacked = pair.expand(n, -1, -1, -1).reshape(2 * n, size, size)
    warped = warp(stacked, disp.repeat_interleave(2, dim=0)).view(n, 2, size, size)
    images, masks = warped[:, 0], warped[:, 1]
    if float(torch.rand(1, generator=gen)) < 0.5:
        images = tone_curve(images, gen)
    images = images * _rand(gen, 0.8, 1.2, (n, 1, 1)) + _rand(gen, -0.1, 0.1, (n, 1, 1))
    if bool((masks.flatten(1).amax(1) < 0.5).any()):
        return None  # the deformation pushed the region out of a subject
    return images.clamp(0, 1), masks.clamp(0, 1)
