"""Generated `icseg batch` tasks: a support folder and inputs of several formats, one of them corrupt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.io import save_image

# a non-identity affine (spacing, flips, offset): a writer that dropped it would show
AFFINE = np.array([[-0.8, 0, 0, 90.0], [0, 0.8, 0, -126.0], [0, 0, 2.5, -72.0], [0, 0, 0, 1]])


def _scene(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with a bright disc (label 1) and a darker square (label 2): (H, W) uint8 each."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), min(h, w) // 6
    mask = np.zeros(shape, np.uint8)
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    mask[2 : 2 + h // 5, 2 : 2 + w // 5] = 2
    image = rng.normal(40, 10, shape) + 150 * (mask == 1) + 70 * (mask == 2)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_prompt(root: Path, rng: np.random.Generator, n: int = 3) -> Path:
    """ROOT/prompt/images/s<i>.png and ROOT/prompt/masks/s<i>.png."""
    for i in range(n):
        image, mask = _scene(rng, (48 + 4 * i, 56))
        save_image(image, root / "prompt" / "images" / f"s{i}.png")
        save_image(mask, root / "prompt" / "masks" / f"s{i}.png")
    return root / "prompt"


def write_inputs(root: Path, rng: np.random.Generator, n_png: int = 9) -> Path:
    """ROOT/inputs: ``n_png`` PNGs of varied sizes and types, two NIfTI volumes and one corrupt PNG."""
    folder = root / "inputs"
    for i in range(n_png):
        image, _ = _scene(rng, (36 + 5 * i, 60 - 3 * i))
        if i == 1:
            image = np.repeat(image[..., None], 3, axis=2)  # RGB
        elif i == 2:
            image = image.astype(np.uint16) * 200  # 16-bit
        save_image(image, folder / f"scan{i:02d}.png")
    volume = np.stack([_scene(rng, (30, 26))[0] for _ in range(5)], axis=2).astype(np.float32)  # (H, W, D)
    save_image(volume, folder / "volA.nii.gz", affine=AFFINE)
    save_image(volume[:24, :22, :4].astype(np.int16), folder / "volB.nii", affine=AFFINE)
    whole = (folder / "scan00.png").read_bytes()
    (folder / "broken.png").write_bytes(whole[: len(whole) // 3])  # truncated: a damaged file
    return folder
