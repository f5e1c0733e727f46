"""A 2D task on disk and flaky transports for the SDK and CLI tests (inputs and processes: testkit)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
from testkit.inputs import disk_pair, save_png

API_KEY = "client-test-key"  # the key of the shared `icseg serve` process


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


def which_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
