"""Each error class with the service's message and field, and the retry policy (flaky transports)."""

from __future__ import annotations

import asyncio

import httpx
import icseg_client
import numpy as np
import pytest
from clientkit import Flaky, error_response
from icseg_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    InternalServerError,
    InvalidInputError,
    JobFailedError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)
from testkit.inputs import ball_volume, disk_pair
from testkit.processes import free_port


@pytest.fixture
def pair(rng):
    query, _ = disk_pair(rng)
    image, mask = disk_pair(rng)
    return query, image, mask


def _mock(handler, **kwargs) -> Client:
    return Client("http://icseg.test", http_client=httpx.Client(transport=httpx.MockTransport(handler)), **kwargs)


def _flaky(app_client, failures, **kwargs) -> tuple[Client, Flaky]:
    """The SDK against the in-process service behind a transport that fails first."""
    transport = Flaky(app_client._transport, failures)
    http = httpx.Client(transport=transport, base_url="http://testserver")
    return Client(http_client=http, **kwargs), transport


# -- one class per status family, from the real service -------------------------------------------------------


def test_bad_request_400(client, pair):
    query, image, _ = pair
    with pytest.raises(BadRequestError) as info:
        client.segment(query, [image], [np.zeros_like(image)])
    err = info.value
    assert err.status_code == 400 and err.field == "support_masks" and "foreground" in err.message
    assert err.request_id and str(err).startswith("400 ")


def test_unprocessable_422_is_a_bad_request(client, pair):
    query, image, mask = pair
    with pytest.raises(UnprocessableEntityError) as info:
        client.segment(query, [image], [mask], ensemble=99)
    assert isinstance(info.value, BadRequestError)
    assert info.value.status_code == 422 and info.value.field == "ensemble"


def test_authentication_401(make_app, pair, monkeypatch):
    app_client = make_app(api_keys=["secret-key"])
    query, image, mask = pair
    with pytest.raises(AuthenticationError) as info:
        Client(http_client=app_client).segment(query, [image], [mask])
    assert info.value.status_code == 401 and "Bearer" in info.value.message
    with pytest.raises(AuthenticationError):
        Client(api_key="wrong", http_client=app_client).list_prompts()
    assert Client(api_key="secret-key", http_client=app_client).list_prompts() == []
    monkeypatch.setenv("ICSEG_API_KEY", "secret-key")
    assert Client(http_client=app_client).segment(query, [image], [mask]).shape == query.shape


def test_not_found_404(client):
    with pytest.raises(NotFoundError) as info:
        client.get_prompt("f" * 32)
    assert info.value.code == "prompt_not_found"
    with pytest.raises(NotFoundError) as info:
        client.get_job("nope")
    assert info.value.code == "job_not_found"


def test_payload_too_large_413(make_app, rng, pair):
    volume, _ = ball_volume(rng)
    support = [ball_volume(rng) for _ in range(2)]
    client = Client(http_client=make_app(sync_max_voxels=100))
    with pytest.raises(PayloadTooLargeError) as info:
        client.segment(volume, [v for v, _ in support], [m for _, m in support])
    assert info.value.code == "use_jobs" and info.value.field == "query"
    # the same volume goes through as a job
    assert client.segment_volume(volume, [v for v, _ in support], [m for _, m in support],
                                 progress=False).shape == volume.shape
    query, image, mask = pair
    small = Client(http_client=make_app(max_upload_mb=0.001))
    with pytest.raises(PayloadTooLargeError):
        small.segment(query, [image], [mask])


def test_unsupported_media_type_415(client, pair):
    _, image, mask = pair
    with pytest.raises(UnsupportedMediaTypeError) as info:
        client.segment(b"%PDF-1.7 not an image", [image], [mask])
    assert info.value.field == "query" and "PNG" in info.value.message


def test_service_unavailable_503_while_the_model_is_not_loaded(make_app, pair, tmp_path, waits):
    client = Client(http_client=make_app(weights=tmp_path / "missing.safetensors"), max_retries=1)
    assert client.ready() is False
    query, image, mask = pair
    with pytest.raises(ServiceUnavailableError) as info:
        client.segment(query, [image], [mask])
    assert isinstance(info.value, InternalServerError)
    assert info.value.code == "model_not_ready" and "missing.safetensors" in info.value.message
    assert len(waits) == 1  # 503 is retried (max_retries=1) before it is raised
    assert waits == [5]  # after the service's Retry-After


def test_connection_error_when_nothing_listens(pair, waits):
    query, image, mask = pair
    client = Client(f"http://127.0.0.1:{free_port()}", max_retries=2)
    with pytest.raises(APIConnectionError) as info:
        client.segment(query, [image], [mask])
    assert not isinstance(info.value, APITimeoutError) and "cannot reach" in info.value.message
    assert len(waits) == 2  # connection refused: retried


def test_timeout_is_not_retried(pair, waits):
    calls = []

    def handler(request):
        calls.append(request)
        raise httpx.ReadTimeout("slow", request=request)

    query, image, mask = pair
    with pytest.raises(APITimeoutError):
        _mock(handler).segment(query, [image], [mask])
    assert len(calls) == 1 and waits == []


@pytest.mark.parametrize("status,cls", [(429, RateLimitError), (409, ConflictError), (500, InternalServerError),
                                        (418, APIStatusError)])
def test_other_statuses_map_to_classes(status, cls):
    client = _mock(lambda request: error_response(status, "some_code", "what to change", "field_x"), max_retries=0)
    with pytest.raises(cls) as info:
        client.get_job("x")
    assert type(info.value) is cls
    assert (info.value.code, info.value.message, info.value.field) == ("some_code", "what to change", "field_x")


def test_non_json_error_bodies_keep_their_text():
    client = _mock(lambda request: httpx.Response(502, text="<html>Bad Gateway from the proxy</html>"))
    with pytest.raises(InternalServerError) as info:
        client.list_prompts()
    assert "Bad Gateway" in info.value.message and info.value.code is None


def test_job_failed_error():
    def handler(request):
        if request.method == "POST":
            return httpx.Response(202, json={"id": "j1", "status": "queued", "progress": {"done": 0, "total": 4}})
        if request.method == "GET":
            return httpx.Response(200, json={"id": "j1", "status": "failed", "progress": {"done": 1, "total": 4},
                                             "error": {"code": "invalid_input", "message": "slice 2 is empty",
                                                       "field": "query"}})
        return httpx.Response(204)

    with pytest.raises(JobFailedError) as info:
        _mock(handler).segment_volume(np.zeros((4, 4, 4), np.float32), prompt="p", progress=False)
    assert info.value.status == "failed" and info.value.field == "query" and "slice 2 is empty" in str(info.value)


def test_invalid_input_raised_before_sending(tmp_path, pair):
    query, image, mask = pair
    client = _mock(lambda request: pytest.fail("nothing may be sent"))
    cases = [
        (lambda: client.segment(tmp_path / "missing.png", [image], [mask]), "query"),
        (lambda: client.segment(tmp_path, [image], [mask]), "query"),
        (lambda: client.segment(query, [image, image], [mask]), "support_masks"),
        (lambda: client.segment(query), "support_images"),
        (lambda: client.segment(query, [image], [mask], prompt="abc"), "prompt"),
        (lambda: client.segment(query, [image], [np.stack([mask] * 3, axis=2)]), "support_masks[0]"),
        (lambda: client.segment(query, [image], [mask.astype(np.float32) / 2]), "support_masks[0]"),
        (lambda: client.segment({"not": "an image"}, [image], [mask]), "query"),
        (lambda: client.create_prompt([image], []), "support_masks"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidInputError) as info:
            call()
        assert info.value.field == field, info.value
        assert isinstance(info.value, ValueError)


# -- retries ----------------------------------------------------------------------------------------------------


def test_retried_503_succeeds_and_honours_retry_after(app_client, pair, waits):
    query, image, mask = pair
    failures = [error_response(503, "not_ready", "starting", Retry_After="2"),
                error_response(429, "busy", "queue full", Retry_After="0")]
    client, transport = _flaky(app_client, failures)
    result = client.segment(query, [image], [mask])
    assert result.shape == query.shape
    assert transport.calls == ["POST /segment"] * 3 and waits == [2.0, 0.0]


def test_422_is_not_retried(app_client, pair, waits):
    query, image, mask = pair
    client, transport = _flaky(app_client, [error_response(422, "invalid_request", "bad field", "threshold")])
    with pytest.raises(UnprocessableEntityError):
        client.segment(query, [image], [mask])
    assert transport.calls == ["POST /segment"] and waits == []


def test_connection_errors_are_retried_with_backoff_and_jitter(app_client, pair, waits):
    query, image, mask = pair
    refused = [httpx.ConnectError("refused") for _ in range(3)]
    client, transport = _flaky(app_client, refused, max_retries=3)
    assert client.segment(query, [image], [mask]).shape == query.shape
    assert len(transport.calls) == 4
    # exponential: 0.5, 1, 2 s, each shortened by up to 25 % of jitter
    for wait, base in zip(waits, (0.5, 1.0, 2.0), strict=True):
        assert 0.75 * base <= wait <= base


def test_retries_give_up_after_max_retries(app_client, pair, waits):
    query, image, mask = pair
    busy = [error_response(503, "not_ready", "still loading") for _ in range(5)]
    client, transport = _flaky(app_client, busy, max_retries=2)
    with pytest.raises(ServiceUnavailableError):
        client.segment(query, [image], [mask])
    assert len(transport.calls) == 3 and len(waits) == 2


def test_a_long_retry_after_is_raised_not_waited(app_client, pair, waits):
    query, image, mask = pair
    client, transport = _flaky(app_client, [error_response(429, "busy", "queue full", Retry_After="600")])
    with pytest.raises(RateLimitError) as info:
        client.segment(query, [image], [mask])
    assert info.value.retry_after == 600 and waits == [] and len(transport.calls) == 1


def test_broken_connections_are_retried_only_where_safe(app_client, pair, waits):
    query, image, mask = pair
    # /segment changes nothing on the server: resent after the connection broke mid-request
    client, transport = _flaky(app_client, [httpx.ReadError("reset by peer")])
    assert client.segment(query, [image], [mask]).shape == query.shape
    assert len(transport.calls) == 2
    # POST /prompts stores something: a broken connection may have stored it already, so it is not resent
    client, transport = _flaky(app_client, [httpx.ReadError("reset by peer")])
    with pytest.raises(APIConnectionError):
        client.create_prompt([image], [mask])
    assert len(transport.calls) == 1
    # ... but a connection that never opened is safe to retry for any request
    client, transport = _flaky(app_client, [httpx.ConnectError("refused")])
    assert client.create_prompt([image], [mask]).support_size == 1
    assert len(transport.calls) == 2


def test_async_client_retries_the_same_way(pair, waits):
    query, image, mask = pair
    answers = [error_response(503, "not_ready", "starting", Retry_After="1"),
               httpx.Response(200, json={"id": "p" * 32, "labels": [1], "support_size": 1, "network_size": 32,
                                         "created_at": 0, "bytes": 1})]
    calls = []

    def handler(request):
        calls.append(request)
        return answers.pop(0)

    async def main():
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncClient("http://icseg.test", http_client=http) as client:
            return await client.create_prompt([image], [mask])

    prompt = asyncio.run(main())
    assert prompt.id == "p" * 32 and len(calls) == 2 and waits == [1.0]
    with pytest.raises(UnprocessableEntityError):
        asyncio.run(_async_error(422))


async def _async_error(status: int):
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: error_response(status, "x", "y")))
    async with AsyncClient("http://icseg.test", http_client=http) as client:
        await client.list_prompts()


def test_every_error_is_an_icseg_error():
    for name in icseg_client._errors.__all__:
        assert issubclass(getattr(icseg_client, name), icseg_client.IcsegError), name
