"""Synthetic inputs, flaky transports and a real `icseg serve` process for the SDK and CLI tests."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
API_KEY = "client-test-key"  # the key of the shared `icseg serve` process
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
    """A float32 volume with a bright ball and its uint8 mask."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2 + rng.uniform(-1.5, 1.5, (3, 1, 1, 1))
    ball = (((grid - centre) / (np.array(shape)[:, None, None, None] / 3.5)) ** 2).sum(0) < 1
    volume = rng.normal(100, 10, shape).astype(np.float32)
    volume[ball] += 300
    return volume, ball.astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.write_bytes(gzip.compress(nib.Nifti1Image(array, affine).to_bytes()))
    return path


def write_task(folder: Path, rng: np.random.Generator, n_support=3, n_queries=3, labels=(1, 2)) -> dict:
    """PNG files of a 2D task: support/images, support/masks and queries/ (names sorted as paired)."""
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


class Flaky(httpx.BaseTransport):
    """Answers the first requests with canned failures (responses or exceptions), then passes them on."""

    def __init__(self, inner: httpx.BaseTransport, failures: list):
        self.inner = inner
        self.failures = list(failures)
        self.calls: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {request.url.path}")
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return self.inner.handle_request(request)


def error_response(status: int, code: str, message: str, field: str | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "field": field}},
                          headers={k.replace("_", "-"): v for k, v in headers.items()})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def icseg_command() -> list[str]:
    exe = Path(sys.executable).with_name("icseg")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]


class Server:
    """A real `icseg serve` process on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ICSEG_")}
        self.proc = subprocess.Popen(
            [*icseg_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**clean, **env}, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"icseg serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"icseg serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def which_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

