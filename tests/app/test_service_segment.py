"""POST /segment through the in-process app: formats, geometry, JSON, and every user mistake as a 4xx."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from testkit.inputs import AFFINE, ball_volume, disk_pair, nifti, pil_bytes, png, read_nifti, read_png, support_files

from data.io import save_image
from model.segmenter import Segmenter
from model.weights import load_model


def _query(array: np.ndarray, name="query.png", data: bytes | None = None):
    return [("query", (name, data if data is not None else png(array), "application/octet-stream"))]


def _assert_error(response, status: int, code: str | None = None, field: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if field is not None:
        assert body["error"]["field"] == field, body
    return body["error"]


def test_png_mask_equals_a_direct_segmenter_call(client, tiny_weights, rng):
    query, _ = disk_pair(rng, labels=(1, 2))
    pairs = [disk_pair(rng, labels=(1, 2)) for _ in range(3)]
    files = _query(query)
    for image, mask in pairs:
        files += [("support_images", ("i.png", png(image))), ("support_masks", ("m.png", png(mask)))]
    response = client.post("/segment", files=files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-labels"] == "1,2"
    got = read_png(response.content)
    expected = Segmenter(load_model(tiny_weights)).predict(query, [p[0] for p in pairs], [p[1] for p in pairs])
    assert got.shape == query.shape
    np.testing.assert_array_equal(got, expected)
    assert {"decode", "model", "encode"} <= {t.split(";")[0] for t in response.headers["server-timing"].split(", ")}


@pytest.mark.parametrize("how", ["accept", "output"])
def test_json_response(client, rng, how):
    query, _ = disk_pair(rng, size=(40, 30))
    kwargs = {"headers": {"Accept": "application/json"}} if how == "accept" else {"data": {"output": "json"}}
    response = client.post("/segment", files=_query(query) + support_files(rng, 2, labels=(3,)), **kwargs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"] == [3] and body["shape"] == [40, 30] and body["media_type"] == "image/png"
    assert set(body["timings"]) == {"decode", "model", "encode"}
    assert all(v >= 0 for v in body["timings"].values())
    mask = read_png(base64.b64decode(body["mask"]))
    assert mask.shape == (40, 30) and set(np.unique(mask)) <= {0, 3}
    assert "probs" not in body


def test_probs_output(client, rng):
    query, _ = disk_pair(rng)
    response = client.post(
        "/segment",
        files=_query(query) + support_files(rng, 2, labels=(1, 2)),
        data={"output": "probs", "threshold": "0.3"},
    )
    assert response.status_code == 200, response.text
    probs = [read_png(base64.b64decode(p)) for p in response.json()["probs"]]
    assert len(probs) == 2 and all(p.shape == query.shape and p.dtype == np.uint8 for p in probs)


@pytest.mark.parametrize("fmt,media", [("JPEG", "image/png"), ("BMP", "image/png"), ("TIFF", "image/tiff")])
def test_pillow_formats(client, rng, fmt, media):
    query, _ = disk_pair(rng)
    rgb = np.repeat(query[..., None], 3, axis=2) if fmt == "JPEG" else query
    response = client.post("/segment", files=_query(None, data=pil_bytes(rgb, fmt)) + support_files(rng, 2))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media
    assert read_png(response.content).shape == query.shape


def test_dicom_query(client, rng, tmp_path):
    query, _ = disk_pair(rng)
    dicom = save_image(query.astype(np.uint16) * 40, tmp_path / "q.dcm").read_bytes()
    response = client.post("/segment", files=_query(None, data=dicom) + support_files(rng, 2))
    assert response.status_code == 200, response.text
    assert read_png(response.content).shape == query.shape


def test_nifti_query_keeps_affine_and_shape(client, rng):
    volume, _ = ball_volume(rng, (22, 18, 9))
    supports = [ball_volume(rng, (20, 20, 12)) for _ in range(2)]
    query_bytes = nifti(volume)
    files = [("query", ("q.nii.gz", query_bytes))]
    for v, m in supports:
        files += [("support_images", ("v.nii.gz", nifti(v))), ("support_masks", ("m.nii", nifti(m, gz=False)))]
    response = client.post("/segment", files=files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"].endswith('.nii.gz"')
    out, sent = read_nifti(response.content), read_nifti(query_bytes)
    assert out.shape == volume.shape
    np.testing.assert_array_equal(out.affine, sent.affine)  # identical, bit for bit
    np.testing.assert_allclose(sent.affine, AFFINE, atol=1e-6)
    for key in ("pixdim", "qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "xyzt_units"):
        np.testing.assert_array_equal(out.header[key], sent.header[key])
    mask = np.asarray(out.dataobj)
    assert set(np.unique(mask)) <= {0, 1}


def test_nifti_query_with_2d_support_and_axis(client, rng):
    volume, _ = ball_volume(rng, (16, 14, 6))
    query_bytes = nifti(volume)
    response = client.post(
        "/segment", files=[("query", ("q.nii.gz", query_bytes))] + support_files(rng, 2), data={"axis": "0"}
    )
    assert response.status_code == 200, response.text
    out = read_nifti(response.content)
    assert out.shape == volume.shape
    np.testing.assert_array_equal(out.affine, read_nifti(query_bytes).affine)


def test_model_runs_off_the_event_loop(client, rng, monkeypatch):
    import threading

    model = client.app.state.model
    threads = []
    original = model.segmenter.predict_many

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.segmenter, "predict_many", spy)
    query, _ = disk_pair(rng)
    assert client.post("/segment", files=_query(query) + support_files(rng, 2)).status_code == 200
    assert threads and all(name.startswith("icseg-model") for name in threads)


# -- user mistakes: a 4xx with the error JSON, never a 500 -----------------------------------------------


def test_missing_query_is_422(client, rng):
    _assert_error(client.post("/segment", files=support_files(rng, 1)), 422, "invalid_request", "query")


def test_non_multipart_body_is_422(client):
    _assert_error(client.post("/segment", json={"query": "x"}), 422, "invalid_request", "query")


def test_no_support_is_422(client, rng):
    query, _ = disk_pair(rng)
    _assert_error(client.post("/segment", files=_query(query)), 422, "missing_support", "support_images")


def test_support_count_mismatch_is_422(client, rng):
    query, _ = disk_pair(rng)
    files = _query(query) + support_files(rng, 2)[:-1]
    _assert_error(client.post("/segment", files=files), 422, "support_count_mismatch", "support_masks")


def test_too_many_support_items_is_422(make_client, rng):
    client = make_client(max_prompt_support=2)
    query, _ = disk_pair(rng)
    error = _assert_error(
        client.post("/segment", files=_query(query) + support_files(rng, 3)),
        422,
        "too_many_support_items",
        "support_images",
    )
    assert "2" in error["message"]


def test_prompt_id_and_files_is_400(client, rng):
    query, _ = disk_pair(rng)
    response = client.post("/segment", files=_query(query) + support_files(rng, 1), data={"prompt_id": "0" * 32})
    _assert_error(response, 400, "conflicting_fields", "prompt_id")


@pytest.mark.parametrize(
    "data,field",
    [
        ({"threshold": "1.5"}, "threshold"),
        ({"ensemble": "0"}, "ensemble"),
        ({"axis": "3"}, "axis"),
        ({"output": "gif"}, "output"),
        ({"threshold": "abc"}, "threshold"),
    ],
)
def test_bad_options_are_422(client, rng, data, field):
    query, _ = disk_pair(rng)
    _assert_error(
        client.post("/segment", files=_query(query) + support_files(rng, 1), data=data), 422, "invalid_request", field
    )


def test_unknown_format_is_415(client, rng):
    files = _query(None, name="notes.txt", data=b"plain text, not an image") + support_files(rng, 1)
    _assert_error(client.post("/segment", files=files), 415, "unsupported_format", "query")


def test_unknown_support_format_is_415(client, rng):
    query, _ = disk_pair(rng)
    files = _query(query) + support_files(rng, 1)
    files[1] = ("support_images", ("x.bin", b"\x00\x01garbage" * 10))
    _assert_error(client.post("/segment", files=files), 415, "unsupported_format", "support_images[0]")


def test_too_many_pixels_is_413(make_client, rng):
    client = make_client(max_pixels=1000)
    query, _ = disk_pair(rng)
    _assert_error(client.post("/segment", files=_query(query) + support_files(rng, 1)), 413, "too_large", "query")


def test_too_many_voxels_is_413(make_client, rng):
    client = make_client(max_voxels=1000)
    volume, _ = ball_volume(rng, (16, 14, 6))
    files = [("query", ("q.nii.gz", nifti(volume)))] + support_files(rng, 1)
    _assert_error(client.post("/segment", files=files), 413, "too_large", "query")


def test_body_over_the_upload_limit_is_413(make_client, rng):
    client = make_client(max_upload_mb=0.01)
    query = rng.integers(0, 255, (200, 200), dtype=np.uint8)  # noise: ~40 kB as PNG
    _assert_error(client.post("/segment", files=_query(query) + support_files(rng, 1)), 413, "too_large")


def test_streamed_body_over_the_upload_limit_is_413(make_client):
    client = make_client(max_upload_mb=0.01)

    def chunks():  # no Content-Length: the limit must hold while the body streams
        yield b'--b\r\nContent-Disposition: form-data; name="query"; filename="q.png"\r\n\r\n'
        for _ in range(40):
            yield b"x" * 1024

    response = client.post("/segment", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    _assert_error(response, 413)


def test_volume_above_the_sync_limit_is_413(make_client, rng):
    client = make_client(sync_max_voxels=100)
    volume, _ = ball_volume(rng, (16, 14, 6))
    files = [("query", ("q.nii.gz", nifti(volume)))] + support_files(rng, 1)
    error = _assert_error(client.post("/segment", files=files), 413, "use_jobs", "query")
    assert "/jobs" in error["message"]


def test_empty_file_is_400(client, rng):
    files = _query(None, data=b"") + support_files(rng, 1)
    _assert_error(client.post("/segment", files=files), 400, field="query")


def test_mask_size_mismatch_is_400(client, rng):
    query, _ = disk_pair(rng)
    image, _ = disk_pair(rng, size=(40, 40))
    _, mask = disk_pair(rng, size=(30, 30))
    files = _query(query) + [("support_images", ("i.png", png(image))), ("support_masks", ("m.png", png(mask)))]
    _assert_error(client.post("/segment", files=files), 400, "invalid_input", "support_masks[0]")


def test_empty_support_masks_are_400(client, rng):
    query, _ = disk_pair(rng)
    image, mask = disk_pair(rng)
    files = _query(query) + [
        ("support_images", ("i.png", png(image))),
        ("support_masks", ("m.png", png(np.zeros_like(mask)))),
    ]
    _assert_error(client.post("/segment", files=files), 400, "invalid_input", "support_masks")


def test_colour_mask_is_400(client, rng):
    query, _ = disk_pair(rng)
    image, mask = disk_pair(rng)
    colour = np.stack([mask * 255, np.zeros_like(mask), mask * 10], axis=-1).astype(np.uint8)
    files = _query(query) + [("support_images", ("i.png", png(image))), ("support_masks", ("m.png", png(colour)))]
    _assert_error(client.post("/segment", files=files), 400, "invalid_input", "support_masks[0]")


def test_2d_query_with_3d_support_is_400(client, rng):
    query, _ = disk_pair(rng)
    volume, mask = ball_volume(rng, (16, 14, 6))
    files = _query(query) + [
        ("support_images", ("v.nii.gz", nifti(volume))),
        ("support_masks", ("m.nii.gz", nifti(mask))),
    ]
    _assert_error(client.post("/segment", files=files), 400, "invalid_input", "support_images[0]")


def test_unknown_prompt_is_404(client, rng):
    query, _ = disk_pair(rng)
    for prompt_id in ["0" * 32, "../../etc/passwd", "not-hex"]:
        _assert_error(
            client.post("/segment", files=_query(query), data={"prompt_id": prompt_id}),
            404,
            "prompt_not_found",
            "prompt_id",
        )


def test_damaged_files_are_4xx_never_500(client, rng):
    query, mask = disk_pair(rng)
    good_png, good_nii = png(query), nifti(ball_volume(rng, (8, 8, 4))[0])
    four_d = nifti(rng.random((6, 6, 3, 2)).astype(np.float32))
    damaged = [good_png[:40], good_png[:-30], good_nii[:60], good_nii[:-50], b"\x1f\x8b" + b"\x00" * 50,
               b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, four_d, b"II*\x00" + b"\xff" * 30, b"BM" + b"\x00" * 40]
    for data in damaged:
        for field in ("query", "support_images", "support_masks"):
            files = {"query": ("q", png(query)), "support_images": ("i", png(query)), "support_masks": ("m", png(mask))}
            files[field] = ("x", data)
            response = client.post("/segment", files=list(files.items()))
            assert 400 <= response.status_code < 500, (field, data[:12], response.text)
            assert response.json()["error"]["field"].startswith(field)
