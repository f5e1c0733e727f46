"""Fixtures of the deployment tests: a fresh redis-server per test (tiny_weights: tests/conftest.py)."""

from __future__ import annotations

import pytest
from testkit.processes import RedisServer, require_exe


@pytest.fixture
def redis_url(tmp_path):
    server = RedisServer(require_exe("redis-server"), tmp_path)
    yield server.url
    server.stop()
