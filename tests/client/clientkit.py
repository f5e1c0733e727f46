"""Flaky transports and canned error answers for the SDK tests (inputs and processes: testkit)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx


class Flaky(httpx.BaseTransport):
    """Answers the first requests with canned failures (responses or exceptions), then passes them on."""

    def __init__(self, inner: httpx.BaseTransport, failures: list):
        self.inner = inner
        self.failures = list(failures)
        self.calls: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {request.url.path}")
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return self.inner.handle_request(request)


def error_response(status: int, code: str, message: str, field: str | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "field": field}},
                          headers={k.replace("_", "-"): v for k, v in headers.items()})


def which_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def form_fields(app_client, path: str) -> set[str]:
    """The multipart form fields the service's OpenAPI schema lists for POST ``path``."""
    schema = app_client.get("/openapi.json").json()
    body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    if "$ref" in body:
        body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    return set(body["properties"])


def cli_subparser(name: str):
    """The argparse parser of ``icseg <name>``."""
    from cli.main import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices[name]
