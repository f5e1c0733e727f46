"""What the test folders share: synthetic inputs, real processes (`icseg serve`, redis-server) on loopback
ports, and the fixtures of the service tests. Importable as ``testkit`` (tests/conftest.py puts tests/ on
the path); each folder's own ``*kit.py`` keeps only what is particular to it.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
EXAMPLE = ROOT / "app" / "static" / "example"  # the viewer's example prompt and query
