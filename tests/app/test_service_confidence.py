"""How sure an answer is, on the wire: confidence, low_confidence, the mismatch check and uncertainty maps in
/segment (JSON and headers) and jobs, calibrated and uncalibrated (issue 16 items 1-3)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import time

import nibabel as nib
import numpy as np
from testkit.inputs import ball_volume, disk_pair, nifti, png, read_png, support_files

from data.io import read_series
from model import confidence
from model.inputs import read_support

QUALITY = {"confidence", "low_confidence", "low_confidence_labels", "mismatch", "calibrated", "warnings"}


def _files(rng, query, n=3, labels=(1, 2)):
    return [("query", ("q.png", png(query)))] + support_files(rng, n, labels=labels)


def test_json_answer_carries_confidence_per_label_and_uncalibrated_flags(client, rng):
    query, _ = disk_pair(rng, labels=(1, 2))
    body = client.post("/segment", files=_files(rng, query), data={"output": "json"}).json()
    assert QUALITY <= set(body) and "uncertainty" not in body
    assert set(body["confidence"]) == {"1", "2"} and all(0.0 <= c <= 1.0 for c in body["confidence"].values())
    # the tiny test weights have no sidecar: said so, the fallback threshold used, the mismatch not judged
    assert body["calibrated"] is False
    assert body["mismatch"]["flagged"] is None and body["mismatch"]["threshold"] is None
    assert body["mismatch"]["score"] >= 0
    low = [int(k) for k, c in body["confidence"].items() if c < confidence.FALLBACK_LOW_CONFIDENCE]
    assert body["low_confidence_labels"] == low and body["low_confidence"] is bool(low)


def test_binary_answer_carries_the_same_in_headers(client, rng):
    query, _ = disk_pair(rng, labels=(1, 2))
    files = _files(rng, query)
    r = client.post("/segment", files=files)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    as_json = client.post("/segment", files=files, data={"output": "json"}).json()
    got = dict(part.split("=") for part in r.headers["x-confidence"].split(","))
    assert {k: round(float(v), 4) for k, v in got.items()} == as_json["confidence"]
    assert r.headers["x-low-confidence"] == str(as_json["low_confidence"]).lower()
    assert r.headers["x-calibrated"] == "false" and r.headers["x-mismatch"] == "unknown"
    assert float(r.headers["x-mismatch-score"]) == as_json["mismatch"]["score"]
    assert json.loads(r.headers["x-warnings"]) == as_json["warnings"]


def test_uncertainty_maps_have_the_query_shape_and_answer_json(client, rng):
    query, _ = disk_pair(rng, size=(40, 30), labels=(1, 2))
    for ensemble in (1, 3):
        r = client.post("/segment", files=_files(rng, query, n=4), data={"uncertainty": "true", "ensemble": ensemble})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        maps = [read_png(base64.b64decode(m)) for m in r.json()["uncertainty"]]
        assert len(maps) == 2 and all(m.shape == (40, 30) and m.dtype == np.uint8 for m in maps)


def test_identical_support_items_give_a_zero_uncertainty_map_with_an_ensemble(client, rng):
    query, _ = disk_pair(rng)
    image, mask = disk_pair(rng)
    files = [("query", ("q.png", png(query)))]
    files += [("support_images", ("i.png", png(image))), ("support_masks", ("m.png", png(mask)))] * 4
    body = client.post("/segment", files=files, data={"uncertainty": "true", "ensemble": 4}).json()
    assert read_png(base64.b64decode(body["uncertainty"][0])).max() == 0  # every member the same answer


def test_uncertainty_is_validated(client, rng):
    query, _ = disk_pair(rng)
    r = client.post("/segment", files=_files(rng, query, labels=(1,)), data={"uncertainty": "maybe"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "uncertainty"


def test_calibrated_weights_judge_the_mismatch(make_client, tiny_weights, tmp_path, rng):
    weights = tmp_path / "calibrated.safetensors"
    weights.write_bytes(tiny_weights.read_bytes())
    confidence.sidecar_path(weights).write_text(json.dumps({
        "weights_sha256": confidence.file_sha256(str(weights)), "low_confidence": 0.99,
        "mismatch": {"scale": [0.05] * 24, "thresholds": {"1": 3.0}}}))
    client = make_client(weights=weights)
    support = support_files(rng, 4, labels=(1,))
    like, _ = disk_pair(rng)
    yy, xx = np.mgrid[:48, :56]
    stripes = (((xx // 2) % 2) * 255).astype(np.uint8)
    good = client.post("/segment", files=[("query", ("q.png", png(like)))] + support, data={"output": "json"}).json()
    bad = client.post("/segment", files=[("query", ("q.png", png(stripes)))] + support, data={"output": "json"}).json()
    assert good["calibrated"] is True and good["mismatch"]["threshold"] == 3.0
    assert good["mismatch"]["flagged"] is False and confidence.MISMATCH_WARNING not in good["warnings"]
    assert bad["mismatch"]["flagged"] is True and confidence.MISMATCH_WARNING in bad["warnings"]
    assert good["low_confidence"] is True  # below 0.99: the calibrated threshold is the one used


def _wait(client, job_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise TimeoutError(job)


def test_volume_answers_and_jobs_carry_confidence_and_a_float_uncertainty_nifti(client, rng):
    volume, _ = ball_volume(rng, (20, 18, 8))
    files = [("query", ("q.nii.gz", nifti(volume)))]
    for _ in range(2):
        v, m = ball_volume(rng, (20, 20, 8))
        files += [("support_images", ("v.nii.gz", nifti(v))), ("support_masks", ("m.nii.gz", nifti(m)))]
    body = client.post("/segment", files=files, data={"uncertainty": "true"}).json()
    assert QUALITY <= set(body) and set(body["confidence"]) == {"1"}
    image = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(body["uncertainty"][0])))
    maps = np.asarray(image.dataobj)
    assert maps.shape == (20, 18, 8, 1) and maps.dtype == np.float32 and 0 <= maps.min() and maps.max() <= 1
    job = client.post("/jobs", files=files, data={"uncertainty": "true"}).json()
    job = _wait(client, job["id"])
    assert job["status"] == "done" and job["confidence"] == body["confidence"]
    assert job["calibrated"] is False and job["warnings"] == body["warnings"]
    r = client.get(job["uncertainty"])
    assert r.status_code == 200 and r.headers["x-labels"] == "1"
    assert np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj).shape == (20, 18, 8, 1)
    result = client.get(job["result"])
    assert result.headers["x-confidence"].startswith("1=") and result.headers["x-calibrated"] == "false"


def _nifti_maps(b64: str) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(b64))).dataobj)  # (H, W, D, K)


def test_an_ensemble_volume_uncertainty_is_twice_the_members_std_not_the_entropy(client, rng):
    volume, _ = ball_volume(rng, (20, 18, 8))
    pairs = [ball_volume(rng, (20, 20, 8)) for _ in range(3)]
    files = [("query", ("q.nii.gz", nifti(volume)))]
    for v, m in pairs:
        files += [("support_images", ("v.nii.gz", nifti(v))), ("support_masks", ("m.nii.gz", nifti(m)))]
    body = client.post("/segment", files=files, data={"uncertainty": "true", "ensemble": 3, "output": "probs"}).json()
    maps, probs = _nifti_maps(body["uncertainty"][0]), _nifti_maps(body["probs"][0])
    # the same request through the model door: the members' std the service's map must be twice of
    segmenter = client.app.state.model.segmenter
    support = read_support([nifti(v) for v, _ in pairs], [nifti(m) for _, m in pairs], volumes=True)
    expected = segmenter.predict_volume_result(read_series([nifti(volume)]).array,
                                               support=support.prepare(segmenter, 2), ensemble=3, probs=True,
                                               spread=True)
    assert maps.shape == probs.shape == (20, 18, 8, 1) and expected.spread.max() > 0
    np.testing.assert_allclose(maps, np.moveaxis(np.clip(2 * expected.spread, 0, 1), 0, -1), atol=1e-6)
    entropy = np.moveaxis(confidence.uncertainty_map(np.moveaxis(probs, -1, 0)), 0, -1)
    assert np.abs(maps - entropy).max() > 0.1  # not the one-member map
    job = _wait(client, client.post("/jobs", files=files, data={"uncertainty": "true", "ensemble": 3}).json()["id"])
    assert job["status"] == "done" and job["confidence"] == body["confidence"]  # the agreement factor too
    r = client.get(job["uncertainty"])
    np.testing.assert_allclose(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj), maps,
                               atol=1e-6)


def test_members_that_agree_give_a_zero_volume_uncertainty(client, rng):
    """Support volumes whose slices are all alike: every subset is the same, so 2 x std is 0 (the entropy of
    the tiny model's probabilities is not)."""
    volume, _ = ball_volume(rng, (20, 18, 8))
    yy, xx = np.mgrid[:20, :20]
    mask = np.repeat(((yy - 10) ** 2 + (xx - 10) ** 2 <= 25)[..., None], 8, axis=2).astype(np.uint8)
    image = 100 + 300 * mask.astype(np.float32)
    files = [("query", ("q.nii.gz", nifti(volume)))]
    files += [("support_images", ("v.nii.gz", nifti(image))), ("support_masks", ("m.nii.gz", nifti(mask)))] * 2
    for ensemble, agree in ((4, True), (1, False)):
        body = client.post("/segment", files=files, data={"uncertainty": "true", "ensemble": ensemble}).json()
        assert bool(_nifti_maps(body["uncertainty"][0]).max() < 2e-3) is agree, ensemble


def test_a_2d_job_carries_confidence_and_refuses_uncertainty(client, rng):
    query, _ = disk_pair(rng)
    files = _files(rng, query, labels=(1,))
    r = client.post("/jobs", files=files, data={"uncertainty": "true"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "uncertainty"
    job = _wait(client, client.post("/jobs", files=files).json()["id"])
    assert job["status"] == "done" and set(job["confidence"]) == {"1"} and job["uncertainty"] is None
    assert io.BytesIO(client.get(job["result"]).content).getbuffer().nbytes > 0
