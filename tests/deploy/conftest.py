"""Fixtures of the deployment tests: the tiny seeded checkpoint, a real redis-server."""

from __future__ import annotations

import pytest
from deploykit import find_exe, redis_server, write_tiny_weights


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    return write_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture
def redis_url(tmp_path):
    if find_exe("redis-server") is None:
        pytest.skip("redis-server is not installed; scripts/install-system-deps.sh installs it")
    proc, url = redis_server(tmp_path)
    yield url
    proc.stop()
