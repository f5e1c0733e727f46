"""Large prompts and support selection in the service: a stored prompt over the old cap of 64 items, select and
support_size on /segment (JSON, headers, jobs), the defaults, and the 4xx that name the field."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from testkit.inputs import ball_volume, disk_pair, nifti, png, support_files


def _store(client, rng, n: int) -> dict:
    response = client.post("/prompts", files=support_files(rng, n, size=(24, 28)))
    assert response.status_code == 201, response.text
    return response.json()


def _query(rng) -> list[tuple]:
    query, _ = disk_pair(rng, size=(24, 28))
    return [("query", ("q.png", png(query)))]


@pytest.fixture
def big_prompt(client, rng) -> dict:
    return _store(client, rng, 70)  # over the 64 a prompt could hold before issue 16


def test_a_prompt_over_the_old_cap_is_stored_and_used_with_support_size(client, rng, big_prompt):
    assert big_prompt["support_size"] == 70
    for select in ("similar", "random"):
        response = client.post("/segment", files=_query(rng), data={"prompt_id": big_prompt["id"], "select": select,
                                                                    "support_size": "5", "output": "json"})
        assert response.status_code == 200, response.text
        assert response.json()["selection"] == {"select": select, "support_size": 5, "pool": 70}
    response = client.post("/segment", files=_query(rng), data={"prompt_id": big_prompt["id"], "support_size": "3"})
    assert response.status_code == 200 and response.headers["x-select"] == "similar"
    assert response.headers["x-support-size"] == "3"


def test_the_defaults(make_client, rng):
    client = make_client(max_support=6)
    prompt = _store(client, rng, 10)
    body = client.post("/segment", files=_query(rng), data={"prompt_id": prompt["id"], "output": "json"}).json()
    assert body["selection"] == {"select": "similar", "support_size": 6, "pool": 10}  # larger than the model takes
    body = client.post("/segment", files=_query(rng) + support_files(rng, 4, size=(24, 28)),
                       data={"output": "json"}).json()
    assert body["selection"] == {"select": "all", "support_size": 4, "pool": 4}  # fits: all of it
    client = make_client()  # the model takes 64: 16 of a larger prompt (docs/examples-guide.md)
    prompt = _store(client, rng, 65)
    body = client.post("/segment", files=_query(rng), data={"prompt_id": prompt["id"], "output": "json"}).json()
    assert body["selection"] == {"select": "similar", "support_size": 16, "pool": 65}


def test_random_is_reproducible(client, rng, big_prompt):
    query = _query(rng)
    data = {"prompt_id": big_prompt["id"], "select": "random", "support_size": "4", "output": "probs"}
    first, again = (client.post("/segment", files=query, data=data).json() for _ in range(2))
    assert first["probs"] == again["probs"]


def test_a_job_uses_the_selection_and_reports_it_as_segment_does(client, rng, big_prompt):
    query = _query(rng)
    data = {"prompt_id": big_prompt["id"], "select": "similar", "support_size": "2"}
    response = client.post("/jobs", files=query, data=data)
    assert response.status_code == 202, response.text
    selection = {"select": "similar", "support_size": 2, "pool": 70}
    assert response.json()["selection"] == selection  # chosen before the 202
    deadline = time.monotonic() + 30
    while (job := client.get(f"/jobs/{response.json()['id']}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    assert job["status"] == "done" and job["selection"] == selection
    result = client.get(job["result"])
    assert result.headers["x-select"] == "similar" and result.headers["x-support-size"] == "2"
    sync = client.post("/segment", files=query, data=data)
    assert result.content == sync.content  # the same items as /segment picks
    assert (sync.headers["x-select"], sync.headers["x-support-size"]) == ("similar", "2")
    volume_job = client.post("/jobs", files=[("query", ("v.nii.gz", nifti(ball_volume(rng, (10, 12, 6))[0])))],
                             data={"prompt_id": big_prompt["id"], "support_size": "3"})
    assert volume_job.json()["selection"] == {"select": "similar", "support_size": 3, "pool": 70}


@pytest.mark.parametrize("data,status,field", [
    ({"support_size": "71"}, 422, "support_size"),  # more than the prompt holds
    ({"support_size": "0"}, 422, "support_size"),
    ({"support_size": "65"}, 422, "support_size"),  # more than the model takes at once
    ({"select": "nearest"}, 422, "select"),
    ({"select": "all"}, 422, "select"),  # 70 items at once: more than the model takes
    ({"select": "all", "support_size": "5"}, 422, "select"),
])
def test_bad_selections_are_4xx_naming_the_field(client, rng, big_prompt, data, status, field):
    response = client.post("/segment", files=_query(rng), data={"prompt_id": big_prompt["id"], **data})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error


def test_repeated_select_is_refused(client, rng, big_prompt):
    response = client.post("/segment", files=_query(rng),
                           data={"prompt_id": big_prompt["id"], "select": ["similar", "random"]})
    assert response.status_code == 422 and response.json()["error"]["field"] == "select"


def test_3d_support_refuses_select(client, rng):
    volume, _ = ball_volume(rng, (12, 12, 8))
    support, mask = ball_volume(rng, (12, 12, 8))
    files = [("query", ("q.nii.gz", nifti(volume))), ("support_images", ("s.nii.gz", nifti(support))),
             ("support_masks", ("m.nii.gz", nifti(mask.astype(np.uint8))))]
    response = client.post("/segment", files=files, data={"select": "similar", "support_size": "1"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "select"


def test_a_2d_prompt_over_a_volume_selects_once(client, rng, big_prompt):
    volume, _ = ball_volume(rng, (24, 28, 6))
    response = client.post("/segment", files=[("query", ("q.nii.gz", nifti(volume)))],
                           data={"prompt_id": big_prompt["id"], "support_size": "4", "output": "json"})
    assert response.status_code == 200, response.text
    assert response.json()["selection"] == {"select": "similar", "support_size": 4, "pool": 70}


def test_prompt_memory_is_priced_before_preparing(make_client, rng):
    # 70 items x (1 label + image) x 32 x 32 float32 x 3 copies = 1.7 MB, over a 1 MB budget
    client = make_client(sync_max_mb=1)
    response = client.post("/prompts", files=support_files(rng, 70, size=(8, 8)))
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert client.post("/prompts", files=support_files(rng, 10, size=(8, 8))).status_code == 201


@pytest.mark.parametrize("backend", ["disk", "redis"])
def test_a_512_item_prompt_in_both_stores(make_client, request, rng, tmp_path, backend):
    settings = {"data_dir": tmp_path / "data"}
    if backend == "redis":
        settings.update(redis_url=request.getfixturevalue("redis_server").url, redis_prefix=f"test-{uuid.uuid4().hex}")
    client = make_client(**settings)
    prompt = _store(client, rng, 512)
    assert prompt["support_size"] == 512
    # 512 items x (image + 1 label) x 32 x 32 float32, plus the npz framing
    assert 512 * 2 * 32 * 32 * 4 < prompt["bytes"] < 512 * 2 * 32 * 32 * 4 * 1.1
    too_many = client.post("/prompts", files=support_files(rng, 513, size=(8, 8)))
    assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "too_many_support_items"
    body = client.post("/segment", files=_query(rng), data={"prompt_id": prompt["id"], "support_size": "16",
                                                            "output": "json"}).json()
    assert body["selection"] == {"select": "similar", "support_size": 16, "pool": 512}
