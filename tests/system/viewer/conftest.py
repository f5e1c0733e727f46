"""Fixtures of the viewer tests: a real `icseg serve` on the tiny seeded network (tests/conftest.py), and
headless Chromium.

The browser is Debian's chromium (scripts/install-system-deps.sh), driven by Playwright for Python;
Playwright's own browser download is never used.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit.processes import Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


API_KEY = "viewer-test-key"


def _serve(tmp_path_factory, weights: Path, **env: str):
    workdir = tmp_path_factory.mktemp("viewer-server")
    server = Server({"ICSEG_WEIGHTS": str(weights), "ICSEG_DATA_DIR": str(workdir / "data"), **env},
                    workdir / "serve.log", cwd=workdir)
    try:
        server.wait_ready()
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, tiny_weights):
    yield from _serve(tmp_path_factory, tiny_weights)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, tiny_weights):
    """(url, key) of a server that needs ``Authorization: Bearer key``."""
    for url in _serve(tmp_path_factory, tiny_weights, ICSEG_API_KEYS=API_KEY):
        yield url, API_KEY


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="dev extra: pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed; scripts/install-system-deps.sh installs it")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; JavaScript errors and console errors (CSP violations among them) fail the test."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.problems = problems
    yield page
    context.close()
