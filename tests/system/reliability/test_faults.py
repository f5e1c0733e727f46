"""Faults: SIGKILL while prompts are written, Redis going away and coming back, a server dying under a job.

Every test runs real processes (`icseg serve`, redis-server, a writer process) and kills them for real.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from reliabilitykit import kill9, query_file, start_server
from testkit import ROOT
from testkit.inputs import ball_volume, nifti, read_nifti, support_files
from testkit.processes import RedisServer, require_exe

from app.prompt_store import DiskPromptStore, PromptRecord

# -- kill -9 while prompts are written ---------------------------------------------------------------------


def _write_prompts_until_killed(url: str, acked: list[dict], seed: int) -> None:
    """POST /prompts back to back; every 201 is recorded as acknowledged. Ends when the server dies."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=60) as http:
        while True:
            try:
                response = http.post("/prompts", files=support_files(rng, 8, size=(64, 64)),
                                     data={"name": f"writer {seed}"})
            except httpx.TransportError:
                return
            assert response.status_code == 201, response.text
            acked.append(response.json())


def test_kill9_during_prompt_writes_loses_no_acknowledged_prompt(tiny_weights, tmp_path, rng):
    folder = tmp_path / "kill"
    acked: list[dict] = []
    chance = random.Random(7)
    server = start_server(folder, tiny_weights)
    writers = [threading.Thread(target=_write_prompts_until_killed, args=(server.url, acked, i)) for i in range(3)]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 60
    while len(acked) < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(chance.uniform(0, 0.2))  # somewhere in the middle of the writers' next requests
    kill9(server)
    for writer in writers:
        writer.join(30)
    assert len(acked) >= 8

    server = start_server(folder, tiny_weights)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            listed = {p["id"]: p for p in http.get("/prompts").json()["prompts"]}
            for prompt in acked:  # every acknowledged prompt is there, unchanged
                assert listed.get(prompt["id"]) == prompt
                assert http.get(f"/prompts/{prompt['id']}").json() == prompt
            query = [query_file(rng)]
            for prompt_id in listed:  # every visible prompt, acknowledged or not, is complete
                response = http.post("/segment", files=query, data={"prompt_id": prompt_id})
                assert response.status_code == 200, response.text
    finally:
        server.stop()
    store = folder / "data" / "prompts"
    for meta in store.glob("*.json"):
        assert meta.with_suffix(".npz").exists(), meta.name


_WRITER = """
import sys, time
import numpy as np
from app.prompt_store import DiskPromptStore, PromptRecord, new_id
store = DiskPromptStore(sys.argv[1], max_bytes=1 << 40)
size = int(sys.argv[2])
while True:
    prompt_id = new_id()
    blob = np.random.default_rng(int(prompt_id[:8], 16)).bytes(size)
    store.put(PromptRecord(id=prompt_id, labels=[1], support_size=1, network_size=32, created_at=time.time(),
                           bytes=size), blob)
    print(prompt_id, flush=True)  # acknowledged: put() returned
"""


def _expected_blob(prompt_id: str, size: int) -> bytes:
    return np.random.default_rng(int(prompt_id[:8], 16)).bytes(size)


def _kill_writer(data_dir: Path, size: int, when: str, delay: float) -> list[str]:
    """Start a process writing prompts through DiskPromptStore; SIGKILL it mid-write; its acknowledged ids."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(data_dir), str(size)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: list[str] = []
    reader = threading.Thread(target=lambda: acked.extend(line.strip() for line in proc.stdout), daemon=True)
    reader.start()
    store = data_dir / "prompts"
    deadline = time.monotonic() + 60
    try:
        while len(acked) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        if when == "temporary file":  # the arrays are being written: a .npz.*.tmp exists right now
            while time.monotonic() < deadline and not any(p.name.endswith(".tmp") for p in store.iterdir()):
                pass
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    assert len(acked) >= 2, proc.stderr.read()
    return acked


@pytest.mark.parametrize("when", ["temporary file", "random time"])
def test_kill9_inside_the_disk_store_write_leaves_nothing_half_visible(tmp_path, when):
    size = 8 << 20  # 8 MB of arrays per prompt: the write takes long enough to be hit
    data_dir = tmp_path / "data"
    acked: list[str] = []
    leftovers = 0
    for round_ in range(3):
        acked += _kill_writer(data_dir, size, when, delay=0.05 * round_)
        leftovers += sum(p.name.endswith(".tmp") or (p.suffix == ".npz" and not p.with_suffix(".json").exists())
                         for p in (data_dir / "prompts").iterdir())
        store = DiskPromptStore(data_dir, max_bytes=1 << 40)  # what the next server start opens
        listed = {record.id for record in store.list()}
        assert set(acked) <= listed
        for prompt_id in listed:  # visible means complete: the metadata is the commit marker
            assert store.get_blob(prompt_id) == _expected_blob(prompt_id, size)
    if when == "temporary file":
        assert leftovers >= 3  # each kill landed mid-write (else this test proved nothing)
    # a later start removes a crash's leftovers once they are old enough not to be a write in progress
    old = time.time() - 2 * 3600
    for path in (data_dir / "prompts").iterdir():
        os.utime(path, (old, old))
    store = DiskPromptStore(data_dir, max_bytes=1 << 40)
    names = [p.name for p in (data_dir / "prompts").iterdir()]
    assert not [n for n in names if n.endswith(".tmp")]
    assert sorted(n for n in names if n.endswith(".json")) == sorted(f"{i}.json" for i in {r.id for r in store.list()})
    assert {r.id for r in store.list()} >= set(acked)
    assert isinstance(store.get_record(acked[0]), PromptRecord)


# -- Redis stopped and started again ----------------------------------------------------------------------


@pytest.fixture
def redis_exe() -> str:
    return require_exe("redis-server")


def test_redis_stopped_is_503_with_retry_after_and_recovers_by_itself(tiny_weights, tmp_path, rng, redis_exe):
    redis = RedisServer(redis_exe, tmp_path)
    server = start_server(tmp_path / "server", tiny_weights, ICSEG_REDIS_URL=redis.url, ICSEG_REDIS_PREFIX="fault")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            created = http.post("/prompts", files=support_files(rng, 3))
            assert created.status_code == 201, created.text
            prompt_id = created.json()["id"]
            query = [query_file(rng)]
            assert http.post("/segment", files=query, data={"prompt_id": prompt_id}).status_code == 200

            redis.stop()
            needing_redis = [
                http.get("/readyz"),
                http.post("/prompts", files=support_files(rng, 2)),
                http.get("/prompts"),
                http.get(f"/prompts/{prompt_id}"),
                http.delete(f"/prompts/{prompt_id}"),
                http.post("/segment", files=query, data={"prompt_id": prompt_id}),
            ]
            for response in needing_redis:
                assert response.status_code == 503, (response.request.url, response.text)
                assert response.json()["error"]["code"] == "store_unavailable"
                assert int(response.headers["retry-after"]) >= 1
            assert http.get("/healthz").status_code == 200
            inline = http.post("/segment", files=query + support_files(rng, 2))
            assert inline.status_code == 200  # what does not need Redis keeps working

            redis = RedisServer(redis_exe, tmp_path, port=redis.port)  # the same address again
            deadline = time.monotonic() + 30
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the server did not reconnect to Redis"
                time.sleep(0.2)
            again = http.post("/prompts", files=support_files(rng, 2))
            assert again.status_code == 201, again.text
            assert http.post("/segment", files=query, data={"prompt_id": again.json()["id"]}).status_code == 200
    finally:
        server.stop()
        redis.stop()
    assert "Traceback" not in server.log()


# -- a job running when its server dies -------------------------------------------------------------------


def _wait_for(http: httpx.Client, job_id: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_a_job_running_when_its_server_dies_is_reported_failed(tiny_weights, tmp_path, rng):
    folder = tmp_path / "jobs"
    server = start_server(folder, tiny_weights, ICSEG_JOB_WORKERS="1")
    long_volume = nifti(np.random.default_rng(1).normal(100, 20, (40, 40, 400)).astype(np.float32))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            prompt_id = http.post("/prompts", files=support_files(rng, 16)).json()["id"]
            small, _ = ball_volume(rng, (20, 18, 6))
            finished = http.post("/jobs", files=[("query", ("q.nii.gz", nifti(small)))],
                                 data={"prompt_id": prompt_id}).json()
            assert _wait_for(http, finished["id"], {"done", "failed"})["status"] == "done"
            result = http.get(f"/jobs/{finished['id']}/result").content

            long = {"files": [("query", ("big.nii.gz", long_volume))], "data": {"prompt_id": prompt_id,
                                                                                  "ensemble": "16"}}
            running = http.post("/jobs", **long).json()
            queued = http.post("/jobs", **long).json()
            _wait_for(http, running["id"], {"running"})
            assert http.get(f"/jobs/{queued['id']}").json()["status"] == "queued"
        kill9(server)

        server = start_server(folder, tiny_weights, ICSEG_JOB_WORKERS="1")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for job_id in (running["id"], queued["id"]):
                job = http.get(f"/jobs/{job_id}").json()
                assert job["status"] == "failed", job
                assert job["error"]["code"] == "interrupted" and "submit it again" in job["error"]["message"]
                gone = http.get(f"/jobs/{job_id}/result")
                assert gone.status_code == 409 and gone.json()["error"]["code"] == "job_failed"
            # what had finished before the crash is still there
            assert http.get(f"/jobs/{finished['id']}").json()["status"] == "done"
            kept = http.get(f"/jobs/{finished['id']}/result")
            assert kept.status_code == 200 and kept.content == result
            assert read_nifti(kept.content).shape == small.shape

            # a graceful stop (SIGTERM) while a job runs: failed too, not "cancelled" and not "running"
            stopped = http.post("/jobs", **long).json()
            _wait_for(http, stopped["id"], {"running"})
        assert server.stop() in (0, -15), server.log()

        server = start_server(folder, tiny_weights)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            job = http.get(f"/jobs/{stopped['id']}").json()
            assert job["status"] == "failed" and job["error"]["code"] == "interrupted", job
            assert http.delete(f"/jobs/{stopped['id']}").status_code == 204
            assert http.get(f"/jobs/{stopped['id']}").status_code == 404
    finally:
        server.stop()
    assert not (folder / "data" / "jobs" / f"{stopped['id']}.json").exists()
