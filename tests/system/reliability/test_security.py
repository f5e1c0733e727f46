"""Security basics: every route is behind the key unless it is on the public list below, keys are compared
in constant time, no request content reaches the logs, and CORS is closed unless origins are configured.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re

import numpy as np
import pytest
from reliabilitykit import start_server
from testkit.inputs import png, support_files

from app import middleware
from app.middleware import key_matches

# The routes that answer without a key. A new route that should be public goes here, on purpose: the
# test below fails for any route that answers without a key and is not listed.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/"),  # the browser viewer's page and files (app/routes/viewer.py): no data in them
    ("GET", "/static/{path:path}"),
    ("GET", "/docs/assets/{path:path}"),  # Swagger UI's pinned files (app/routes/docs.py): no data in them
}
KEY = "reliability-secret-key-0123456789"


def app_routes(app) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves, included routers and mounts too."""
    try:  # newer FastAPI keeps included routers nested in app.routes
        from fastapi.routing import iter_route_contexts

        contexts = list(iter_route_contexts(app.routes))
    except ImportError:
        contexts = list(app.routes)
    routes = []
    for route in contexts:
        methods = getattr(route, "methods", None) or {"GET"}  # a Mount (static files) has none
        routes += [(method, route.path) for method in sorted(methods) if method != "HEAD"]
    return routes


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0" * 32, path) or "/"


@pytest.fixture
def keyed(make_client):
    return make_client(api_keys=[KEY, "second-key"])


def test_every_route_needs_a_key_but_the_listed_public_ones(keyed):
    routes = app_routes(keyed.app)
    assert len(routes) >= 16 and ("POST", "/segment") in routes  # the enumeration sees the routers' routes
    answered_without_key = set()
    for method, path in routes:
        url = _concrete(path)
        response = keyed.request(method, url)
        if response.status_code != 401:
            answered_without_key.add((method, path))
            continue
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        for wrong in ("Bearer " + KEY[:-1], "Bearer " + KEY + "x", "Basic " + KEY, KEY, "Bearer "):
            assert keyed.request(method, url, headers={"Authorization": wrong}).status_code == 401, (path, wrong)
        with_key = keyed.request(method, url, headers={"Authorization": f"Bearer {KEY}"})
        assert with_key.status_code != 401, path  # the 401 came from the key, not from the route
    assert answered_without_key <= PUBLIC, answered_without_key - PUBLIC
    assert {("GET", "/healthz"), ("GET", "/readyz")} <= answered_without_key


def test_the_openapi_schema_marks_every_protected_operation(keyed):
    spec = keyed.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            public = (method.upper(), path) in PUBLIC
            assert bool(operation.get("security")) != public, (method, path)


@pytest.mark.parametrize("path", ["/info/", "//info", "/healthz/../info", "/HEALTHZ", "/healthz%2F..%2Finfo",
                                  "/./info", "/readyz/", "/healthz/x", "/metrics?x=/healthz", "/openapi.json/../info",
                                  "/static/..%2Finfo", "/static/%2E%2E/%2E%2E/pyproject.toml",
                                  "/static/..%2F..%2Fsettings.py", "/static//etc/passwd"])
def test_no_spelling_of_a_path_slips_past_the_key(keyed, path):
    response = keyed.get("http://testserver" + path)  # absolute: "//info" must stay a path, not a host
    assert response.url.path == path.split("?")[0] or "%" in path or "/." in path
    assert response.status_code in (401, 404), (path, response.status_code)
    for secret in ("parameters", "icseg_requests", "[project]", "BaseSettings", "root:"):
        assert secret not in response.text, path


def test_keys_are_compared_in_constant_time(keyed, monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    keys = ["alpha-key-1", "beta-key-22", "gamma-key-333"]
    for token, expected in [("alpha-key-1", True), ("gamma-key-333", True), ("alpha-key-2", False), ("", False),
                            ("x" * 1000, False), ("beta-key-22\x00", False), ("bëta", False)]:
        calls.clear()
        assert key_matches(token, keys) is expected
        # every key is compared (no exit at the first match, no length check first), always as bytes
        assert len(calls) == len(keys), token
        assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
    # and the middleware uses it: one comparison per configured key for a request
    calls.clear()
    assert keyed.get("/info", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert len(calls) == 2


# -- no request content in the logs -----------------------------------------------------------------------

SECRET_NAME = "patient-Zelda-Quixote-19610407"
PIXEL_ROW = np.frombuffer(b"PIXELCANARY-7f3a9" * 4, np.uint8)  # 68 distinctive pixel values


def _canary_image() -> np.ndarray:
    image = np.tile(PIXEL_ROW, (48, 1))[:, :56]
    image[20:30, 20:30] = 250
    return image


def _send_everything(http, auth: dict) -> None:
    """Requests that carry the canaries: successes, client errors, a stored prompt, a wrong key."""
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 56), np.uint8)
    mask[20:30, 20:30] = 1
    named = [("query", (f"{SECRET_NAME}-q.png", png(_canary_image()))),
             ("support_images", (f"{SECRET_NAME}-s.png", png(_canary_image()))),
             ("support_masks", (f"{SECRET_NAME}-m.png", png(mask)))]
    assert http.post("/segment", files=named, headers=auth).status_code == 200
    assert http.post("/segment", files=named, data={"output": "probs"}, headers=auth).status_code == 200
    bad = [("query", (f"{SECRET_NAME}.png", PIXEL_ROW.tobytes()))] + support_files(rng, 1)
    assert http.post("/segment", files=bad, headers=auth).status_code == 415
    damaged = [("query", (f"{SECRET_NAME}.png", png(_canary_image())[:60]))] + support_files(rng, 1)
    assert http.post("/segment", files=damaged, headers=auth).status_code == 400
    created = http.post("/prompts", files=named[1:], headers=auth,
                        data={"name": "Zelda Quixote", "label_names": json.dumps({"1": "Zelda liver"})})
    assert created.status_code == 201, created.text
    prompt_id = created.json()["id"]
    assert http.post("/segment", files=named[:1], data={"prompt_id": prompt_id}, headers=auth).status_code == 200
    assert http.get(f"/prompts/{prompt_id}?token={SECRET_NAME}", headers=auth).status_code == 200
    assert http.get("/info", headers={"Authorization": f"Bearer {SECRET_NAME}"}).status_code == 401


def _assert_clean(log: str) -> None:
    pixels = PIXEL_ROW.tobytes()
    needles = {
        "file name": SECRET_NAME,
        "prompt name": "Zelda",
        "pixel bytes": pixels[:12].decode("latin-1"),
        "pixel bytes (hex)": pixels[:12].hex(),
        "pixel bytes (base64)": base64.b64encode(pixels[:12]).decode(),
        "pixel values": " ".join(str(v) for v in PIXEL_ROW[:6]),
        "pixel values (list)": ", ".join(str(v) for v in PIXEL_ROW[:6]),
        "upload bytes": repr(png(_canary_image())[16:40])[2:-1],
        "the configured key": KEY,
    }
    found = {what for what, needle in needles.items() if needle in log}
    assert not found, found


def test_logs_of_a_real_server_hold_no_request_content(tiny_weights, tmp_path):
    server = start_server(tmp_path, tiny_weights, ICSEG_API_KEYS=KEY)
    try:
        import httpx

        with httpx.Client(base_url=server.url, timeout=60) as http:
            _send_everything(http, {"Authorization": f"Bearer {KEY}"})
    finally:
        server.stop()
    log = server.log()
    assert "route=/segment status=200" in log and "route=/segment status=415" in log  # the log is captured
    _assert_clean(log)


def test_debug_logs_of_every_logger_hold_no_request_content(make_client, caplog):
    client = make_client(api_keys=[KEY])
    with caplog.at_level(logging.DEBUG):  # the root logger: the app's, uvicorn's, multipart's, Pillow's
        _send_everything(client, {"Authorization": f"Bearer {KEY}"})
    # the test's own HTTP client logs its requests (logger httpx, on this side of the wire): not the server's
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    formatter = logging.Formatter()
    text = "\n".join(f"{r.name} {formatter.format(r)} {r.args!r}" for r in server_side)
    assert "route=/prompts status=201" in text
    _assert_clean(text)


# -- CORS --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [[], [KEY]], ids=["no-keys", "keys"])
def test_cors_is_closed_by_default_on_every_route(make_client, keys):
    client = make_client(api_keys=keys)
    origin = {"Origin": "https://evil.example"}
    for method, path in app_routes(client.app):
        url = _concrete(path)
        preflight = client.options(url, headers={**origin, "Access-Control-Request-Method": method,
                                                 "Access-Control-Request-Headers": "authorization"})
        actual = client.request(method, url, headers=origin)
        for response in (preflight, actual):
            leaked = [h for h in response.headers if h.lower().startswith("access-control-")]
            assert not leaked, (method, path, leaked)
