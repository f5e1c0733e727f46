"""Fixtures of the service tests: a tiny seeded checkpoint, in-process apps, a real redis-server."""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack

import pytest
import torch
from fastapi.testclient import TestClient
from servicekit import RedisServer

from app.main import create_app
from app.settings import Settings
from model.config import NetworkConfig
from model.network import build_network
from model.weights import save_checkpoint


@pytest.fixture(autouse=True)
def _no_icseg_env(monkeypatch):
    """A developer's ICSEG_* variables must not leak into the settings under test."""
    for key in list(os.environ):
        if key.startswith("ICSEG_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = build_network(NetworkConfig(encoder_features=(8, 8, 8, 8), decoder_features=(8, 8, 8), size=32))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_checkpoint(net, path, metadata={"source": "seeded random test weights", "licence": "none (tests)"})
    return path


@pytest.fixture
def make_client(tiny_weights, tmp_path):
    """make_client(**settings) -> a started TestClient (lifespan run); closed at teardown."""
    with ExitStack() as stack:

        def make(**overrides) -> TestClient:
            values = {"weights": tiny_weights, "data_dir": tmp_path / "data", "sweep_interval_s": 3600}
            values.update(overrides)
            client = TestClient(create_app(Settings(**values)), raise_server_exceptions=False)
            return stack.enter_context(client)

        yield make


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed; scripts/install-system-deps.sh installs it")
    server = RedisServer(exe, tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
