"""Clinical formats through the service (issue 15): pydicom's CT_small/MR_small segmented, a DICOM series as
repeated query parts or a zip (a zip bomb is a 413), DICOM SEG out, NRRD in and .seg.nrrd out, inline
label_names and labels_present in every answer."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
from testkit.dicom import pydicom_file, series, zipped
from testkit.inputs import ball_volume, disk_pair, nifti, png, read_nifti, support_files

from data.io import read_image, read_series
from data.io.nrrd_io import nrrd_bytes

RNG = np.random.default_rng(151)
VOLUME, BALL = ball_volume(RNG, shape=(16, 14, 4))
VOLUME16 = np.clip(VOLUME, 0, 4000).astype(np.uint16)


def _dicom_query(data: bytes) -> list[tuple]:
    return [("query", ("q.dcm", data, "application/dicom"))]


def _series_query(files: list[bytes]) -> list[tuple]:
    return [("query", (f"IM{i}", data, "application/dicom")) for i, data in enumerate(files)]


def _volume_support(n: int = 2) -> list[tuple]:
    files = []
    for _ in range(n):
        volume, ball = ball_volume(RNG, shape=(16, 14, 4))
        files += [("support_images", ("s.nii.gz", nifti(volume))), ("support_masks", ("m.nii.gz", nifti(ball * 2)))]
    return files


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_test_files_are_segmented(client, rng, name):
    data = pydicom_file(name)
    shape = pydicom.dcmread(io.BytesIO(data)).pixel_array.shape
    response = client.post("/segment", files=_dicom_query(data) + support_files(rng, 2, labels=(1, 2)),
                           data={"output": "json", "label_names": json.dumps({"1": "bone", "2": "soft tissue"})})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shape"] == list(shape) and body["labels"] == [1, 2]
    assert body["label_names"] == {"1": "bone", "2": "soft tissue"}
    assert [s["name"] for s in body["segments"]] == ["bone", "soft tissue"]
    mask = np.asarray(read_image(base64.b64decode(body["mask"])).array)
    assert body["labels_present"] == [int(v) for v in np.unique(mask) if v > 0]


def test_ct_small_to_dicom_seg_with_inline_label_names(client, rng):
    data = pydicom_file("CT_small.dcm")
    response = client.post("/segment", files=_dicom_query(data) + support_files(rng, 2, labels=(1, 3)),
                           data={"output": "dicom-seg", "label_names": '{"3": "vertebra"}'})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["content-disposition"].endswith('.dcm"')
    assert json.loads(response.headers["x-label-names"]) == {"1": "label 1", "3": "vertebra"}
    seg = hd.seg.segread(io.BytesIO(response.content))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["label 1", "vertebra"]
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "icseg"
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID


def test_a_series_in_repeated_query_parts_gives_nifti_with_its_affine_and_dicom_seg(client):
    files = series(VOLUME16)  # shuffled
    query = read_series(files)
    response = client.post("/segment", files=_series_query(files) + _volume_support(),
                           data={"label_names": '{"2": "ball"}'})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    image = read_nifti(response.content)
    assert image.shape == (16, 14, 4)
    np.testing.assert_allclose(image.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ query.affine)  # LPS -> RAS
    present = response.headers["x-labels-present"]
    assert present == ",".join(str(v) for v in np.unique(np.asarray(image.dataobj)) if v > 0)
    assert json.loads(response.headers["x-label-names"]) == {"2": "ball"}

    response = client.post("/segment", files=_series_query(files) + _volume_support(),
                           data={"output": "dicom-seg", "label_names": '{"2": "ball"}'})
    assert response.status_code == 200, response.text
    seg = hd.seg.segread(io.BytesIO(response.content))
    assert seg.number_of_segments == 1 and int(seg.NumberOfFrames) == 4
    assert seg.SegmentSequence[0].SegmentLabel == "ball"
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files}


def test_a_zipped_series_and_zipped_support_volumes(client):
    support = []
    for _ in range(2):
        volume, ball = ball_volume(RNG, shape=(16, 14, 4))
        support += [("support_images", ("s.zip", zipped(series(np.clip(volume, 0, 4000).astype(np.uint16))))),
                    ("support_masks", ("m.nii.gz", nifti(ball)))]
    response = client.post("/segment", files=_dicom_query(zipped(series(VOLUME16))) + support,
                           data={"output": "json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shape"] == [16, 14, 4] and body["labels"] == [1]


def test_a_zip_bomb_is_413(make_client, rng):
    client = make_client(max_voxels=64**3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM0", b"\0" * 128 + b"DICM" + b"\0" * (8 << 20))
    response = client.post("/segment", files=_dicom_query(buf.getvalue()) + support_files(rng, 1))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"


def test_a_mixed_series_is_refused_naming_the_part(client, rng):
    files = series(VOLUME16)[:2] + [png(disk_pair(rng)[0])]
    response = client.post("/segment", files=_series_query(files) + _volume_support())
    assert response.status_code == 415, response.text
    assert response.json()["error"]["field"] == "query[2]"


def test_dicom_seg_needs_a_dicom_query(client, rng):
    query, _ = disk_pair(rng)
    response = client.post("/segment", files=[("query", ("q.png", png(query)))] + support_files(rng, 1),
                           data={"output": "dicom-seg"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "output"


def test_label_names_must_name_support_labels(client, rng):
    query, _ = disk_pair(rng)
    response = client.post("/segment", files=[("query", ("q.png", png(query)))] + support_files(rng, 1),
                           data={"label_names": '{"5": "nothing"}'})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "label_names"


AFFINE = np.array([[0.0, 1.2, 0, 5.0], [-0.8, 0, 0, 7.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])


def test_nrrd_in_seg_nrrd_out_with_geometry_names_and_colours(client):
    support = []
    for _ in range(2):
        volume, ball = ball_volume(RNG, shape=(16, 14, 4))
        support += [("support_images", ("s.nrrd", nrrd_bytes(volume, AFFINE))),
                    ("support_masks", ("m.nrrd", nrrd_bytes(ball, AFFINE)))]
    response = client.post("/segment", files=[("query", ("q.nrrd", nrrd_bytes(VOLUME, AFFINE, space="LPS")))]
                           + support, data={"label_names": '{"1": "ball"}'})
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].endswith('.seg.nrrd"')
    back = read_image(response.content)
    np.testing.assert_allclose(back.affine, AFFINE)
    header = nrrd.read_header(io.BytesIO(response.content))
    assert header["space"] == "left-posterior-superior"
    if response.headers["x-labels-present"]:
        assert header["Segment0_Name"] == "ball" and header["Segment0_LabelValue"] == "1"


def test_a_nifti_job_carries_names_and_colours_in_its_metadata(client):
    query, _ = ball_volume(RNG, shape=(16, 14, 4))
    response = client.post("/jobs", files=[("query", ("q.nii.gz", nifti(query)))] + _volume_support(),
                           data={"label_names": '{"2": "ball"}'})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    for _ in range(300):
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert job["status"] == "done", job
    assert job["label_names"] == {"2": "ball"} and job["segments"] == [{"label": 2, "name": "ball",
                                                                         "colour": "#56b4e9"}]
    result = client.get(f"/jobs/{job_id}/result")
    mask = np.asarray(read_nifti(result.content).dataobj)
    assert job["labels_present"] == [int(v) for v in np.unique(mask) if v > 0]
    assert result.headers["x-labels-present"] == ",".join(map(str, job["labels_present"]))
