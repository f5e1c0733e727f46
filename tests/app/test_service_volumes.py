"""Volumes over the API: the cost fields (support_slices, skip_margin, cascade) validated naming the field,
skipped slices reported in the answer and the job, per-label probabilities as a float NIfTI."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from testkit.inputs import AFFINE, ball_volume, nifti, png, read_nifti


def _files(rng, query_shape=(20, 18, 30), n_support=2):
    """A query whose slices 0-29 run well past the support's labelled range (a ball in the middle)."""
    volume, _ = ball_volume(rng, query_shape)
    files = [("query", ("q.nii.gz", nifti(volume)))]
    for _ in range(n_support):
        v, m = ball_volume(rng, (20, 20, 10))
        files += [("support_images", ("v.nii.gz", nifti(v))), ("support_masks", ("m.nii.gz", nifti(m)))]
    return volume, files


def test_volume_json_reports_skipped_slices_and_probs(client, rng):
    volume, files = _files(rng)
    response = client.post("/segment", files=files, data={"output": "probs", "support_slices": "4",
                                                          "skip_margin": "0.05"})
    assert response.status_code == 200, response.text
    body = response.json()
    info = body["volume"]
    assert info["slices"] == 30 and info["support_slices"] == 4 and info["skip_margin"] == 0.05
    assert info["skipped"] and info["skipped"][0] == 0 and info["skipped"][-1] == 29  # both ends, far outside
    assert info["tasks"] == 30 - len(info["skipped"])  # one label
    mask = read_nifti(base64.b64decode(body["mask"]))
    assert np.all(np.asarray(mask.dataobj)[..., info["skipped"]] == 0)
    [probs_b64] = body["probs"]
    probs = read_nifti(base64.b64decode(probs_b64))
    assert probs.shape == (*volume.shape, 1) and probs.get_data_dtype() == np.float32
    np.testing.assert_allclose(probs.affine, AFFINE, atol=1e-6)
    values = np.asarray(probs.dataobj)
    assert 0 <= values.min() and values.max() <= 1
    assert np.all(values[..., info["skipped"], :] == 0)
    # the file answer says how many slices were skipped
    plain = client.post("/segment", files=files, data={"support_slices": "4", "skip_margin": "0.05"})
    assert plain.headers["x-skipped-slices"] == str(len(info["skipped"]))


def test_skip_margin_one_runs_every_slice(client, rng):
    _, files = _files(rng)
    # threshold 0: every coarse slice holds foreground over the whole slice, so coarse-to-fine refines every gap
    body = client.post("/segment", files=files, data={"output": "json", "skip_margin": "1", "threshold": "0"}).json()
    assert body["volume"]["skipped"] == [] and body["volume"].get("skip_margin") is None


@pytest.mark.parametrize("data,status,field", [
    ({"support_slices": "0"}, 422, "support_slices"),
    ({"support_slices": "65"}, 422, "support_slices"),
    ({"support_slices": "9"}, 400, "support_slices"),  # above the tiny model's max_support of 8... of the server
    ({"skip_margin": "-0.1"}, 422, "skip_margin"),
    ({"skip_margin": "2"}, 422, "skip_margin"),
    ({"cascade": "maybe"}, 422, "cascade"),
])
def test_bad_volume_options_name_the_field(make_client, rng, data, status, field):
    client = make_client(max_support=8)
    _, files = _files(rng)
    for route in ("/segment", "/jobs"):
        response = client.post(route, files=files, data=data)
        assert response.status_code == status, (route, response.text)
        assert response.json()["error"]["field"] == field


def test_volume_job_reports_volume_and_serves_probs(client, rng):
    volume, files = _files(rng)
    job = client.post("/jobs", files=files, data={"output": "probs", "cascade": "true"}).json()
    deadline = time.monotonic() + 60
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "done", job
    assert job["volume"]["cascade"] is True and job["volume"]["slices"] == 30
    assert job["progress"] == {"done": 30, "total": 30}
    probs = client.get(job["probs"])
    assert probs.status_code == 200 and probs.headers["x-labels"] == "1"
    assert read_nifti(probs.content).shape == (*volume.shape, 1)
    plain = client.post("/jobs", files=files).json()
    while plain["status"] in ("queued", "running"):
        time.sleep(0.05)
        plain = client.get(f"/jobs/{plain['id']}").json()
    assert plain["probs"] is None and client.get(f"/jobs/{plain['id']}/probs").status_code == 400


def _files_2d(rng, n_support=2):
    """A volume query (the ball on its middle slices) and 2D support pairs cut from a like volume."""
    volume, _ = ball_volume(rng, (20, 18, 30))
    v, m = ball_volume(rng, (20, 18, 30))
    files = [("query", ("q.nii.gz", nifti(volume)))]
    for z in (14, 16)[:n_support]:
        files += [("support_images", ("i.png", png(np.clip(v[..., z] / 4, 0, 255).astype(np.uint8)))),
                  ("support_masks", ("m.png", png(m[..., z])))]
    return files


def test_2d_support_positions_skip_far_slices(client, rng):
    files = _files_2d(rng)
    body = client.post("/segment", files=files, data={"output": "json", "support_positions": "[0.48, 0.55]",
                                                      "skip_margin": "0.1"}).json()
    info = body["volume"]
    # 0.48..0.55 with the margin: 0.38..0.65 of 30 slices (relative i / 29) -> slices 12..18 run
    assert info["skipped"] == list(range(0, 12)) + list(range(19, 30)), info
    assert info["support_positions"] == [0.48, 0.55] and info["tasks"] == 7
    mask = read_nifti(base64.b64decode(body["mask"]))
    assert not np.asarray(mask.dataobj)[..., info["skipped"]].any()
    plain = client.post("/segment", files=files, data={"output": "json"}).json()["volume"]
    assert plain["skipped"] == [] and plain.get("support_positions") is None and plain["tasks"] == 30


@pytest.mark.parametrize("value,status,code", [
    ("0.5, 0.6", 422, "invalid_request"),  # not JSON
    ("[]", 422, "invalid_request"),
    ("[0.5]", 422, "invalid_request"),  # one value for two pairs
    ("[0.5, 1.5]", 400, "invalid_input"),
    ('[0.5, "x"]', 400, "invalid_input"),
])
def test_bad_support_positions_name_the_field(client, rng, value, status, code):
    files = _files_2d(rng)
    for route in ("/segment", "/jobs"):
        response = client.post(route, files=files, data={"support_positions": value})
        assert response.status_code == status, (route, value, response.text)
        error = response.json()["error"]
        assert error["field"] == "support_positions" and error["code"] == code and error["message"]


def test_support_positions_need_a_volume_and_2d_support(client, rng):
    _, files3d = _files(rng)
    response = client.post("/segment", files=files3d, data={"support_positions": "[0.4, 0.6]"})
    assert response.status_code == 422 and "3D support volumes" in response.json()["error"]["message"]
    image = np.clip(rng.normal(100, 10, (20, 18)), 0, 255).astype(np.uint8)
    mask = np.zeros((20, 18), np.uint8)
    mask[5:10, 5:10] = 1
    files2d = [("query", ("q.png", png(image))), ("support_images", ("i.png", png(image))),
               ("support_masks", ("m.png", png(mask)))]
    response = client.post("/segment", files=files2d, data={"support_positions": "[0.4]"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "support_positions"
