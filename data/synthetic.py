"""Procedurally generated segmentation tasks: unbounded, seeded, fast.

A task is a random label map (smoothed noise, argmax into R regions); each subject of the task is that
map under its own smooth random deformation, rendered with per-label intensities, texture, a bias field,
blur and noise. The foreground is one label or a union of a few. Letters: n subjects, R regions, N side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _smooth_noise(gen: torch.Generator, channels: int, size: int, cells: int, batch: int = 1) -> torch.Tensor:
    """(batch, channels, size, size) noise smoothed by bicubic upsampling from cells x cells."""
    low = torch.randn(batch, channels, cells, cells, generator=gen)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)


def _rand(gen: torch.Generator, lo: float, hi: float, shape=()) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.3:
        return x
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
    )


def synthetic_episode(n_images: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate n subjects of one random task.

    Args:
        n_images: subjects (S + 1 for an episode: the first can serve as the query).
        size: N.
        gen: the seeded generator; the same state gives the same episode.

    Returns:
        images (n, N, N) float32 in [0, 1] and masks (n, N, N) float32 in {0, 1}, every mask non-empty.
    """
    for _ in range(10):
        images, masks = _try_episode(n_images, size, gen)
        if bool((masks.flatten(1).sum(1) > 0).all()):
            return images, masks
    return images, masks.index_fill_(0, torch.nonzero(masks.flatten(1).sum(1) == 0)[:, 0], 0).clamp_(0, 1)


def displaced_grid(disp: torch.Tensor) -> torch.Tensor:
    """The identity sampling grid plus disp (n, 2, N, N) in [-1, 1] units, as grid_sample takes it: (n, N, N, 2)."""
    size = disp.shape[-1]
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([xx, yy], dim=-1).unsqueeze(0) + disp.permute(0, 2, 3, 1)


def region_map(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """A random label map of R regions shared by the task, under a smooth deformation per subject.

    Returns:
        labels (n, N, N) int64 in [0, R), and R.
    """
    regions = _randint(gen, 3, 12)
    base = _smooth_noise(gen, regions, size, _randint(gen, 2, 6)) * 1.0
    base = base + _smooth_noise(gen, regions, size, _randint(gen, 6, 16)) * float(_rand(gen, 0.0, 0.6))
    strength = float(_rand(gen, 0.0, 0.15))
    disp = _smooth_noise(gen, 2, size, _randint(gen, 3, 6), batch=n) * strength  # (n, 2, N, N)
    grid = displaced_grid(disp)  # (n, N, N, 2)
    logits = F.grid_sample(base.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return logits.argmax(dim=1), regions


def _try_episode(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels, regions = region_map(n, size, gen)
    # foreground: one label, or a union of a few, among those present in the first subject
    present = torch.unique(labels[0])
    k = min(len(present), 1 if float(torch.rand(1, generator=gen)) < 0.6 else _randint(gen, 2, 3))
    chosen = present[torch.randperm(len(present), generator=gen)[:k]]
    masks = torch.isin(labels, chosen).float()
    # rendering: per-label mean (shared by the task, jittered per subject), texture, bias field, blur, noise
    means = _rand(gen, 0.0, 1.0, (regions,))
    jitter = _rand(gen, -0.05, 0.05, (n, regions))
    stds = _rand(gen, 0.0, 0.12, (regions,))
    per_pixel_mean = torch.gather((means + jitter), 1, labels.flatten(1)).view(n, size, size)
    texture = _smooth_noise(gen, 1, size, _randint(gen, 8, 48), batch=n)[:, 0]
    images = per_pixel_mean + stds[labels] * texture
    bias = torch.exp(_smooth_noise(gen, 1, size, 3, batch=n)[:, 0] * float(_rand(gen, 0.0, 0.3)))
    images = images * bias
    images = _gaussian_blur(images.unsqueeze(1), float(_rand(gen, 0.0, 1.5))).squeeze(1)
    images = images + torch.randn(images.shape, generator=gen) * float(_rand(gen, 0.0, 0.06))
    lo = images.flatten(1).min(1).values.view(n, 1, 1)
    hi = images.flatten(1).max(1).values.view(n, 1, 1)
    return (images - lo) / (hi - lo).clamp_min(1e-6), masks
