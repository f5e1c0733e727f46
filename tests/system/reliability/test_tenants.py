"""Keys that separate (issue 13, finding 6): every route that names a prompt or a job, walked for another
tenant's access. A new route that takes an id fails the test until it is listed here with its check."""

from __future__ import annotations

import numpy as np
import pytest
from test_security import app_routes
from testkit.inputs import disk_pair, png

ALICE, BOB, ADMIN = "alice-key-0123", "bob-key-0123", "admin-key-0123"


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def tenants(make_client):
    return make_client(api_keys=[f"alice:{ALICE}", f"bob:{BOB}"], admin_key=ADMIN)


def _pair():
    image, mask = disk_pair(np.random.default_rng(0))
    return png(image), png(mask)


def _support_files():
    image, mask = _pair()
    return [("support_images", ("i", image)), ("support_masks", ("m", mask))]


def _alice_owns(client) -> tuple[str, str]:
    image, _ = _pair()
    prompt = client.post("/prompts", files=_support_files(), data={"name": "Jane Doe MRN 12345 liver"},
                         headers=auth(ALICE))
    assert prompt.status_code == 201, prompt.text
    job = client.post("/jobs", files=[("query", ("q", image)), *_support_files()], headers=auth(ALICE))
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    for _ in range(600):
        if client.get(f"/jobs/{job_id}", headers=auth(ALICE)).json()["status"] == "done":
            break
    return prompt.json()["id"], job_id


# (method, path template) -> how another tenant's request is made and what it must get
ID_ROUTES = {
    ("GET", "/prompts/{prompt_id}"), ("DELETE", "/prompts/{prompt_id}"),
    ("GET", "/jobs/{job_id}"), ("GET", "/jobs/{job_id}/result"), ("GET", "/jobs/{job_id}/probs"),
    ("GET", "/jobs/{job_id}/uncertainty"), ("DELETE", "/jobs/{job_id}"),
}
FORM_ROUTES = {("POST", "/segment"), ("POST", "/jobs")}  # prompt_id in the form
LIST_ROUTES = {("GET", "/prompts")}
NO_TENANT_DATA = {
    ("GET", "/info"), ("GET", "/metrics"), ("POST", "/prompts"), ("POST", "/preview"), ("GET", "/healthz"),
    ("GET", "/readyz"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"),
    ("GET", "/docs/assets/{path:path}"), ("GET", "/"), ("GET", "/static/{path:path}"),
}


def test_every_route_keeps_tenants_apart(tenants):
    routes = set(app_routes(tenants.app))
    unknown = routes - ID_ROUTES - FORM_ROUTES - LIST_ROUTES - NO_TENANT_DATA
    assert not unknown, f"routes without a tenant check in this test: {sorted(unknown)}"
    prompt_id, job_id = _alice_owns(tenants)
    ids = {"prompt_id": prompt_id, "job_id": job_id}
    image, _ = _pair()

    for method, template in sorted(ID_ROUTES & routes):
        path = template.format(**ids)
        response = tenants.request(method, path, headers=auth(BOB))
        assert response.status_code == 404, (method, template, response.status_code)
        assert "Jane" not in response.text  # the id is the one bob sent; nothing of alice's prompt
    for method, template in sorted(FORM_ROUTES & routes):
        response = tenants.request(method, template, files=[("query", ("q", image))], data={"prompt_id": prompt_id},
                                   headers=auth(BOB))
        assert response.status_code == 404 and response.json()["error"]["code"] == "prompt_not_found", template
    listed = tenants.get("/prompts", headers=auth(BOB)).json()["prompts"]
    assert listed == []

    # nothing of alice's was touched by bob's DELETEs; she still reads and uses both
    assert tenants.get(f"/prompts/{prompt_id}", headers=auth(ALICE)).status_code == 200
    assert tenants.get(f"/jobs/{job_id}/result", headers=auth(ALICE)).status_code == 200
    used = tenants.post("/segment", files=[("query", ("q", image))], data={"prompt_id": prompt_id}, headers=auth(ALICE))
    assert used.status_code == 200
    assert [p["id"] for p in tenants.get("/prompts", headers=auth(ALICE)).json()["prompts"]] == [prompt_id]

    # the admin key lists, reads and deletes every tenant's
    assert [p["id"] for p in tenants.get("/prompts", headers=auth(ADMIN)).json()["prompts"]] == [prompt_id]
    assert tenants.get(f"/jobs/{job_id}", headers=auth(ADMIN)).status_code == 200
    assert tenants.delete(f"/prompts/{prompt_id}", headers=auth(ADMIN)).status_code == 204
    assert tenants.get(f"/prompts/{prompt_id}", headers=auth(ALICE)).status_code == 404


def test_a_bare_key_is_its_own_tenant(make_client):
    client = make_client(api_keys=["key-one", "key-two"])
    created = client.post("/prompts", files=_support_files(), headers=auth("key-one"))
    assert created.status_code == 201
    assert client.get("/prompts", headers=auth("key-two")).json()["prompts"] == []
    assert client.get(f"/prompts/{created.json()['id']}", headers=auth("key-two")).status_code == 404


def test_tenants_survive_a_restart_of_the_job_store(make_client, tmp_path):
    from app.jobs import JobManager
    from app.metrics import Metrics

    client = make_client(api_keys=[f"alice:{ALICE}", f"bob:{BOB}"], data_dir=tmp_path / "d")
    _, job_id = _alice_owns(client)
    manager = JobManager(tmp_path / "d", 1, 1, 3600, Metrics())
    assert manager.get(job_id, "alice").owner == "alice"
    with pytest.raises(Exception, match="no job"):
        manager.get(job_id, "bob")
