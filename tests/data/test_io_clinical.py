"""Clinical formats both ways (issue 15): pydicom's own files, DICOM series (files, zip, multi-frame) with their
affine, DICOM SEG read back with highdicom and pydicom, NRRD and .seg.nrrd round trips, label names."""

from __future__ import annotations

import io
import json
import zipfile

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
from testkit.dicom import multiframe, pydicom_file, series, zipped

from data.errors import InputError
from data.io import read_image, read_mask
from data.io.dicom_seg import Algorithm, dicom_seg_bytes
from data.io.nrrd_io import decode_nrrd, nrrd_bytes, seg_nrrd_bytes
from data.io.readers import read_series
from data.io.segments import label_colour, segments_for, sidecar_bytes

RNG = np.random.default_rng(15)
VOLUME = RNG.integers(0, 4000, size=(12, 10, 3), dtype=np.uint16)
ALGORITHM = Algorithm("icseg", "0.1.0", "tiny.safetensors")


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_files_with_tiff_looking_preambles_are_read_as_dicom(name):
    data = pydicom_file(name)
    assert data[:4] == b"II*\x00"
    image = read_image(data)
    assert image.format == "dicom" and image.kind == "image"
    np.testing.assert_array_equal(image.array, pydicom.dcmread(io.BytesIO(data)).pixel_array)


def _expected_affine(spacing=(0.7, 0.8), dz=2.5, origin=(-40.0, -30.0, 10.0)) -> np.ndarray:
    # rows run along y (column cosines) at PixelSpacing[0], columns along x at PixelSpacing[1]
    return np.array([[0, spacing[1], 0, origin[0]], [spacing[0], 0, 0, origin[1]], [0, 0, dz, origin[2]],
                     [0, 0, 0, 1]], dtype=float)


def test_a_shuffled_three_file_series_is_sorted_by_position_with_its_affine():
    files = series(VOLUME)  # shuffled, InstanceNumber reversed
    image = read_series(files)
    assert image.kind == "volume" and image.format == "dicom" and image.shape == (12, 10, 3)
    np.testing.assert_array_equal(image.array, VOLUME)
    np.testing.assert_allclose(image.affine, _expected_affine())
    # every voxel's world position is its slice's ImagePositionPatient + PixelSpacing steps
    for k, ds in enumerate(image.header):
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose((image.affine @ [2, 3, k, 1])[:3], ipp + [3 * 0.8, 2 * 0.7, 0])


def test_an_oblique_series_gets_the_normal_from_the_orientation():
    iop = (np.cos(0.3), np.sin(0.3), 0.0, 0.0, 0.0, -1.0)  # a rotated coronal plane
    image = read_series(series(VOLUME, iop=iop))
    normal = np.cross(iop[:3], iop[3:])
    np.testing.assert_allclose(image.affine[:3, 2], normal * 2.5, atol=1e-9)
    np.testing.assert_array_equal(image.array, VOLUME)


def test_a_zipped_series_and_a_multiframe_instance_give_the_same_volume():
    from_zip = read_image(zipped(series(VOLUME), extra={"README.txt": b"not dicom"}))
    from_frames = read_image(multiframe(VOLUME))
    for image in (from_zip, from_frames):
        assert image.kind == "volume"
        np.testing.assert_array_equal(image.array, VOLUME)
        np.testing.assert_allclose(image.affine, _expected_affine())


def test_a_zip_bomb_is_too_large_before_it_is_inflated():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.dcm", b"\0" * (8 << 20))  # 8 MiB of zeros: 8 KiB zipped
    with pytest.raises(InputError) as err:
        read_image(buf.getvalue(), max_voxels=64**3)
    assert err.value.code == "too_large"


@pytest.mark.parametrize(("mutate", "says"), [
    (lambda ds, k: setattr(ds, "SeriesInstanceUID", pydicom.uid.generate_uid()) if k == 1 else None, "series"),
    (lambda ds, k: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]) if k == 1 else None, "orientation"),
    (lambda ds, k: setattr(ds, "ImagePositionPatient", [-40.0, -30.0, 10.0 + 9.0 * k]) if k == 2 else None,
     "not uniform"),
    (lambda ds, k: setattr(ds, "ImagePositionPatient", [-40.0, -30.0, 10.0]), "position"),
])
def test_series_checks_name_what_is_wrong(mutate, says):
    files = []
    for k, data in enumerate(series(VOLUME, shuffle_seed=None)):
        ds = pydicom.dcmread(io.BytesIO(data))
        mutate(ds, k)
        buf = io.BytesIO()
        ds.save_as(buf)
        files.append(buf.getvalue())
    with pytest.raises(InputError, match=says):
        read_series(files)


def _seg_of(mask, query, labels=(1, 2, 3), names=None):
    return dicom_seg_bytes(mask, query, segments_for(labels, names), ALGORITHM)


def test_dicom_seg_of_a_series_reads_back_with_highdicom_and_pydicom():
    files = series(VOLUME)
    query = read_series(files)
    mask = np.zeros(query.shape, np.uint8)
    mask[2:6, 2:5, 0], mask[6:9, 4:8, 2] = 1, 3
    data = _seg_of(mask, query, names={"1": "liver", "3": "spleen"})
    seg = hd.seg.segread(io.BytesIO(data))
    assert seg.number_of_segments == 3 and int(seg.NumberOfFrames) == 3 * 3  # segments x slices, empty kept
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "label 2", "spleen"]
    assert seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "icseg" and algorithm.AlgorithmVersion == "0.1.0"
    assert "tiny.safetensors" in str(algorithm.AlgorithmParameters)
    sources = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID for f in files}
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == sources
    # the mask comes back at its source slices: segment numbers 1, 2, 3 stand for labels 1, 2, 3 here
    for k, source in enumerate(query.header):
        frames = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)
        np.testing.assert_array_equal(frames[0], mask[..., k])
    plain = pydicom.dcmread(io.BytesIO(data))
    assert plain.Modality == "SEG" and plain.SOPClassUID == pydicom.uid.SegmentationStorage
    assert plain.StudyInstanceUID == query.header[0].StudyInstanceUID


def test_dicom_seg_of_ct_small_references_it():
    data = pydicom_file("CT_small.dcm")
    query = read_image(data)
    mask = np.zeros(query.shape, np.uint8)
    mask[40:80, 30:90] = 2
    seg = hd.seg.segread(io.BytesIO(_seg_of(mask, query, labels=(2,), names={"2": "vertebra"})))
    assert seg.number_of_segments == 1 and int(seg.NumberOfFrames) == 1
    assert seg.SegmentSequence[0].SegmentLabel == "vertebra"
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert ref == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    np.testing.assert_array_equal(seg.get_volume().array[0, ..., 0], mask == 2)


def test_dicom_seg_of_a_multiframe_keeps_the_stored_frame_order():
    query = read_image(multiframe(VOLUME))
    mask = np.zeros(query.shape, np.uint8)
    mask[:, :, 0] = 1  # the lowest slice, stored last
    seg = hd.seg.segread(io.BytesIO(_seg_of(mask, query, labels=(1,))))
    pixels = seg.pixel_array  # (frames, H, W), one segment
    assert pixels.shape[0] == 3 and pixels[2].all() and not pixels[0].any()


def test_dicom_seg_needs_a_dicom_query():
    with pytest.raises(InputError, match="DICOM query"):
        dicom_seg_bytes(np.zeros((4, 4, 2), np.uint8), read_image(nrrd_bytes(np.zeros((4, 4, 2)))),
                        segments_for([1]), ALGORITHM)


AFFINE = np.array([[0.0, 1.5, 0, 12.0], [-0.9, 0, 0, -3.0], [0, 0, 2.0, 40.5], [0, 0, 0, 1]])


def test_nrrd_round_trip_keeps_geometry_and_segment_names_and_colours():
    volume = RNG.normal(size=(9, 7, 5)).astype(np.float32)
    query = read_image(nrrd_bytes(volume, AFFINE, space="LPS"))
    assert query.format == "nrrd" and query.shape == (9, 7, 5)
    np.testing.assert_array_equal(query.array, volume)
    np.testing.assert_allclose(query.affine, AFFINE)
    mask = (volume > 0.5).astype(np.uint8) * 2
    data = seg_nrrd_bytes(mask, query.affine, query.meta["space"], segments_for([1, 2], {"2": "tumour"}))
    back = read_mask(data)
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.affine, AFFINE)
    header = nrrd.read_header(io.BytesIO(data))
    assert header["space"] == "left-posterior-superior"
    assert header["Segment1_Name"] == "tumour" and header["Segment1_LabelValue"] == "2"
    assert [float(c) for c in header["Segment1_Color"].split()] == pytest.approx(
        [c / 255 for c in label_colour(2)], abs=1e-5)


def test_a_gzip_bomb_in_an_nrrd_stops_at_the_declared_size():
    import gzip

    head = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: gzip\n\n"
    image = decode_nrrd(head + gzip.compress(b"\1" * (16 << 20)), None, "query")
    assert image.shape == (4, 4, 4) and image.array.all()
    with pytest.raises(InputError) as err:
        decode_nrrd(head.replace(b"4 4 4", b"1000 1000 1000"), 64**3, "query")
    assert err.value.code == "too_large"


def test_the_sidecar_names_and_colours_every_label():
    body = json.loads(sidecar_bytes([1, 2, 7], [2], {"2": "kidney"}))
    assert body["labels_present"] == [2]
    assert body["labels"][1] == {"label": 2, "name": "kidney", "colour": "#56b4e9"}
    assert [item["name"] for item in body["labels"]] == ["label 1", "kidney", "label 7"]
