"""Volume jobs: 202 + id, progress, the NIfTI result, cancellation, 429 when full, result TTL."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from testkit.inputs import ball_volume, nifti, read_nifti, support_files

from app import jobs as jobs_module
from app.errors import ApiError
from app.jobs import JobManager
from app.metrics import Metrics
from model.errors import InputError


def _wait(client, job_id, until=("done", "failed", "cancelled"), timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.02)
    raise TimeoutError(job)


def _volume_job_files(rng, shape=(20, 18, 12)):
    volume, _ = ball_volume(rng, shape)
    query_bytes = nifti(volume)
    files = [("query", ("q.nii.gz", query_bytes))]
    for _ in range(2):
        v, m = ball_volume(rng, (20, 20, 10))
        files += [("support_images", ("v.nii.gz", nifti(v))), ("support_masks", ("m.nii.gz", nifti(m)))]
    return volume, query_bytes, files


def test_volume_job_round_trip(client, rng):
    volume, query_bytes, files = _volume_job_files(rng)
    response = client.post("/jobs", files=files)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "done") and job["progress"]["total"] == volume.shape[2]
    assert job["labels"] == [1]  # known from the support set before the 202
    job = _wait(client, job["id"])
    assert job["status"] == "done" and job["progress"] == {"done": 12, "total": 12} and job["labels"] == [1]
    assert job["result"] == f"/jobs/{job['id']}/result" and job["expires_at"] > job["finished_at"]
    result = client.get(job["result"])
    assert result.status_code == 200 and result.headers["content-type"] == "application/gzip"
    assert result.headers["x-labels"] == "1"  # as /segment's binary answers
    out, sent = read_nifti(result.content), read_nifti(query_bytes)
    assert out.shape == volume.shape
    np.testing.assert_array_equal(out.affine, sent.affine)
    # the same request answered synchronously gives the same mask
    sync = client.post("/segment", files=files)
    np.testing.assert_array_equal(np.asarray(read_nifti(sync.content).dataobj), np.asarray(out.dataobj))
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert client.get(f"/jobs/{job['id']}").status_code == 404
    assert client.get(job["result"]).status_code == 404


def test_job_with_a_prompt_and_axis(client, rng):
    prompt_id = client.post("/prompts", files=support_files(rng, 2)).json()["id"]
    volume, _ = ball_volume(rng, (10, 12, 8))
    response = client.post(
        "/jobs", files=[("query", ("q.nii.gz", nifti(volume)))], data={"prompt_id": prompt_id, "axis": "1"}
    )
    assert response.status_code == 202
    job = _wait(client, response.json()["id"])
    assert job["status"] == "done" and job["progress"]["total"] == 12
    assert read_nifti(client.get(job["result"]).content).shape == volume.shape


def test_job_status_and_result_name_the_labels_of_a_prompt(client, rng):
    prompt_id = client.post("/prompts", files=support_files(rng, 2, labels=(1, 3))).json()["id"]
    volume, _ = ball_volume(rng, (10, 12, 6))
    response = client.post("/jobs", files=[("query", ("q.nii.gz", nifti(volume)))], data={"prompt_id": prompt_id})
    assert response.status_code == 202 and response.json()["labels"] == [1, 3]
    job = _wait(client, response.json()["id"])
    assert job["status"] == "done" and job["labels"] == [1, 3]
    result = client.get(job["result"])
    assert result.status_code == 200 and result.headers["x-labels"] == "1,3"


def test_job_labels_and_selection_survive_a_restart(tmp_path):
    jobs = JobManager(tmp_path, workers=1, queue_size=0, result_ttl_s=60, metrics=Metrics())
    selection = {"select": "random", "support_size": 3, "pool": 9}
    job = jobs.submit(lambda progress: (b"mask", "application/gzip", ".nii.gz"), total=1, labels=(2, 5),
                      selection=selection)
    job.future.result(10)
    jobs.shutdown()
    again = JobManager(tmp_path, workers=1, queue_size=0, result_ttl_s=60, metrics=Metrics())
    try:
        restored = again.get(job.id)
        assert restored.status == "done" and restored.to_dict()["labels"] == [2, 5]
        assert restored.to_dict()["selection"] == selection
    finally:
        again.shutdown()


def test_job_inputs_are_checked_before_202(client, rng):
    volume, _ = ball_volume(rng, (10, 12, 8))
    missing = client.post("/jobs", files=[("query", ("q.nii.gz", nifti(volume)))])
    assert missing.status_code == 422
    bad = client.post("/jobs", files=[("query", ("q.nii.gz", b"garbage"))] + support_files(rng, 1))
    assert bad.status_code == 415
    unknown = client.post("/jobs", files=[("query", ("q.nii.gz", nifti(volume)))], data={"prompt_id": "f" * 32})
    assert unknown.status_code == 404
    assert client.get("/jobs/" + "0" * 32).status_code == 404
    assert client.delete("/jobs/nope").status_code == 404


def test_delete_cancels_a_running_job(make_client, rng):
    client = make_client(job_workers=1, job_queue_size=1)
    release = threading.Event()
    started = threading.Event()
    model = client.app.state.model

    def slow(volume, *, progress=None, **kwargs):
        started.set()
        while True:  # like a real long job: reports progress, never finishes on its own
            progress(1, 2)
            release.wait(0.01)

    model.segment_volume_result = slow
    _, _, files = _volume_job_files(rng)
    job_id = client.post("/jobs", files=files).json()["id"]
    assert started.wait(10)
    assert _wait(client, job_id, until=("running",))["progress"] == {"done": 1, "total": 2}
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404
    jobs = client.app.state.jobs
    deadline = time.monotonic() + 10
    while jobs._active and time.monotonic() < deadline:  # the worker lets go at its next progress call
        time.sleep(0.01)
    assert jobs._active == 0
    assert list(jobs.dir.iterdir()) == []


def test_full_queue_is_429_with_retry_after(make_client, rng):
    client = make_client(job_workers=1, job_queue_size=1)
    release = threading.Event()
    model = client.app.state.model
    original = model.segment_volume_result

    def slow(volume, **kwargs):
        release.wait(20)
        return original(volume, **kwargs)

    model.segment_volume_result = slow
    _, _, files = _volume_job_files(rng)
    first = client.post("/jobs", files=files)
    second = client.post("/jobs", files=files)
    assert first.status_code == second.status_code == 202
    assert client.get(f"/jobs/{second.json()['id']}").json()["status"] == "queued"
    pending = client.get(f"/jobs/{first.json()['id']}/result")
    assert pending.status_code == 409 and pending.headers["retry-after"] == "1"
    third = client.post("/jobs", files=files)
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "busy" and int(third.headers["retry-after"]) >= 1
    # cancelling the queued job frees its slot at once
    assert client.delete(f"/jobs/{second.json()['id']}").status_code == 204
    assert client.post("/jobs", files=files).status_code == 202
    release.set()
    assert _wait(client, first.json()["id"])["status"] == "done"
    assert "icseg_jobs" in client.get("/metrics").text


def test_manager_failed_job_and_result_ttl(tmp_path, monkeypatch):
    jobs = JobManager(tmp_path, workers=1, queue_size=2, result_ttl_s=5, metrics=Metrics())
    try:

        def bad(progress):
            raise InputError("slice 3 is empty", field="query")

        failed = jobs.submit(bad, total=4)
        ok = jobs.submit(lambda progress: (progress(4, 4), (b"mask", "application/gzip", ".nii.gz"))[1], total=4)
        ok.future.result(10)
        failed.future.result(10)
        assert failed.status == "failed"
        assert failed.error == {"code": "invalid_input", "message": "slice 3 is empty", "field": "query"}
        assert ok.status == "done" and ok.result_path.read_bytes() == b"mask"

        def crash(progress):
            raise RuntimeError("secret internals")

        crashed = jobs.submit(crash, total=1)
        crashed.future.result(10)
        assert crashed.status == "failed" and "secret" not in crashed.error["message"]

        now = time.time()
        monkeypatch.setattr(jobs_module.time, "time", lambda: now + 10)
        with pytest.raises(ApiError):
            jobs.get(ok.id)
        assert jobs.sweep() == 3
        assert not ok.result_path.exists()
    finally:
        jobs.shutdown()


def test_manager_deletes_the_result_of_a_job_deleted_while_running(tmp_path):
    jobs = JobManager(tmp_path, workers=1, queue_size=0, result_ttl_s=60, metrics=Metrics())
    go = threading.Event()
    running = threading.Event()

    def work(progress):
        running.set()
        go.wait(10)
        return b"x", "image/png", ".png"  # finishes without another progress call

    job = jobs.submit(work, total=1)
    assert running.wait(10)
    jobs.delete(job.id)
    go.set()
    job.future.result(10)
    assert list(jobs.dir.iterdir()) == []
    jobs.shutdown()
