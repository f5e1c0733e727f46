"""Issue 13 against real `icseg serve` processes: the eight inputs that were 500s keep the connection usable
and leave nothing of the request in the log (finding 3, 5), a graceful stop answers JSON only (4), unsafe
key settings fail at start and an open bind warns (7), a paused Redis answers within 2 s (7)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from hostilekit import (
    dicom_with_pixel_spacing,
    mask_with_label,
    nifti_gz,
    nifti_huge_vox_offset,
    nifti_nan_srow,
    tiff_with_bad_next_ifd,
)
from reliabilitykit import start_server
from testkit.inputs import disk_pair, png
from testkit.processes import clean_env, free_port, icseg_command

from app.logs import ScrubbedFormatter, WithholdDecoderText


def _form(query: bytes, image: bytes, mask: bytes) -> list[tuple]:
    return [("query", ("q", query)), ("support_images", ("i", image)), ("support_masks", ("m", mask))]


def test_the_eight_inputs_keep_the_connection_and_the_log_holds_none_of_them(tmp_path, tiny_weights):
    server = start_server(tmp_path, tiny_weights)
    rng = np.random.default_rng(0)
    image, mask = (png(a) for a in disk_pair(rng))
    volume = rng.integers(0, 200, (24, 20, 10)).astype(np.int16)
    vmask = np.zeros((24, 20, 10), np.uint8)
    vmask[6:18, 5:15, 2:8] = 1
    jane = dicom_with_pixel_spacing(b"Jane\\Doe")
    cases = [
        ("/segment", _form(tiff_with_bad_next_ifd(), image, mask)),
        ("/segment", _form(image, tiff_with_bad_next_ifd(), mask)),
        ("/segment", _form(image, image, tiff_with_bad_next_ifd(np.asarray(disk_pair(rng)[1], np.uint8)))),
        ("/prompts", _form(b"", tiff_with_bad_next_ifd(), mask)[1:]),
        ("/segment", _form(dicom_with_pixel_spacing(b"abc\\defg"), image, mask)),
        ("/prompts", _form(b"", image, mask_with_label(70_000))[1:]),
        ("/jobs", _form(nifti_nan_srow(volume), nifti_gz(volume), nifti_gz(vmask))),
        ("/segment", _form(nifti_huge_vox_offset(volume), image, mask)),
        ("/segment", _form(jane, image, mask)),  # the log case: the name is in the file, never in the log
        ("/segment", _form(image, jane, mask)),
    ]
    try:
        with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=1)) as client:
            for route, form in cases:
                response = client.post(route, files=form)
                assert 400 <= response.status_code < 500, (route, response.status_code, response.text)
                assert response.headers["content-type"] == "application/json"
                assert "Jane" not in response.text and "Doe" not in response.text
                assert client.get("/readyz").status_code == 200  # the same connection, still usable
            assert client.post("/segment", files=_form(image, image, mask)).status_code == 200
    finally:
        server.stop()
    log = server.log()
    assert "Jane" not in log and "Doe" not in log and "defg" not in log
    assert "status=500" not in log and "Traceback" not in log


def test_tracebacks_and_decoder_records_are_scrubbed():
    formatter = ScrubbedFormatter("%(message)s")
    try:
        try:
            float("Jane")
        except ValueError as exc:
            raise RuntimeError("while reading Doe's PixelSpacing") from exc
    except RuntimeError:
        record = logging.LogRecord("icseg", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(record)
    assert "Jane" not in text and "Doe" not in text
    assert "ValueError" in text and "RuntimeError" in text and __file__ in text  # the frames stay
    decoder = logging.LogRecord("pydicom", logging.WARNING, __file__, 1, "Invalid value for VR DS: %r", ("Jane",), None)
    WithholdDecoderText().filter(decoder)
    assert "Jane" not in decoder.getMessage()


def test_a_graceful_stop_answers_json_only(tmp_path, tiny_weights):
    server = start_server(tmp_path, tiny_weights, ICSEG_SHUTDOWN_GRACE_S="1", ICSEG_SYNC_MAX_WORK="100000000",
                          ICSEG_SYNC_MAX_VOXELS="10000000")
    rng = np.random.default_rng(1)
    image, mask = (png(a) for a in disk_pair(rng, size=(32, 32)))
    # minutes of model work on any machine: 4,000 slices, each against 8 support pairs, 16 ensemble members
    slow = nifti_gz(rng.integers(0, 200, (32, 32, 4000)).astype(np.uint8))
    answers: list[tuple[str, httpx.Response | Exception]] = []

    def send(kind, form):
        try:
            answers.append((kind, httpx.post(server.url + "/segment", files=form, data={"ensemble": "16"}, timeout=60)))
        except httpx.HTTPError as exc:
            answers.append((kind, exc))

    slow_form = _form(slow, image, mask) + _form(slow, image, mask)[1:] * 7
    threads = [threading.Thread(target=send, args=("slow", slow_form)) for _ in range(4)]
    threads += [threading.Thread(target=send, args=("small", _form(image, image, mask))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    began = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    server.proc.wait(30)
    stopped_in = time.monotonic() - began
    server.stop()
    assert len(answers) == 8 and all(isinstance(a, httpx.Response) for _, a in answers), answers
    for kind, response in answers:
        assert response.status_code in (200, 503), response.status_code
        if response.status_code != 200:  # never uvicorn's plain-text 500
            assert response.headers["content-type"] == "application/json", response.text[:200]
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "server_stopping" and response.headers["retry-after"]
        if kind == "slow":  # the slow volumes were cancelled, not finished
            assert response.status_code == 503
    assert stopped_in < 15
    assert "Traceback" not in server.log()


def test_a_stopping_server_refuses_new_requests_with_503_json(make_client, rng):
    client = make_client()
    client.app.state.stopping.admitting = False
    response = client.get("/info")
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_stopping"
    assert response.headers["retry-after"] == "5"
    assert client.get("/healthz").status_code == 200


def test_unsafe_key_settings_fail_at_start_and_an_open_bind_warns(tmp_path, tiny_weights):
    port = free_port()
    env = clean_env(ICSEG_WEIGHTS=str(tiny_weights), ICSEG_DATA_DIR=str(tmp_path / "d"), ICSEG_API_KEYS=" , ")
    done = subprocess.run([*icseg_command(), "serve", "--port", str(port)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no key" in done.stderr
    env.pop("ICSEG_API_KEYS")
    log = tmp_path / "open.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*icseg_command(), "serve", "--host", "0.0.0.0", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "WARNING: listening on 0.0.0.0 without API keys" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_paused_redis_answers_within_two_seconds(make_client, redis_server):
    client = make_client(redis_url=redis_server.url, redis_prefix=f"paused{os.getpid()}")
    assert client.get("/readyz").status_code == 200
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        for path in ("/readyz", "/prompts"):
            began = time.monotonic()
            response = client.get(path)
            elapsed = time.monotonic() - began
            assert response.status_code == 503 and response.headers["retry-after"], path
            assert elapsed < 4.5, (path, elapsed)  # 2 s per operation, inside the compose health check's 5 s
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
