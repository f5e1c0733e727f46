"""Operations: health, readiness without weights, /info, /metrics, API keys, CORS, request ids, logs, OpenAPI."""

from __future__ import annotations

import logging

import pytest
from testkit.inputs import disk_pair, png, support_files

from app.middleware import key_matches
from app.settings import Settings
from model import weights as weights_module
from model.network import build_network, count_parameters
from model.weights import load_model


def _segment_files(rng, names=None):
    query, _ = disk_pair(rng)
    return [("query", ("query.png", png(query)))] + support_files(rng, 2, names=names)


def test_health_ready_info(client, tiny_weights):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/info").json()
    net = load_model(tiny_weights)
    assert info["parameters"] == count_parameters(net) == count_parameters(build_network(net.config))
    assert info["network"] == {"size": 32, "encoder_features": [8, 8, 8, 8], "decoder_features": [8, 8, 8]}
    assert info["weights"] == {
        "file": "tiny.safetensors",
        "source": "seeded random test weights",
        "licence": "none (tests)",
    }
    assert info["max_support"] == 64 and info["device"] == "cpu" and info["prompt_store"] == "disk"
    assert set(info["formats"]) == {"png", "jpeg", "tiff", "bmp", "nifti", "dicom", "nrrd"}
    assert info["model"] == net.config.name


def test_without_weights_the_server_starts_unready(make_client, rng, tmp_path, monkeypatch):
    # ICSEG_WEIGHTS unset means the embedded default model; there is none yet (made certain here)
    monkeypatch.setattr(weights_module, "DEFAULT_WEIGHTS", tmp_path / "missing" / "icseg-default.safetensors")
    client = make_client(weights=None)
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    error = ready.json()["error"]
    assert error["code"] == "model_not_ready" and "ICSEG_WEIGHTS" in error["message"]
    assert ready.headers["retry-after"] == "5"
    for response in (
        client.post("/segment", files=_segment_files(rng)),
        client.get("/info"),
        client.post("/prompts", files=support_files(rng, 1)),
    ):
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_not_ready"
        assert response.headers["retry-after"] == "5"  # as store_unavailable: a 503 says when to look again
    assert "icseg_model_ready 0.0" in client.get("/metrics").text


def test_metrics(client, rng):
    assert client.post("/segment", files=_segment_files(rng)).status_code == 200
    client.get("/prompts/" + "0" * 32)
    text = client.get("/metrics").text
    assert 'icseg_requests_total{method="POST",route="/segment",status="200"} 1.0' in text
    assert 'icseg_requests_total{method="GET",route="/prompts/{prompt_id}",status="404"} 1.0' in text
    assert 'icseg_request_seconds_bucket{le="+Inf",method="POST",route="/segment"} 1.0' in text
    assert 'icseg_model_seconds_count{kind="segment"} 1.0' in text
    assert "icseg_queue_depth 0.0" in text and "icseg_batch_queries_count 1.0" in text
    assert "icseg_model_ready 1.0" in text


@pytest.fixture
def keyed(make_client):
    return make_client(api_keys=["key-one", "key-two"])


def test_api_keys(keyed, rng):
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200
    for path in ("/info", "/metrics", "/prompts", "/jobs/" + "0" * 32, "/nowhere"):
        response = keyed.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert keyed.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert keyed.get("/info", headers={"Authorization": "Basic key-one"}).status_code == 401
    assert keyed.get("/info", headers={"Authorization": "Bearer key-two"}).status_code == 200
    assert keyed.post("/segment", files=_segment_files(rng)).status_code == 401
    ok = keyed.post("/segment", files=_segment_files(rng), headers={"Authorization": "Bearer key-one"})
    assert ok.status_code == 200


def test_api_keys_from_the_environment(monkeypatch):
    monkeypatch.setenv("ICSEG_API_KEYS", " a1, b2 ,")
    monkeypatch.setenv("ICSEG_CORS_ORIGINS", "https://viewer.example")
    monkeypatch.setenv("ICSEG_MAX_SUPPORT", "12")
    settings = Settings()
    assert settings.api_keys == ["a1", "b2"] and settings.cors_origins == ["https://viewer.example"]
    assert settings.max_support == 12


def test_key_matches():
    assert key_matches("b", ["a", "b"]) and not key_matches("", ["a"]) and not key_matches("ab", ["a", "b"])


def test_cors_closed_by_default(client):
    response = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/segment", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_open_for_configured_origins(make_client):
    client = make_client(cors_origins=["https://viewer.example"], api_keys=["k"])
    preflight = client.options(
        "/segment",
        headers={
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://viewer.example"
    denied = client.get("/info", headers={"Origin": "https://viewer.example"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://viewer.example"
    other = client.get("/healthz", headers={"Origin": "https://other.example"})
    assert "access-control-allow-origin" not in other.headers


def test_request_ids(client):
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
    assert client.get("/healthz", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"] != "bad id\n"


def test_logs_hold_no_file_names_or_content(client, rng, caplog):
    names = [("patient-jane-doe-1.png", "mask-jane-doe-1.png"), ("patient-jane-doe-2.png", "mask-jane-doe-2.png")]
    files = _segment_files(rng, names=names)
    with caplog.at_level(logging.DEBUG):
        assert client.post("/segment", files=files, headers={"X-Request-ID": "req-7"}).status_code == 200
        bad = [("query", ("patient-jane-doe.png", b"not an image"))] + support_files(rng, 1)
        assert client.post("/segment", files=bad).status_code == 415
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "request_id=req-7 method=POST route=/segment status=200" in text
    assert "jane" not in text.lower() and "not an image" not in text


def test_unknown_routes_and_methods_use_the_error_json(client):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/segment")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/segment",
        "/prompts",
        "/prompts/{prompt_id}",
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/result",
        "/info",
        "/metrics",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    segment = paths["/segment"]["post"]
    assert {"image/png", "application/gzip", "application/json"} <= set(segment["responses"]["200"]["content"])
    for status in ("400", "401", "413", "415", "422", "503"):
        assert status in segment["responses"]
    assert "429" in paths["/jobs"]["post"]["responses"]
    form = spec["components"]["schemas"][
        segment["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    ]
    assert {"query", "support_images", "support_masks", "prompt_id", "threshold", "ensemble", "axis", "output"} <= set(
        form["properties"]
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def test_docs_can_be_switched_off(make_client):
    client = make_client(docs=False, api_keys=["k"])
    assert client.get("/openapi.json").status_code == 401  # no longer public, and not served
    assert client.get("/docs", headers={"Authorization": "Bearer k"}).status_code == 404


def test_model_timeout_is_504(make_client, rng, monkeypatch):
    import time

    client = make_client(request_timeout_s=0.05)
    model = client.app.state.model
    original = model.segmenter.predict_many

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.segmenter, "predict_many", slow)
    response = client.post("/segment", files=_segment_files(rng))
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"


def test_server_errors_say_nothing_about_internals(client, rng, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(client.app.state.model.segmenter, "predict_many", broken)
    response = client.post("/segment", files=_segment_files(rng), headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal" and "req-500" in error["message"] and "secret" not in response.text
