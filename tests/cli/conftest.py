"""Fixtures of the command-line tests: a real `icseg serve` for --url and `icseg prompt` (testkit.fixtures,
on tests/conftest.py's tiny seeded checkpoint)."""

from testkit.fixtures import server

__all__ = ["server"]  # a fixture: pytest finds it by name here
