"""Fixtures of the tests that run the service, in process or as a real `icseg serve`; a folder's conftest.py
imports those it uses."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from testkit.processes import RedisServer, Server, require_exe

API_KEY = "client-test-key"  # the key of the shared `icseg serve` process (``server``)


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
    """A redis-server shared by the session's tests (each uses its own key prefix)."""
    server = RedisServer(require_exe("redis-server"), tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


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
