"""Fixtures of the reliability suite: the service tests' own (testkit.fixtures), not copies."""

from testkit.fixtures import client, make_client, redis_server

__all__ = ["client", "make_client", "redis_server"]  # fixtures: pytest finds them by name here
