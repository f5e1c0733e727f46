"""What the service benchmarks share: synthetic inputs, seeded random weights of the UniverSeg v1 shape, and a
real `icseg serve` on a free loopback port.

Import it after setting OMP_WAIT_POLICY (it imports torch; see bench_service.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.io import to_png_bytes  # noqa: E402
from model.config import universeg_v1_config  # noqa: E402
from model.network import build_network  # noqa: E402
from model.weights import save_checkpoint  # noqa: E402


def disk_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) uint8 image with a bright disk on noise, and the disk's {0, 1} mask."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size, rng.uniform(0.1, 0.2) * size
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    image = rng.normal(80, 20, (size, size))
    image[disk] += 100
    return image.clip(0, 255).astype(np.uint8), disk.astype(np.uint8)


def make_task(size: int, support: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """A seeded query and ``support`` (image, mask) pairs, all (size, size)."""
    rng = np.random.default_rng(0)
    query, _ = disk_pair(rng, size)
    return query, [disk_pair(rng, size) for _ in range(support)]


def form_files(query: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list, list]:
    """httpx multipart entries as PNGs: ([the query], [support_images and support_masks, paired])."""
    support = []
    for image, mask in pairs:
        support += [("support_images", ("i.png", to_png_bytes(image))),
                    ("support_masks", ("m.png", to_png_bytes(mask)))]
    return [("query", ("q.png", to_png_bytes(query)))], support


def random_v1_weights(path: Path) -> Path:
    """A checkpoint of the UniverSeg v1 shape (nf 64, 128 x 128) with seeded random weights: speed only."""
    torch.manual_seed(0)
    save_checkpoint(build_network(universeg_v1_config()), path,
                    metadata={"source": "seeded random weights (benchmark only)", "licence": "none"})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(weights: Path | None, data_dir: Path, device: str, log_path: Path, timeout: float = 120.0,
                 **extra: str) -> tuple[subprocess.Popen, str]:
    """`icseg serve` (warnings-only log) with ICSEG_* from the arguments only; returns once /readyz answers 200.

    Args:
        weights: ICSEG_WEIGHTS; None: the server's default (the embedded model).
        extra: further ICSEG_* variables.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICSEG_")}
    env.update(ICSEG_DATA_DIR=str(data_dir), ICSEG_DEVICE=device, **extra)
    if weights is not None:
        env["ICSEG_WEIGHTS"] = str(weights)
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "--log-level", "WARNING", "serve", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(log_path.read_text())
