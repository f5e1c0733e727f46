"""Synthetic images, volumes and their encodings (no network, no GPU, no trained weights)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from data.io import to_png_bytes

# a non-identity affine (permuted axes, spacing, offset): a writer that dropped it would show
AFFINE = np.array([[0.0, 0.0, -1.5, 40.0], [0.9, 0.0, 0.0, -12.0], [0.0, 1.1, 0.0, 7.5], [0, 0, 0, 1]])


def disk_pair(rng: np.random.Generator, size=(48, 56), labels=(1,)) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image with bright disks on noise and its label map (one disk per label)."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    image = rng.uniform(0, 60, size)
    mask = np.zeros(size, np.uint8)
    for label in labels:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        r = rng.uniform(0.12, 0.2) * min(h, w)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        mask[disk] = label
        image[disk] = 120 + 60 * label
    return image.clip(0, 255).astype(np.uint8), mask


def ball_volume(rng: np.random.Generator, shape=(24, 20, 10)) -> tuple[np.ndarray, np.ndarray]:
    """A float32 volume (H, W, D) with a bright ball and its uint8 mask."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2 + rng.uniform(-1.5, 1.5, (3, 1, 1, 1))
    ball = (((grid - centre) / (np.array(shape)[:, None, None, None] / 3.5)) ** 2).sum(0) < 1
    volume = rng.normal(100, 10, shape).astype(np.float32)
    volume[ball] += 300
    return volume, ball.astype(np.uint8)


# -- bytes ---------------------------------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    return to_png_bytes(array)


def pil_bytes(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def nifti(volume: np.ndarray, affine: np.ndarray = AFFINE, gz: bool = True) -> bytes:
    data = nib.Nifti1Image(volume, affine).to_bytes()
    return gzip.compress(data) if gz else data


def read_nifti(data: bytes) -> nib.Nifti1Image:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)


def read_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def support_files(rng: np.random.Generator, n: int, labels=(1,), size=(48, 56), names=None) -> list[tuple]:
    """httpx multipart entries for n support pairs (PNG)."""
    files = []
    for i in range(n):
        image, mask = disk_pair(rng, size, labels)
        img_name, mask_name = names[i] if names else (f"s{i}.png", f"m{i}.png")
        files.append(("support_images", (img_name, png(image), "image/png")))
        files.append(("support_masks", (mask_name, png(mask), "image/png")))
    return files


# -- files ---------------------------------------------------------------------------------------------------


def save_png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.write_bytes(nifti(array, affine))
    return path


def write_task(folder: Path, rng: np.random.Generator, n_support=3, n_queries=3, labels=(1, 2)) -> dict:
    """PNG files of a 2D task for the CLI and SDK tests: support/images, support/masks and queries/ (names
    sorted as paired)."""
    paths: dict = {"images": [], "masks": [], "queries": []}
    for sub in ("support/images", "support/masks", "queries"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_support):
        image, mask = disk_pair(rng, labels=labels)
        paths["images"].append(save_png(image, folder / "support/images" / f"case{i}.png"))
        paths["masks"].append(save_png(mask, folder / "support/masks" / f"case{i}.png"))
    for i in range(n_queries):
        image, _ = disk_pair(rng, size=(40 + 4 * i, 52), labels=labels)
        paths["queries"].append(save_png(image, folder / "queries" / f"scan{i}.v1.png"))  # a dot in the stem
    return paths
