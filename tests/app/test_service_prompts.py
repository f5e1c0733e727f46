"""Stored prompts: the routes, restarts, atomic writes, TTL, the size cap, and the Redis backend."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest
from testkit.inputs import disk_pair, png, read_png, support_files

from app import prompt_store as prompts_module
from app.errors import ApiError
from app.prompt_store import DiskPromptStore, PromptRecord, RedisPromptStore
from app.prompts import Prompts, dump_support, load_support
from model.segmenter import PreparedSupport


def _query_files(rng):
    query, _ = disk_pair(rng)
    return query, [("query", ("q.png", png(query)))]


def test_create_get_list_use_delete(client, rng):
    pairs = [disk_pair(rng, labels=(1, 2)) for _ in range(3)]
    files = []
    for image, mask in pairs:
        files += [("support_images", ("i.png", png(image))), ("support_masks", ("m.png", png(mask)))]
    response = client.post(
        "/prompts", files=files, data={"name": "Liver (CT) v2", "label_names": '{"1": "liver", "2": "spleen"}'}
    )
    assert response.status_code == 201, response.text
    info = response.json()
    assert len(info["id"]) == 32 and int(info["id"], 16) >= 0
    assert response.headers["location"] == f"/prompts/{info['id']}"
    assert info["labels"] == [1, 2] and info["support_size"] == 3 and info["network_size"] == 32
    assert info["label_names"] == {"1": "liver", "2": "spleen"} and info["name"] == "Liver (CT) v2"

    assert client.get(f"/prompts/{info['id']}").json() == info
    assert [p["id"] for p in client.get("/prompts").json()["prompts"]] == [info["id"]]
    assert "images" not in client.get(f"/prompts/{info['id']}").text  # metadata, never pixels

    query, qfiles = _query_files(rng)
    by_id = client.post(
        "/segment", files=qfiles, data={"prompt_id": info["id"]}, headers={"Accept": "application/json"}
    )
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["label_names"] == {"1": "liver", "2": "spleen"}
    inline = client.post("/segment", files=qfiles + files)
    by_id_png = client.post("/segment", files=qfiles, data={"prompt_id": info["id"]})
    np.testing.assert_array_equal(read_png(by_id_png.content), read_png(inline.content))

    assert client.delete(f"/prompts/{info['id']}").status_code == 204
    assert client.get(f"/prompts/{info['id']}").status_code == 404
    assert client.delete(f"/prompts/{info['id']}").status_code == 404
    gone = client.post("/segment", files=qfiles, data={"prompt_id": info["id"]})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "prompt_not_found"
    assert client.get("/prompts").json() == {"prompts": []}


def test_preparation_happens_once_at_creation(client, rng, monkeypatch):
    prompt_id = client.post("/prompts", files=support_files(rng, 2)).json()["id"]
    calls = []
    model = client.app.state.model
    monkeypatch.setattr(model.segmenter, "prepare_support", lambda *a, **k: calls.append(1))
    _, qfiles = _query_files(rng)
    for _ in range(3):
        assert client.post("/segment", files=qfiles, data={"prompt_id": prompt_id}).status_code == 200
    assert calls == []


def test_prompt_survives_a_restart(make_client, tmp_path, rng):
    first = make_client(data_dir=tmp_path / "store")
    prompt_id = first.post("/prompts", files=support_files(rng, 2), data={"name": "kept"}).json()["id"]
    _, qfiles = _query_files(rng)
    before = first.post("/segment", files=qfiles, data={"prompt_id": prompt_id})
    first.__exit__(None, None, None)  # stop the first server (lifespan shutdown)

    second = make_client(data_dir=tmp_path / "store")
    assert second.get(f"/prompts/{prompt_id}").json()["name"] == "kept"
    after = second.post("/segment", files=qfiles, data={"prompt_id": prompt_id})
    assert after.status_code == 200
    assert after.content == before.content
    assert second.delete(f"/prompts/{prompt_id}").status_code == 204
    assert second.post("/segment", files=qfiles, data={"prompt_id": prompt_id}).status_code == 404


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "..", "x" * 101, "bad\\name", "tab\tname", " "])
def test_bad_names_are_422(client, rng, name):
    response = client.post("/prompts", files=support_files(rng, 1), data={"name": name})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "name"


@pytest.mark.parametrize(
    "raw,status", [('{"7": "liver"}', 400), ("[1, 2]", 422), ("{not json", 422), ('{"1": "../x"}', 422)]
)
def test_bad_label_names(client, rng, raw, status):
    response = client.post("/prompts", files=support_files(rng, 1), data={"label_names": raw})
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"].startswith("label_names")


@pytest.mark.parametrize("prompt_id", ["..%2F..%2Fetc%2Fpasswd", "ABCDEF", "0" * 31, "g" * 32])
def test_unsafe_ids_are_404(client, prompt_id):
    assert client.get(f"/prompts/{prompt_id}").status_code == 404
    assert client.delete(f"/prompts/{prompt_id}").status_code == 404


def test_prompt_creation_errors(make_client, rng):
    client = make_client(max_prompt_support=2)
    assert client.post("/prompts", files=support_files(rng, 3)).status_code == 422
    assert client.post("/prompts", files=support_files(rng, 2)[:-1]).status_code == 422
    image, mask = disk_pair(rng)
    empty = [("support_images", ("i.png", png(image))), ("support_masks", ("m.png", png(np.zeros_like(mask))))]
    assert client.post("/prompts", files=empty).status_code == 400
    bogus = [("support_images", ("i.png", b"nope")), ("support_masks", ("m.png", png(mask)))]
    assert client.post("/prompts", files=bogus).status_code == 415


def test_prompt_larger_than_the_store_is_413(make_client, rng):
    client = make_client(prompt_store_mb=0.001)
    response = client.post("/prompts", files=support_files(rng, 2))
    assert response.status_code == 413 and response.json()["error"]["code"] == "prompt_too_large"


# -- the stores behind one interface -----------------------------------------------------------------------


def _support(rng, n=2) -> PreparedSupport:
    images = rng.random((n, 32, 32)).astype(np.float32)
    masks = (rng.random((1, n, 32, 32)) > 0.5).astype(np.float32)
    return PreparedSupport.from_arrays({"images": images, "masks": masks, "labels": np.array([1])})


@pytest.fixture(params=["disk", "redis"])
def store(request, tmp_path):
    if request.param == "disk":
        yield DiskPromptStore(tmp_path, max_bytes=10**9)
    else:
        server = request.getfixturevalue("redis_server")
        redis_store = RedisPromptStore(server.url, f"test-{uuid.uuid4().hex}", max_bytes=10**9)
        yield redis_store
        redis_store.close()


def test_store_round_trip(store, rng):
    prompts = Prompts(store, ttl_s=0)
    support = _support(rng)
    record = prompts.create(support, network_size=32, name="x")
    assert record.expires_at is None
    loaded_record, loaded = prompts.load(record.id, network_size=32)
    assert loaded_record == record
    np.testing.assert_array_equal(loaded.images.numpy(), support.images.numpy())
    np.testing.assert_array_equal(loaded.masks.numpy(), support.masks.numpy())
    assert loaded.labels == (1,)
    assert prompts.load(record.id, network_size=32)[1] is loaded  # one shared object: micro-batching groups by it
    with pytest.raises(ApiError) as stale:
        prompts.load(record.id, network_size=64)
    assert stale.value.status_code == 409
    assert [r.id for r in prompts.list()] == [record.id]
    prompts.delete(record.id)
    with pytest.raises(ApiError) as gone:
        prompts.load(record.id, network_size=32)
    assert gone.value.status_code == 404
    assert store.get_record("../" * 5) is None and store.delete("../x") is False


def test_store_ttl(store, rng, monkeypatch):
    prompts = Prompts(store, ttl_s=2)
    record = prompts.create(_support(rng), network_size=32)
    assert record.expires_at == pytest.approx(record.created_at + 2)
    assert prompts.get(record.id)
    if isinstance(store, DiskPromptStore):
        monkeypatch.setattr(prompts_module.time, "time", lambda: record.created_at + 3)
        assert store.sweep() == 1
        assert not list(store.dir.iterdir())
    else:
        time.sleep(2.2)  # Redis expires keys itself
        assert store.sweep() == 1
    with pytest.raises(ApiError):
        prompts.get(record.id)
    assert prompts.list() == []


def test_store_size_cap_evicts_the_oldest(store, rng):
    size = len(dump_support(_support(rng))) + 400
    store.max_bytes = int(2.5 * size)
    prompts = Prompts(store, ttl_s=0)
    ids = []
    for _ in range(4):
        ids.append(prompts.create(_support(rng), network_size=32).id)
        time.sleep(0.01)
    assert [r.id for r in prompts.list()] == ids[-2:]
    assert store.get_blob(ids[0]) is None


def test_disk_writes_are_atomic(tmp_path, rng, monkeypatch):
    store = DiskPromptStore(tmp_path, max_bytes=10**9)
    prompts = Prompts(store, ttl_s=0)
    real_replace = os.replace

    def crash_on_metadata(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("disk full")  # the arrays landed, the metadata did not: a crash in between
        real_replace(src, dst)

    monkeypatch.setattr(prompts_module.os, "replace", crash_on_metadata)
    with pytest.raises(OSError):
        prompts.create(_support(rng), network_size=32)
    monkeypatch.setattr(prompts_module.os, "replace", real_replace)
    assert prompts.list() == []  # nothing half-written is visible
    assert not list(store.dir.glob("*.tmp")) and not list(store.dir.glob(".*.tmp"))
    orphans = list(store.dir.glob("*.npz"))
    assert len(orphans) == 1
    # leftovers of a crash are removed at the next start once they are old enough not to be a write in progress
    old = time.time() - 2 * prompts_module.ORPHAN_AGE_S
    os.utime(orphans[0], (old, old))
    (store.dir / ".x.json.abc.tmp").write_bytes(b"{")
    os.utime(store.dir / ".x.json.abc.tmp", (old, old))
    DiskPromptStore(tmp_path, max_bytes=10**9)
    assert list(store.dir.iterdir()) == []


def test_disk_store_ignores_damaged_metadata(tmp_path, rng):
    store = DiskPromptStore(tmp_path, max_bytes=10**9)
    record = Prompts(store, ttl_s=0).create(_support(rng), network_size=32)
    (store.dir / f"{'a' * 32}.json").write_text("{broken")
    assert [r.id for r in store.list()] == [record.id]


def test_dump_load_support_round_trip(rng):
    support = _support(rng, 3)
    again = load_support(dump_support(support))
    assert again.labels == support.labels and again.size == 3
    assert PromptRecord.from_json(PromptRecord("a" * 32, [1], 3, 32, 1.0).to_json()).support_size == 3


def test_redis_backend_through_two_apps(make_client, redis_server, tmp_path, rng):
    prefix = f"test-{uuid.uuid4().hex}"
    first = make_client(redis_url=redis_server.url, redis_prefix=prefix, data_dir=tmp_path / "a")
    second = make_client(redis_url=redis_server.url, redis_prefix=prefix, data_dir=tmp_path / "b")
    assert first.get("/info").json()["prompt_store"] == "redis"
    prompt_id = first.post("/prompts", files=support_files(rng, 2)).json()["id"]
    _, qfiles = _query_files(rng)
    assert second.get(f"/prompts/{prompt_id}").status_code == 200
    a = first.post("/segment", files=qfiles, data={"prompt_id": prompt_id})
    b = second.post("/segment", files=qfiles, data={"prompt_id": prompt_id})
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert second.delete(f"/prompts/{prompt_id}").status_code == 204
    # the first app cached the arrays, but checks the metadata on every use
    assert first.post("/segment", files=qfiles, data={"prompt_id": prompt_id}).status_code == 404


def test_redis_unavailable_is_503(make_client, rng):
    from testkit.processes import free_port

    client = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "store_unavailable"
    response = client.post("/prompts", files=support_files(rng, 1))
    assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable"
