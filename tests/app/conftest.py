"""Fixtures of the service tests: in-process apps and a real redis-server (from testkit.fixtures), on the
tiny seeded checkpoint of tests/conftest.py."""

from testkit.fixtures import client, make_client, redis_server

__all__ = ["client", "make_client", "redis_server"]  # fixtures: pytest finds them by name here
