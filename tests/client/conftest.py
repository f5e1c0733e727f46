"""Fixtures of the SDK and CLI tests: a tiny seeded checkpoint, the in-process app, a real `icseg serve`."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

try:
    import icseg_client  # noqa: F401 - installed with `pip install -e ./client`
except ImportError:  # a checkout whose dev install predates the SDK: test the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client"))

import icseg_client
from clientkit import API_KEY, Server
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from model.config import NetworkConfig
from model.network import build_network
from model.weights import save_checkpoint


@pytest.fixture(autouse=True)
def _no_icseg_env(monkeypatch):
    """A developer's ICSEG_* variables (ICSEG_URL, ICSEG_API_KEY, ICSEG_WEIGHTS) must not leak into tests."""
    for key in list(os.environ):
        if key.startswith("ICSEG_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch):
    """Tests record the SDK's waits between retries instead of waiting."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(icseg_client._client, "_retry_sleep", waits.append)
    monkeypatch.setattr(icseg_client._async_client, "_retry_sleep", record)
    return waits


@pytest.fixture
def waits(_no_waiting) -> list[float]:
    return _no_waiting


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(encoder_features=(8, 8, 8, 8), decoder_features=(8, 8, 8), size=32))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_checkpoint(net, path, metadata={"source": "seeded random test weights", "licence": "none (tests)"})
    return path


@pytest.fixture
def make_app(tiny_weights, tmp_path):
    """make_app(**settings) -> a started TestClient (lifespan run) of the service; closed at teardown."""
    with ExitStack() as stack:

        def make(**overrides) -> TestClient:
            values = {"weights": tiny_weights, "data_dir": tmp_path / "data", "sweep_interval_s": 3600}
            values.update(overrides)
            return stack.enter_context(TestClient(create_app(Settings(**values)), raise_server_exceptions=False))

        yield make


@pytest.fixture
def app_client(make_app) -> TestClient:
    return make_app()


@pytest.fixture
def client(app_client) -> icseg_client.Client:
    """The SDK against the in-process service."""
    return icseg_client.Client(http_client=app_client)


@pytest.fixture(scope="session")
def server(tiny_weights, tmp_path_factory):
    """A real `icseg serve` on a loopback port, with an API key (shared by the tests that need a process)."""
    folder = tmp_path_factory.mktemp("server")
    process = Server({"ICSEG_WEIGHTS": str(tiny_weights), "ICSEG_DATA_DIR": str(folder / "data"),
                      "ICSEG_API_KEYS": API_KEY, "ICSEG_TORCH_THREADS": "1"}, folder / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
