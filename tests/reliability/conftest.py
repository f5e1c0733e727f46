"""Fixtures of the reliability suite: the service tests' own fixtures and helpers, reused from tests/app.

tests/app/conftest.py (tiny seeded checkpoint, in-process apps, a real redis-server) and
tests/app/servicekit.py (synthetic inputs, a real `icseg serve` process) are loaded from there, not copied.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

APP_TESTS = Path(__file__).resolve().parents[1] / "app"
if str(APP_TESTS) not in sys.path:
    sys.path.insert(0, str(APP_TESTS))

_spec = importlib.util.spec_from_file_location("icseg_service_test_fixtures", APP_TESTS / "conftest.py")
_service_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_service_fixtures)

# the same fixture functions, registered for this directory
_no_icseg_env = _service_fixtures._no_icseg_env
tiny_weights = _service_fixtures.tiny_weights
make_client = _service_fixtures.make_client
client = _service_fixtures.client
redis_server = _service_fixtures.redis_server
