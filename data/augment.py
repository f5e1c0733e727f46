"""Augmentations for in-context training, both kinds the UniverSeg paper names.

* in-task: independent per image of an episode (affine, elastic, intensity, gamma, noise, blur), with MONAI's
  dictionary transforms so that an image and its mask move together;
* task-level: one draw for the whole episode (intensity inversion, foreground/background swap, label
  boundary via morphological gradient, dilation/erosion, flips), which makes new tasks out of old ones.

Episodes are (n, N, N) images and (n, N, N) masks, float in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)


def in_task_transform(p: float = 0.5) -> Compose:
    """MONAI pipeline on {"image": (1, N, N), "mask": (1, N, N)}; call ``set_random_state`` to seed it."""
    keys = ("image", "mask")
    return Compose(
        [
            RandAffined(
                keys,
                prob=p,
                rotate_range=0.35,
                scale_range=0.15,
                translate_range=(8, 8),
                shear_range=0.05,
                mode=("bilinear", "bilinear"),
                padding_mode="zeros",
            ),
            Rand2DElasticd(
                keys, spacing=(24, 24), magnitude_range=(0.0, 2.0), prob=p / 4, mode=("bilinear", "bilinear")
            ),
            RandScaleIntensityd("image", factors=0.2, prob=p),
            RandShiftIntensityd("image", offsets=0.1, prob=p),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=p),
            RandGaussianSmoothd("image", sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), prob=p / 2),
            RandGaussianNoised("image", std=0.03, prob=p / 2),
        ]
    )


def apply_in_task(
    transform: Compose, images: torch.Tensor, masks: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``transform`` independently to each image/mask pair; the seed fixes every draw."""
    transform.set_random_state(seed=seed)
    out_i, out_m = [], []
    for image, mask in zip(images, masks):
        d = transform({"image": image[None], "mask": mask[None]})
        out_i.append(torch.as_tensor(d["image"])[0])
        out_m.append(torch.as_tensor(d["mask"])[0])
    images = torch.stack(out_i).clamp_(0, 1)
    return images, torch.stack(out_m).clamp_(0, 1)


def _dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(masks.unsqueeze(1), 2 * radius + 1, stride=1, padding=radius).squeeze(1)


def _erode(masks: torch.Tensor, radius: int) -> torch.Tensor:
    return 1 - _dilate(1 - masks, radius)


def apply_task_level(
    images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, p: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw for the whole episode; masks that a morphological change empties fall back to the input."""
    if rng.random() < p:
        images = 1 - images
    if rng.random() < p:
        images = images.flip(-1)
        masks = masks.flip(-1)
    if rng.random() < p:
        images = images.flip(-2)
        masks = masks.flip(-2)
    if rng.random() < p:
        k = int(rng.integers(1, 4))
        images = torch.rot90(images, k, dims=(-2, -1))
        masks = torch.rot90(masks, k, dims=(-2, -1))
    binary = (masks > 0.5).float()
    changed = None
    r = rng.random()
    if r < p / 2:
        radius = int(rng.integers(1, 3))
        changed = _dilate(binary, radius) - _erode(binary, radius)  # label boundary (morphological gradient)
    elif r < p:
        radius = int(rng.integers(1, 4))
        changed = _dilate(binary, radius) if rng.random() < 0.5 else _erode(binary, radius)
    if changed is not None and bool((changed.flatten(1).sum(1) > 0).all()):
        masks = changed
    if rng.random() < p / 2:
        swapped = 1 - masks
        if bool((swapped.flatten(1).sum(1) > 0).all()):
            masks = swapped  # foreground/background swap
    return images.contiguous(), masks.contiguous()


def in_task_batched(
    images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator, p: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-task augmentations of ``in_task_transform``, drawn per image but applied to the episode at once.

    Written here rather than with MONAI because the per-image MONAI pipeline measured about a third of a
    training step on these 2-core machines (bench/bench_train.py); one ``affine_grid`` + ``grid_sample`` for
    all n images costs a few milliseconds. Same ranges as ``in_task_transform``.
    """
    n, size = images.shape[0], images.shape[-1]

    def coin(prob: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) < prob).float()

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    on = coin(p)
    angle = uniform(-0.35, 0.35) * on
    scale = 1 + uniform(-0.15, 0.15) * on
    shear = uniform(-0.05, 0.05) * on
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (16 / size) * on[:, None]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )  # (n, 2, 3)
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    elastic = coin(p / 4)
    if bool(elastic.any()):
        low = torch.randn(n, 2, 6, 6, generator=gen) * 0.03 * elastic.view(n, 1, 1, 1)
        grid = grid + F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    pair = torch.stack([images, masks], 1)  # (n, 2, N, N)
    pair = F.grid_sample(pair, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    images, masks = pair[:, 0], pair[:, 1]
    images = images * (1 + uniform(-0.2, 0.2) * coin(p)).view(n, 1, 1)
    images = images + (uniform(-0.1, 0.1) * coin(p)).view(n, 1, 1)
    gamma = torch.where(coin(p) > 0, uniform(0.7, 1.5), torch.ones(n)).view(n, 1, 1)
    images = images.clamp(0, 1) ** gamma
    blur = coin(p / 2)
    if bool(blur.any()):
        blurred = F.avg_pool2d(F.pad(images[:, None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[:, 0]
        images = torch.where(blur.view(n, 1, 1) > 0, blurred, images)
    images = images + torch.randn(images.shape, generator=gen) * 0.03 * coin(p / 2).view(n, 1, 1)
    return images.clamp(0, 1).contiguous(), masks.clamp(0, 1).contiguous()
