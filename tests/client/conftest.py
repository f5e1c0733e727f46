"""Fixtures of the SDK tests: the in-process app, a real `icseg serve` (testkit.fixtures, on tests/conftest.py's
tiny seeded checkpoint), the SDK's retry waits recorded instead of waited."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    import icseg_client  # noqa: F401 - installed with `pip install -e ./client`
except ImportError:  # a checkout whose dev install predates the SDK: test the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client"))

import icseg_client
from fastapi.testclient import TestClient
from testkit.fixtures import make_client, server

__all__ = ["make_client", "server"]  # fixtures: pytest finds them by name here


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


@pytest.fixture
def make_app(make_client):
    """make_app(**settings) -> a started TestClient (lifespan run) of the service; closed at teardown."""
    return make_client


@pytest.fixture
def app_client(make_app) -> TestClient:
    return make_app()


@pytest.fixture
def client(app_client) -> icseg_client.Client:
    """The SDK against the in-process service."""
    return icseg_client.Client(http_client=app_client)
