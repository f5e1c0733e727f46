"""The adversarial review of issue 13, finding by finding, against the app in process: a budget per request
(1), work that stops (2), no 500 from any input (3, the eight cases one by one), smaller weaknesses (7).

The process-level findings (graceful stop, logs, connections kept) are in test_hostile_process.py, the
tenants in test_tenants.py, the peak RSS of the memory cases in bench/bench_hostile.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hostilekit import (
    big_png,
    big_support_pair,
    cube_pair,
    deflated_dicom,
    dicom_with_pixel_spacing,
    float64_header_bomb,
    jpeg_declaring,
    labels_mask,
    long_line_nifti2,
    mask_with_label,
    nifti_gz,
    nifti_huge_vox_offset,
    nifti_nan_srow,
    one_slice_nifti,
    png_gray,
    tiff_with_bad_next_ifd,
)
from testkit.inputs import disk_pair, png

from app.settings import Settings
from model.cancel import Cancelled, stop_when
from model.segmenter import Segmenter


def pair(rng, labels=(1,)):
    image, mask = disk_pair(rng, labels=labels)
    return png(image), png(mask)


def files(query: bytes, images: list[bytes], masks: list[bytes]) -> list[tuple]:
    out = [("query", ("q", query))]
    out += [("support_images", (f"i{i}", b)) for i, b in enumerate(images)]
    out += [("support_masks", (f"m{i}", b)) for i, b in enumerate(masks)]
    return out


def expect(response, status: int, code: str, field: str | None = None, word: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    if word is not None:
        assert word in error["message"], error


# -- 1. a cost budget per request, from the headers ------------------------------------------------------


def test_a_large_query_with_many_labels_is_refused_before_the_model(client):
    mask = labels_mask(64, 16)
    response = client.post("/segment", files=files(big_png(6000), [png_gray(np.full((64, 64), 50, np.uint8))],
                                                   [mask]))
    expect(response, 413, "too_large", "query", "16 label(s)")
    assert "/jobs" in response.json()["error"]["message"]


def test_many_large_support_pairs_are_refused_from_their_headers(client, rng):
    image, mask = big_support_pair(6000)
    query, _ = pair(rng)
    expect(client.post("/segment", files=files(query, [image] * 8, [mask] * 8)), 413, "too_large", "query",
           "memory budget")


def test_3d_support_counts_towards_the_synchronous_voxels(client):
    image, mask = cube_pair(240)  # 13.8 M voxels each, the query 8 k: only the support is large
    query = nifti_gz(np.zeros((20, 20, 20), np.uint8))
    expect(client.post("/segment", files=files(query, [image], [mask])), 413, "use_jobs", "query", "support together")


def test_a_one_slice_nifti_is_held_to_the_pixel_limit(client, rng):
    image, mask = pair(rng)
    expect(client.post("/segment", files=files(one_slice_nifti(7000), [image], [mask])), 413, "too_large",
           "query", "ICSEG_MAX_PIXELS")


def test_a_float64_volume_is_priced_before_it_is_inflated(make_client, rng):
    client = make_client(job_max_mb=64)
    image, mask = pair(rng)
    bomb = float64_header_bomb(20_000_000)  # 160 MB of float64 in about 160 KB
    assert len(bomb) < 1_000_000
    expect(client.post("/segment", files=files(bomb, [image], [mask])), 413, "use_jobs", "query", "/jobs")
    expect(client.post("/jobs", files=files(bomb, [image], [mask])), 413, "too_large", "query", "ICSEG_JOB_MAX_MB")


def test_a_deflated_dicom_is_inflated_only_up_to_the_budget(make_client, rng):
    client = make_client(sync_max_mb=16)
    image, mask = pair(rng)
    bomb = deflated_dicom(40)
    assert len(bomb) < 200_000
    expect(client.post("/segment", files=files(bomb, [image], [mask])), 413, "too_large", "query", "inflates past")


def test_a_jpeg_whose_header_lies_is_not_decoded(client, rng):
    image, mask = pair(rng)
    forged = jpeg_declaring(6000, 6000)
    assert len(forged) < 1000
    expect(client.post("/segment", files=files(forged, [image], [mask])), 413, "too_large", "query", "forged")


def test_model_work_over_the_sync_budget_goes_to_jobs_and_over_the_job_budget_is_refused(client, rng):
    image, mask = pair(rng)
    line = long_line_nifti2(8_000_000)  # 7.9 KB, 8 M slices
    expect(client.post("/segment", files=files(line, [image], [mask])), 422, "too_much_work", None, "slices")
    expect(client.post("/jobs", files=files(line, [image], [mask])), 422, "too_much_work")
    query = nifti_gz(np.zeros((32, 32, 300), np.uint8))  # 300 slices x 8 support x ensemble 16 = 38,400
    form = files(query, [image] * 8, [mask] * 8)
    expect(client.post("/segment", files=form, data={"ensemble": "16"}), 413, "use_jobs", "ensemble", "/jobs")


def test_the_budget_settings_are_documented():
    for name in ("sync_max_work", "job_max_work", "sync_max_mb", "job_max_mb", "shutdown_grace_s"):
        assert Settings.model_fields[name].description


# -- 2. work that stops ----------------------------------------------------------------------------------


def test_predict_prepared_stops_between_chunks(tiny_net):
    segmenter = Segmenter(tiny_net, seed=0, max_batch_items=4)
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32)).astype(np.float32) for _ in range(4)]
    masks = [(im > 0.5).astype(np.uint8) for im in images]
    support = segmenter.prepare_support(images, masks)
    calls = []
    original = segmenter.predict_torch
    segmenter.predict_torch = lambda *a: calls.append(1) or original(*a)
    with pytest.raises(Cancelled):
        segmenter.predict_many([images[0]], support, ensemble=8, should_stop=lambda: len(calls) >= 2)
    assert len(calls) == 2  # eight chunks planned; it stopped after the second
    calls.clear()
    with stop_when(lambda: len(calls) >= 1), pytest.raises(Cancelled):  # the same through the context
        segmenter.predict_many([images[0]], support, ensemble=8)
    assert len(calls) == 1


def _slow_model(client, seconds: float) -> list:
    """Make every forward pass of the app's model take ``seconds`` more, one support item per pass; the
    list returned grows by one per pass."""
    segmenter = client.app.state.model.segmenter
    segmenter.max_batch_items = 1
    calls: list[float] = []
    original = segmenter.predict_torch

    def slow(*args):
        calls.append(time.monotonic())
        time.sleep(seconds)
        return original(*args)

    segmenter.predict_torch = slow
    return calls


def _wait_for_first_pass(calls: list, timeout: float = 30) -> None:
    """Wait until the slow model has started, so a job is running, not just accepted."""
    deadline = time.monotonic() + timeout
    while not calls and time.monotonic() < deadline:
        time.sleep(0.02)
    assert calls, "the job never reached the model"


def test_a_504_frees_the_model_thread_within_a_chunk(make_client, rng):
    client = make_client(request_timeout_s=0.5, sync_max_work=10**6)
    calls = _slow_model(client, 0.1)
    image, mask = pair(rng)
    response = client.post("/segment", files=files(image, [image] * 4, [mask] * 4), data={"ensemble": "16"})
    expect(response, 504, "timeout")
    time.sleep(0.5)
    after = len(calls)
    time.sleep(0.5)
    assert len(calls) == after, "the model kept running the request that timed out"
    assert after < 16 * 3 * 4  # far from the planned passes (ensemble 16 x 3 of 4 items)
    calls_before = len(calls)
    ok = client.post("/segment", files=files(image, [image], [mask]))
    assert ok.status_code == 200 and len(calls) > calls_before


def test_cancelling_a_running_job_stops_it_within_a_chunk(make_client, rng):
    client = make_client(job_max_work=10**6)
    calls = _slow_model(client, 0.05)
    image, mask = pair(rng)
    job = client.post("/jobs", files=files(image, [image] * 4, [mask] * 4), data={"ensemble": "16"}).json()
    _wait_for_first_pass(calls)
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    time.sleep(0.3)
    after = len(calls)
    time.sleep(0.5)
    assert len(calls) == after and after < 16 * 3 * 4


# -- 3. no 500 from any input: the eight cases, one by one -----------------------------------------------

EIGHT = ["tiff-query", "tiff-support-image", "tiff-support-mask", "tiff-prompt", "dicom-pixel-spacing",
         "label-above-65535", "nifti-nan-srow", "nifti-vox-offset-1e38"]


@pytest.mark.parametrize("case", EIGHT)
def test_the_eight_500s_are_4xx(client, rng, case):
    image, mask = pair(rng)
    volume = rng.integers(0, 200, (24, 20, 10)).astype(np.int16)
    vmask = np.zeros((24, 20, 10), np.uint8)
    vmask[6:18, 5:15, 2:8] = 1
    if case == "tiff-query":
        response = client.post("/segment", files=files(tiff_with_bad_next_ifd(), [image], [mask]))
        expect(response, 400, "invalid_input", "query", "pages")
    elif case == "tiff-support-image":
        response = client.post("/segment", files=files(image, [tiff_with_bad_next_ifd()], [mask]))
        expect(response, 400, "invalid_input", "support_images[0]")
    elif case == "tiff-support-mask":
        bad_mask = tiff_with_bad_next_ifd(np.asarray(disk_pair(rng)[1], np.uint8))
        response = client.post("/segment", files=files(image, [image], [bad_mask]))
        expect(response, 400, "invalid_input", "support_masks[0]")
    elif case == "tiff-prompt":
        response = client.post("/prompts", files=files(b"", [tiff_with_bad_next_ifd()], [mask])[1:])
        expect(response, 400, "invalid_input", "support_images[0]")
    elif case == "dicom-pixel-spacing":
        response = client.post("/segment", files=files(dicom_with_pixel_spacing(b"abc\\defg"), [image], [mask]))
        expect(response, 400, "invalid_input", "query", "PixelSpacing")
        assert "abc" not in response.text
    elif case == "label-above-65535":
        big = mask_with_label(70_000)
        prompt = client.post("/prompts", files=files(b"", [image], [big])[1:])
        expect(prompt, 400, "invalid_input", "support_masks[0]", "65,535")
        expect(client.post("/segment", files=files(image, [image], [big])), 400, "invalid_input", "support_masks[0]")
        ok = client.post("/prompts", files=files(b"", [image], [mask_with_label(65_535)])[1:])
        assert ok.status_code == 201 and ok.json()["labels"] == [65535]
        used = client.post("/segment", files=[("query", ("q", image))], data={"prompt_id": ok.json()["id"]})
        assert used.status_code == 200, used.text
    elif case == "nifti-nan-srow":
        for route in ("/segment", "/jobs"):  # refused before a job is accepted, not failed as internal later
            response = client.post(route, files=files(nifti_nan_srow(volume), [nifti_gz(volume)], [nifti_gz(vmask)]))
            expect(response, 400, "invalid_input", "query", "affine")
    elif case == "nifti-vox-offset-1e38":
        response = client.post("/segment", files=files(nifti_huge_vox_offset(volume), [image], [mask]))
        expect(response, 400, "invalid_input", "query", "vox_offset")


# -- 7. smaller weaknesses -------------------------------------------------------------------------------


def test_a_keys_setting_that_parses_to_no_key_is_an_error(monkeypatch, tmp_path):
    for value in (" , ", ",", " "):
        monkeypatch.setenv("ICSEG_API_KEYS", value)
        with pytest.raises(ValueError, match="no key"):
            Settings()
    monkeypatch.setenv("ICSEG_API_KEYS", "alice:")
    with pytest.raises(ValueError, match="empty"):
        Settings()
    monkeypatch.delenv("ICSEG_API_KEYS")
    (tmp_path / "keys").write_text("# tenants\n\n")
    monkeypatch.setenv("ICSEG_API_KEYS_FILE", str(tmp_path / "keys"))
    with pytest.raises(ValueError, match="no key"):
        Settings()
    (tmp_path / "keys").write_text("# tenants\nalice:ka\nbob:kb\n")
    assert Settings().tenants == {"ka": "alice", "kb": "bob"}
    monkeypatch.setenv("ICSEG_API_KEYS", "k1,carol:k3")
    assert Settings().tenants == {"k1": "key-1", "k3": "carol", "ka": "alice", "kb": "bob"}


def test_tokens_are_stripped_of_ascii_whitespace_only(make_client):
    client = make_client(api_keys=["alice:key-a"])
    assert client.get("/info", headers={"Authorization": "Bearer key-a\t"}).status_code == 200
    assert client.get("/info", headers={"Authorization": "Bearer  key-a "}).status_code == 200
    for raw in (b"Bearer \xa0key-a", b"Bearer key-a\xa0"):  # a non-breaking space is not whitespace here
        assert client.get("/info", headers={"Authorization": raw}).status_code == 401


def test_repeated_single_valued_fields_are_422(client, rng):
    image, mask = pair(rng)
    form = files(image, [image], [mask]) + [("threshold", (None, "0.5")), ("threshold", (None, "0.9"))]
    expect(client.post("/segment", files=form), 422, "invalid_request", "threshold", "2 times")
    form = files(b"", [image], [mask])[1:] + [("name", (None, "a")), ("name", (None, "b"))]
    expect(client.post("/prompts", files=form), 422, "invalid_request", "name")


def test_docs_load_swagger_ui_from_local_pinned_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "/docs/assets/swagger-ui-bundle.js" in page.text
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text[:200_000]
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/docs/assets/../../../pyproject.toml").status_code == 404


def test_middleware_answers_carry_the_matched_route_in_metrics(make_client):
    client = make_client(api_keys=["alice:key-a"])
    assert client.get("/prompts/" + "0" * 32).status_code == 401
    metrics = client.get("/metrics", headers={"Authorization": "Bearer key-a"}).text
    line = [m for m in metrics.splitlines() if m.startswith("icseg_requests_total") and 'status="401"' in m]
    assert any('route="/prompts/{prompt_id}"' in m for m in line), line


def test_a_429_is_answered_before_the_body_is_read(make_client, rng):
    client = make_client(job_workers=1, job_queue_size=0, job_max_work=10**6)
    calls = _slow_model(client, 0.25)  # 64 passes: a job of 16 s, still running at the probe
    image, mask = pair(rng)
    first = client.post("/jobs", files=files(image, [image] * 4, [mask] * 4), data={"ensemble": "16"})
    assert first.status_code == 202
    _wait_for_first_pass(calls)  # the worker holds the job: the probe below meets a full house
    app = client.app
    events: list[str] = []

    async def run():
        body = b"x" * 1000
        messages = [{"type": "http.request", "body": body[:500], "more_body": True},
                    {"type": "http.request", "body": body[500:], "more_body": False}]

        async def receive():
            events.append("receive")
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                events.append(f"status {message['status']}")

        scope = {"type": "http", "method": "POST", "path": "/jobs", "headers": [(b"content-length", b"1000")],
                 "query_string": b"", "root_path": "", "app": app, "scheme": "http", "server": ("t", 80),
                 "client": ("c", 1), "http_version": "1.1", "raw_path": b"/jobs"}
        await app.middleware_stack(scope, receive, send)

    import asyncio

    asyncio.run(run())
    assert events[0] == "status 429", events  # answered before the first receive of the body
    client.delete(f"/jobs/{first.json()['id']}")


def test_concurrent_budget_checks_do_not_decode(make_client, rng):
    """Admission: a full queue is a 429 before any file is decoded (the budget is priced after it)."""
    client = make_client(queue_size=1)
    model = client.app.state.model
    model.ensure_room = lambda: (_ for _ in ()).throw(model._busy())
    decoded = []
    import app.pipeline as pipeline

    original = pipeline.read_series if hasattr(pipeline, "read_series") else pipeline.read_image
    name = "read_series" if hasattr(pipeline, "read_series") else "read_image"
    setattr(pipeline, name, lambda *a, **k: decoded.append(1) or original(*a, **k))
    try:
        image, mask = pair(rng)
        threads = [threading.Thread(target=lambda: client.post("/segment", files=files(image, [image], [mask])))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        setattr(pipeline, name, original)
    assert decoded == []
