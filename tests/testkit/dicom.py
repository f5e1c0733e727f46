"""Synthetic DICOM for the format tests: an anonymous CT series (one file per slice, full geometry), a zip of
it, and an enhanced multi-frame instance; pydicom's own test files for real-world headers."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

# rows along +y, columns along +x, slices along +z (the normal), in LPS patient coordinates
IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def pydicom_file(name: str) -> bytes:
    """A DICOM file shipped inside the pydicom wheel (offline), e.g. CT_small.dcm."""
    with open(get_testdata_file(name), "rb") as fh:
        return fh.read()


def _base(rows: int, cols: int, study: str, series: str, frame_of_reference: str,
          sop_class: str = CTImageStorage) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"II*\x00" + b"\0" * 124)  # TIFF-looking, as CT_small
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = "anon", "Anon^Test", "O", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", "", "", ""
    ds.Modality, ds.SeriesNumber, ds.Manufacturer = "CT", 1, "testkit"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def series(volume: np.ndarray, spacing=(0.7, 0.8), dz: float = 2.5, origin=(-40.0, -30.0, 10.0), iop=IOP,
           shuffle_seed: int | None = 0) -> list[bytes]:
    """(H, W, D) uint16 -> D single-frame CT files of one series, slice k at origin + k * dz * normal;
    returned in a shuffled order (``shuffle_seed`` None: in slice order)."""
    rows, cols, depth = volume.shape
    study, uid, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    normal = np.cross(iop[:3], iop[3:])
    files = []
    for k in range(depth):
        ds = _base(rows, cols, study, uid, frame_of_reference)
        ds.InstanceNumber = depth - k  # deliberately the opposite of the positions
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * dz * normal]
        ds.PixelSpacing, ds.SliceThickness = list(spacing), dz
        ds.PixelData = np.ascontiguousarray(volume[..., k].astype("<u2")).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files.append(buf.getvalue())
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(depth)
        while depth > 2 and (order == np.arange(depth)).all():
            order = np.roll(order, 1)
        files = [files[i] for i in order]
    return files


def zipped(files: list[bytes], extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, data in enumerate(files):
            archive.writestr(f"series/IM{i:04d}", data)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buf.getvalue()


def multiframe(volume: np.ndarray, spacing=(0.7, 0.8), dz: float = 2.5, origin=(-40.0, -30.0, 10.0)) -> bytes:
    """(H, W, D) uint16 -> one enhanced-style multi-frame instance (per-frame PlanePositionSequence), frames
    stored in reverse position order."""
    rows, cols, depth = volume.shape
    ds = _base(rows, cols, generate_uid(), generate_uid(), generate_uid(), EnhancedCTImageStorage)
    ds.NumberOfFrames = depth
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = list(IOP)
    measures.PixelSpacing, measures.SliceThickness = list(spacing), dz
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in reversed(range(depth)):
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * dz]
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    stored = np.moveaxis(volume[..., ::-1], -1, 0)  # (D, H, W), reversed
    ds.PixelData = np.ascontiguousarray(stored.astype("<u2")).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
