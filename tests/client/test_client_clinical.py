"""The SDK and clinical formats (issue 15): a DICOM series as a list of files to a DICOM SEG saved as .dcm,
NRRD to .seg.nrrd, inline label_names and labels_present, a NIfTI result's JSON sidecar."""

from __future__ import annotations

import io
import json

import highdicom as hd
import numpy as np
import pytest
from testkit.dicom import pydicom_file, series
from testkit.inputs import ball_volume, disk_pair

from data.io import read_image
from data.io.nrrd_io import nrrd_bytes

RNG = np.random.default_rng(152)


def _volume_pairs(n=2, shape=(16, 14, 5)):
    pairs = [ball_volume(RNG, shape=shape) for _ in range(n)]
    return [v for v, _ in pairs], [m * 2 for _, m in pairs]


def test_a_series_as_a_list_of_files_to_a_dicom_seg_saved_as_dcm(client, tmp_path):
    volume, _ = ball_volume(RNG, shape=(16, 14, 5))
    files = series(np.clip(volume, 0, 4000).astype(np.uint16))
    images, masks = _volume_pairs()
    result = client.segment(files, images, masks, label_names={2: "ball"}, output="dicom-seg")
    assert result.format == "dicom-seg" and result.extension == ".dcm"
    assert result.label_names == {2: "ball"} and result.segments[0]["name"] == "ball"
    path = result.save(tmp_path / "seg")
    assert path.name == "seg.dcm"
    seg = hd.seg.segread(path)
    assert seg.SegmentSequence[0].SegmentLabel == "ball" and int(seg.NumberOfFrames) == 5
    with pytest.raises(ValueError, match=".dcm"):
        result.save(tmp_path / "seg.png")


def test_ct_small_with_inline_names_says_which_labels_are_present(client):
    query = pydicom_file("CT_small.dcm")
    pairs = [disk_pair(RNG, size=(64, 64), labels=(1, 2)) for _ in range(2)]
    result = client.segment(query, [p[0] for p in pairs], [p[1] for p in pairs], label_names={1: "a", 2: "b"})
    assert result.shape == (128, 128) and result.labels == [1, 2]
    assert result.labels_present == [int(v) for v in np.unique(result.mask) if v > 0]
    assert [s["name"] for s in result.segments] == ["a", "b"]


def test_nrrd_to_seg_nrrd_keeps_geometry(client, tmp_path):
    affine = np.array([[0.0, 1.2, 0, 5.0], [-0.8, 0, 0, 7.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]])
    volume, _ = ball_volume(RNG, shape=(16, 14, 5))
    images, masks = _volume_pairs()
    result = client.segment(nrrd_bytes(volume, affine), images, masks, label_names={2: "ball"})
    assert result.format == "nrrd"
    path = result.save(tmp_path / "mask.seg.nrrd")
    back = read_image(path)
    np.testing.assert_allclose(back.affine, affine)
    np.testing.assert_array_equal(back.array, result.mask)


def test_a_nifti_result_is_saved_with_a_json_sidecar(client, tmp_path):
    volume, _ = ball_volume(RNG, shape=(16, 14, 5))
    images, masks = _volume_pairs()
    result = client.segment(volume, images, masks, label_names={2: "ball"})
    result.save(tmp_path / "mask.nii.gz")
    sidecar = json.loads((tmp_path / "mask.json").read_text())
    assert sidecar["labels"] == [{"label": 2, "name": "ball", "colour": "#56b4e9"}]
    assert sidecar["labels_present"] == result.labels_present


def test_output_is_checked_before_sending(client):
    with pytest.raises(Exception, match="output"):
        client.segment(b"x" * 10, [np.zeros((4, 4))], [np.zeros((4, 4), np.uint8)], output="rtstruct")


def test_dicom_seg_mask_says_to_use_highdicom(client):
    files = series(np.zeros((8, 8, 5), np.uint16) + 5)
    images, masks = _volume_pairs(shape=(8, 8, 5))
    result = client.segment(files, images, masks, output="dicom-seg")
    with pytest.raises(ValueError, match="highdicom"):
        _ = result.mask
    assert hd.seg.segread(io.BytesIO(result.data)).number_of_segments == 1
