"""Synthetic inputs and process helpers for the service tests (no network, no GPU, no trained weights)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
from PIL import Image

from data.io import to_png_bytes

AFFINE = np.array([[0.0, 0.0, -1.5, 40.0], [0.9, 0.0, 0.0, -12.0], [0.0, 1.1, 0.0, 7.5], [0, 0, 0, 1]])


def disk_pair(rng: np.random.Generator, size=(48, 56), labels=(1,)) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image with bright disks on noise and its label map (one disk per label)."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    image = rng.uniform(0, 60, size)
    mask = np.zeros(size, np.uint8)
    for lab in labels:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        r = rng.uniform(0.12, 0.2) * min(h, w)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        mask[disk] = lab
        image[disk] = 120 + 60 * lab
    return image.clip(0, 255).astype(np.uint8), mask


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


def ball_volume(rng: np.random.Generator, shape=(24, 20, 10)) -> tuple[np.ndarray, np.ndarray]:
    """A float volume with a bright ball and its uint8 mask."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2 + rng.uniform(-1.5, 1.5, (3, 1, 1, 1))
    ball = (((grid - centre) / (np.array(shape)[:, None, None, None] / 3.5)) ** 2).sum(0) < 1
    volume = rng.normal(100, 10, shape).astype(np.float32)
    volume[ball] += 300
    return volume, ball.astype(np.uint8)


def support_files(rng: np.random.Generator, n: int, labels=(1,), size=(48, 56), names=None) -> list[tuple]:
    """httpx multipart entries for n support pairs (PNG)."""
    files = []
    for i in range(n):
        image, mask = disk_pair(rng, size, labels)
        img_name, mask_name = names[i] if names else (f"s{i}.png", f"m{i}.png")
        files.append(("support_images", (img_name, png(image), "image/png")))
        files.append(("support_masks", (mask_name, png(mask), "image/png")))
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICSEG_")}
    env.update(extra)
    return env


def icseg_command() -> list[str]:
    exe = shutil.which("icseg") or str(Path(sys.executable).with_name("icseg"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "app.cli"]


class Server:
    """A real `icseg serve` process on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [*icseg_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=clean_env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class RedisServer:
    def __init__(self, exe: str, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
