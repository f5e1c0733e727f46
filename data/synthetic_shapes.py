"""Second-generation synthetic tasks: shape families aimed at thin, small, ring-shaped and many-instance structures.

Each family draws a foreground per subject from a style shared by the task (thickness, size, count, place),
so that the support set teaches "what" and each subject varies "where". ``render`` paints every family the same
way: a random region map behind, a foreground intensity with its own contrast, texture, bias field, a random
per-episode tone curve, blur and noise. Everything comes from one ``torch.Generator``: the same state gives the
same episode. Letters: n subjects, M shapes, P points, N side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from data.synthetic import _gaussian_blur, _rand, _randint, _smooth_noise, displaced_grid, region_map

FAMILIES = ("vessels", "small", "rings", "instances")


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(c, c, indexing="ij")  # yy, xx: (N, N) pixel coordinates


def _ellipses(centres: torch.Tensor, radii: torch.Tensor, angles: torch.Tensor, size: int) -> torch.Tensor:
    """(M, N, N) normalised ellipse distance: < 1 inside. centres (M, 2) as (y, x) px, radii (M, 2) px."""
    yy, xx = _grid(size)
    dy = yy[None] - centres[:, 0, None, None]
    dx = xx[None] - centres[:, 1, None, None]
    c, s = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / radii[:, 1, None, None]) ** 2 + (v / radii[:, 0, None, None]) ** 2


def _splat(points: torch.Tensor, size: int) -> torch.Tensor:
    """(N, N) {0, 1}: the pixels that points (P, 2) as (y, x) fall in."""
    out = torch.zeros(size * size)
    p = points.round().long()
    keep = (p >= 0).all(1) & (p < size).all(1)
    p = p[keep]
    out[p[:, 0] * size + p[:, 1]] = 1.0
    return out.view(size, size)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    return F.max_pool2d(mask[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0]


def _tree(size: int, gen: torch.Generator, branches: int, tortuosity: float, step: float = 0.5) -> torch.Tensor:
    """(N, N) centre lines of a random branching tree, grown from a point near the border or the centre."""
    start = _rand(gen, 0.25, 0.75, (2,)) * size
    heading = float(_rand(gen, 0, 2 * math.pi))
    roots = _randint(gen, 1, 4)
    pending = [(start, heading + 2 * math.pi * r / roots, size * float(_rand(gen, 0.4, 0.8))) for r in range(roots)]
    lines = []
    while pending and len(lines) < branches:
        origin, heading, length = pending.pop(0)
        steps = max(4, int(length / step))
        turns = torch.randn(steps, generator=gen) * tortuosity
        turns = F.avg_pool1d(turns[None, None], 9, stride=1, padding=4, count_include_pad=False)[0, 0] * 3
        angle = heading + torch.cumsum(turns, 0)
        delta = torch.stack([torch.sin(angle), torch.cos(angle)], 1) * step
        pts = origin + torch.cumsum(delta, 0)  # (P, 2)
        lines.append(pts)
        for _ in range(_randint(gen, 1, 2)):
            at = _randint(gen, steps // 5, steps - 1)
            side = 1 if float(torch.rand(1, generator=gen)) < 0.5 else -1
            pending.append((pts[at], float(angle[at]) + side * float(_rand(gen, 0.3, 1.2)), length * 0.6))
    return _splat(torch.cat(lines), size)


def vessels(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Thin curvilinear trees, 1-5 px wide (retinal vessels, nerves, membranes)."""
    radius = _randint(gen, 0, 2)
    branches = _randint(gen, 3, 24)
    tortuosity = float(_rand(gen, 0.003, 0.04))
    trees = [_dilate(_tree(size, gen, branches, tortuosity), radius) for _ in range(n)]
    return torch.stack(trees)


def small(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """One to five small objects (lesions, nodules) of 2-8 px radius, placed anywhere or near a shared spot."""
    count = _randint(gen, 1, 5)
    r_lo = float(_rand(gen, 1.5, 4.0))
    r_hi = r_lo * float(_rand(gen, 1.0, 2.0))
    anchored = float(torch.rand(1, generator=gen)) < 0.5
    anchor = _rand(gen, 0.2, 0.8, (2,)) * size
    out = []
    for _ in range(n):
        if anchored:
            centres = anchor + torch.randn(count, 2, generator=gen) * size * 0.08
        else:
            centres = _rand(gen, 0.08, 0.92, (count, 2)) * size
        radii = _rand(gen, r_lo, r_hi, (count, 2))
        out.append((_ellipses(centres, radii, _rand(gen, 0, math.pi, (count,)), size) < 1).any(0).float())
    return torch.stack(out)


def rings(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Annuli and shapes with holes (optic disc rim, myocardium, vessel walls), deformed per subject."""
    centre = _rand(gen, 0.3, 0.7, (1, 2)) * size
    outer = _rand(gen, 0.08, 0.3, (1, 2)) * size
    inner_frac = float(_rand(gen, 0.4, 0.85))
    holes = _randint(gen, 1, 3) if float(torch.rand(1, generator=gen)) < 0.3 else 1
    out = []
    for _ in range(n):
        c = centre + torch.randn(1, 2, generator=gen) * size * 0.04
        r = outer * _rand(gen, 0.85, 1.15, (1, 2))
        angle = _rand(gen, 0, math.pi, (1,))
        ring = _ellipses(c, r, angle, size) < 1
        if holes == 1:
            ring &= _ellipses(c, r * inner_frac, angle, size) >= 1
        else:
            offsets = (torch.rand(holes, 2, generator=gen) - 0.5) * r * 0.8
            hole_r = r.expand(holes, 2) * inner_frac * 0.45
            ring &= (_ellipses(c + offsets, hole_r, angle.expand(holes), size) >= 1).all(0)
        out.append(ring[0].float())
    masks = torch.stack(out)
    disp = _smooth_noise(gen, 2, size, 4, batch=n) * float(_rand(gen, 0.0, 0.06))
    return warp(masks, disp)


def instances(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Many small instances (nuclei, cells, glands): 10-80 ellipses of a shared size range."""
    lo, hi = _randint(gen, 8, 30), _randint(gen, 40, 90)
    r_lo = float(_rand(gen, 1.5, 5.0))
    r_hi = r_lo * float(_rand(gen, 1.0, 1.8))
    out = []
    for _ in range(n):
        count = _randint(gen, lo, hi)
        centres = _rand(gen, 0, 1, (count, 2)) * size
        radii = _rand(gen, r_lo, r_hi, (count, 2))
        out.append((_ellipses(centres, radii, _rand(gen, 0, math.pi, (count,)), size) < 1).any(0).float())
    return torch.stack(out)


def warp(x: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """x (n, N, N) resampled at the identity grid plus disp (n, 2, N, N) (in [-1, 1] units); bilinear."""
    grid = displaced_grid(disp).expand(x.shape[0], -1, -1, -1)
    out = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0]


def tone_curve(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random monotone or non-monotone intensity mapping shared by the episode (wide appearance variation)."""
    knots = _randint(gen, 2, 6)
    ys = torch.rand(knots + 1, generator=gen)
    if float(torch.rand(1, generator=gen)) < 0.6:
        ys = ys.sort().values
    idx = (images.clamp(0, 1) * knots).clamp(max=knots - 1e-4)
    lo = idx.floor().long()
    frac = idx - lo
    return ys[lo] * (1 - frac) + ys[lo + 1] * frac


def render(fg: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Images (n, N, N) in [0, 1] for foreground masks fg (n, N, N): a region-map background behind them."""
    n = fg.shape[0]
    labels, regions = region_map(n, size, gen)
    means = _rand(gen, 0.0, 1.0, (regions,))
    bg = torch.gather(means + _rand(gen, -0.05, 0.05, (n, regions)), 1, labels.flatten(1)).view(n, size, size)
    contrast = float(_rand(gen, 0.08, 0.6)) * (1 if float(torch.rand(1, generator=gen)) < 0.5 else -1)
    fg_soft = _gaussian_blur(fg[:, None], float(_rand(gen, 0.0, 0.8)))[:, 0]
    level = bg.flatten(1).mean(1).view(n, 1, 1) + contrast + _rand(gen, -0.03, 0.03, (n, 1, 1))
    images = bg * (1 - fg_soft) + level * fg_soft
    tex_strength = _rand(gen, 0.0, 0.15, (2,))
    tex_bg = _smooth_noise(gen, 1, size, _randint(gen, 8, 64), batch=n)[:, 0]
    tex_fg = _smooth_noise(gen, 1, size, _randint(gen, 16, 64), batch=n)[:, 0]
    images = images + tex_strength[0] * tex_bg * (1 - fg_soft) + tex_strength[1] * tex_fg * fg_soft
    images = images * torch.exp(_smooth_noise(gen, 1, size, 3, batch=n)[:, 0] * float(_rand(gen, 0.0, 0.4)))
    images = _normalise(images)
    if float(torch.rand(1, generator=gen)) < 0.5:
        images = tone_curve(images, gen)
    images = _gaussian_blur(images[:, None], float(_rand(gen, 0.0, 1.2)))[:, 0]
    images = images + torch.randn(images.shape, generator=gen) * float(_rand(gen, 0.0, 0.08))
    return _normalise(images)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    lo = images.flatten(1).min(1).values.view(-1, 1, 1)
    hi = images.flatten(1).max(1).values.view(-1, 1, 1)
    return (images - lo) / (hi - lo).clamp_min(1e-6)


def shape_episode(family: str, n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n subjects of one task of ``family``: images (n, N, N) in [0, 1], masks (n, N, N) in {0, 1}, non-empty."""
    make = {"vessels": vessels, "small": small, "rings": rings, "instances": instances}[family]
    for _ in range(5):
        masks = (make(n, size, gen) > 0.5).float()
        if bool((masks.flatten(1).sum(1) > 0).all()):
            break
    empty = masks.flatten(1).sum(1) == 0
    if bool(empty.any()):  # a rare draw that left a subject empty: give it a small disc so it stays valid
        masks[empty] = (_ellipses(torch.tensor([[size / 2, size / 2]]), torch.full((1, 2), 3.0), torch.zeros(1), size)
                        < 1).float()
    return render(masks, size, gen), masks
