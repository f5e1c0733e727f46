"""Real `icseg serve` processes on loopback ports: start, segment a PNG and a NIfTI, share prompts via Redis, stop."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
from testkit.inputs import ball_volume, disk_pair, nifti, png, read_nifti, read_png, support_files
from testkit.processes import Server


def test_icseg_serve_process(tiny_weights, tmp_path, rng):
    server = Server({"ICSEG_WEIGHTS": str(tiny_weights), "ICSEG_DATA_DIR": str(tmp_path / "data"),
                     "ICSEG_API_KEYS": "process-key"}, tmp_path / "server.log")
    try:
        server.wait_ready()
        auth = {"Authorization": "Bearer process-key"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
            query, _ = disk_pair(rng, size=(70, 50))
            names = [("patient-smith-a.png", "mask-a.png"), ("patient-smith-b.png", "mask-b.png")]
            response = http.post("/segment", files=[("query", ("patient-smith-q.png", png(query)))]
                                 + support_files(rng, 2, names=names))
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/png"
            assert read_png(response.content).shape == (70, 50)

            volume, _ = ball_volume(rng, (18, 16, 8))
            query_bytes = nifti(volume)
            v, m = ball_volume(rng, (18, 16, 8))
            response = http.post("/segment", files=[("query", ("q.nii.gz", query_bytes)),
                                                     ("support_images", ("v.nii.gz", nifti(v))),
                                                     ("support_masks", ("m.nii.gz", nifti(m)))])
            assert response.status_code == 200, response.text
            out, sent = read_nifti(response.content), read_nifti(query_bytes)
            assert out.shape == volume.shape
            np.testing.assert_array_equal(out.affine, sent.affine)

            assert httpx.get(server.url + "/info").status_code == 401
            assert http.get("/info").json()["network"]["size"] == 32
    finally:
        code = server.stop()
    log = server.log()
    assert code in (0, -15), log  # uvicorn re-raises SIGTERM after a graceful shutdown
    assert "Application shutdown complete" in log
    assert "route=/segment status=200" in log
    assert "smith" not in log  # no file names in the logs


def test_two_processes_share_prompts_through_redis(tiny_weights, tmp_path, rng, redis_server):
    env = {"ICSEG_WEIGHTS": str(tiny_weights), "ICSEG_REDIS_URL": redis_server.url,
           "ICSEG_REDIS_PREFIX": f"proc-{uuid.uuid4().hex}"}
    first = Server({**env, "ICSEG_DATA_DIR": str(tmp_path / "a")}, tmp_path / "a.log")
    second = Server({**env, "ICSEG_DATA_DIR": str(tmp_path / "b")}, tmp_path / "b.log")
    try:
        first.wait_ready()
        second.wait_ready()
        created = httpx.post(first.url + "/prompts", files=support_files(rng, 3), data={"name": "shared"}, timeout=60)
        assert created.status_code == 201, created.text
        prompt_id = created.json()["id"]
        query, _ = disk_pair(rng)
        files = [("query", ("q.png", png(query)))]
        on_second = httpx.post(second.url + "/segment", files=files, data={"prompt_id": prompt_id}, timeout=60)
        assert on_second.status_code == 200, on_second.text
        on_first = httpx.post(first.url + "/segment", files=files, data={"prompt_id": prompt_id}, timeout=60)
        assert on_first.content == on_second.content
        assert httpx.delete(f"{second.url}/prompts/{prompt_id}").status_code == 204
        gone = httpx.post(first.url + "/segment", files=files, data={"prompt_id": prompt_id}, timeout=60)
        assert gone.status_code == 404
    finally:
        for server in (first, second):
            assert server.stop() in (0, -15), server.log()
