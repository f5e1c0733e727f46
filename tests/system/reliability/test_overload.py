"""Overload: when ICSEG_QUEUE_SIZE requests already wait for the model, /segment answers 429 at once (before
decoding, with Retry-After), not after a timeout; the waiting requests are still served."""

from __future__ import annotations

import threading
import time

import numpy as np
from reliabilitykit import query_file
from testkit.inputs import support_files


def test_a_full_queue_is_an_immediate_429_and_the_queued_requests_still_finish(make_client, monkeypatch):
    client = make_client(queue_size=1, request_timeout_s=120)
    model = client.app.state.model
    entered, release = threading.Event(), threading.Event()
    original = model.segmenter.predict_many

    def held(*args, **kwargs):  # the pass that runs stays on the model thread until released
        entered.set()
        release.wait(60)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.segmenter, "predict_many", held)
    rng = np.random.default_rng(0)
    files = [query_file(rng)] + support_files(rng, 2)
    answers: dict[str, int] = {}

    def send(name: str) -> None:
        answers[name] = client.post("/segment", files=files).status_code

    running = threading.Thread(target=send, args=("running",))
    running.start()
    assert entered.wait(30)
    waiting = threading.Thread(target=send, args=("waiting",))
    waiting.start()
    deadline = time.monotonic() + 30
    while model.waiting < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    prepared = []
    monkeypatch.setattr(model, "prepare_support", lambda *a: prepared.append(a) or None)
    busy = client.post("/segment", files=files)
    assert busy.status_code == 429, busy.text
    error = busy.json()["error"]
    assert error["code"] == "busy" and "ICSEG_QUEUE_SIZE" in error["message"]
    assert int(busy.headers["retry-after"]) >= 1
    assert not prepared  # refused before the upload was decoded and the support set prepared
    assert "icseg_queue_depth 1.0" in client.get("/metrics").text

    monkeypatch.undo()  # the real prepare_support and predict_many again
    release.set()
    for thread in (running, waiting):
        thread.join(60)
    assert answers == {"running": 200, "waiting": 200}
    assert client.post("/segment", files=files).status_code == 200  # room again
