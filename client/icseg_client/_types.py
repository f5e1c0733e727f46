"""What calls return: ``SegmentResult``, ``Prompt``, ``Job``."""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._inputs import Upload, decode_2d, decode_nifti, decode_upload
from ._overlay import overlay as draw_overlay

_EXTENSION = {"image/png": ".png", "image/tiff": ".tif", "application/gzip": ".nii.gz", "application/dicom": ".dcm",
              "application/x-nrrd": ".seg.nrrd"}
_LOSSLESS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


@dataclass(repr=False)
class SegmentResult:
    """A mask from the service.

    Attributes:
        data: the mask file as served: PNG (TIFF for TIFF queries) for 2D queries, gzipped NIfTI with the
            query's affine and header for volumes.
        media_type: ``image/png``, ``image/tiff``, ``application/gzip`` (NIfTI), ``application/dicom`` (a DICOM
            SEG, ``output="dicom-seg"``) or ``application/x-nrrd`` (a ``.seg.nrrd`` for NRRD queries).
        labels: the label values segmented (every label of the support set), ascending.
        label_names: label value -> name: ``label_names=`` or the stored prompt's ("label <v>" unnamed).
        labels_present: the label values the mask holds.
        segments: every support label as ``{"label", "name", "colour": "#rrggbb"}``.
        shape: the mask's shape: (H, W) or (H, W, D), the query's.
        timings: milliseconds: the service's ``decode``, ``model``, ``encode`` (jobs: ``queued``, ``run``)
            and the client's ``round_trip``.
        probs: with ``probs=True``: (K, H, W) float32 in [0, 1] (8-bit precision) for 2D queries,
            (K, H, W, D) float32 for volumes; one per label, in the order of ``labels``.
        query: the query as it was sent (for ``overlay``).
        volume: volumes: what ran and what it cost, the service's ``volume`` object: ``slices``, ``skipped``
            (slice indices set to background without running the model), ``tasks``, ``support_slices``,
            ``skip_margin``, ``cascade``.
        selection: 2D support sets (``segment``, jobs): which items the query used, the service's ``selection``:
            ``select`` ("all", "similar", "random"), ``support_size`` and ``pool`` (the items it chose from).
        confidence: label value -> confidence in [0, 1] (0 for a label the mask does not hold).
        low_confidence: some label's confidence is below the calibrated threshold
            (``low_confidence_labels``: which).
        mismatch: ``{"score", "threshold", "flagged"}``: ``flagged`` True when the query looks unlike the
            examples, None when the server's weights are uncalibrated.
        calibrated: whether the server's thresholds were calibrated for its weights (None: an older server).
        warnings: e.g. "the query looks unlike the examples", "low confidence for label 2".
        uncertainty: with ``uncertainty=True``: (K, H, W) float32 in [0, 1] (8-bit precision) for 2D queries,
            (K, H, W, D) float32 for volumes: 2 x the std of the ensemble members' probabilities, or the
            binary entropy when one member ran.
    """

    data: bytes
    media_type: str
    labels: list[int]
    shape: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)
    probs: np.ndarray | None = None
    query: Upload | None = None
    volume: dict | None = None
    labels_present: list[int] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)
    selection: dict | None = None
    confidence: dict[int, float] = field(default_factory=dict)
    low_confidence: bool = False
    low_confidence_labels: list[int] = field(default_factory=list)
    mismatch: dict | None = None
    calibrated: bool | None = None
    warnings: list[str] = field(default_factory=list)
    uncertainty: np.ndarray | None = None

    @property
    def format(self) -> str:
        """"png", "tiff", "nifti", "dicom-seg" or "nrrd": the kind of file ``data`` is."""
        if self.media_type == "application/dicom" or self.data[128:132] == b"DICM":
            return "dicom-seg"
        if self.media_type == "application/x-nrrd" or self.data[:4] == b"NRRD":
            return "nrrd"
        if self.media_type == "application/gzip" or self.data[:2] == b"\x1f\x8b":
            return "nifti"
        return "tiff" if self.media_type == "image/tiff" else "png"

    @property
    def is_volume(self) -> bool:
        return self.format == "nifti"

    @property
    def extension(self) -> str:
        """The served file's extension: ".png", ".tif" or ".nii.gz"."""
        return _EXTENSION.get(self.media_type, ".nii.gz" if self.is_volume else ".png")

    @cached_property
    def nifti(self) -> Any:
        """The mask as a ``nibabel.Nifti1Image`` (volumes only; needs nibabel)."""
        if not self.is_volume:
            raise ValueError("the mask of a 2D query is a PNG/TIFF; use .mask")
        return decode_nifti(self.data)

    @cached_property
    def mask(self) -> np.ndarray:
        """The label map: (H, W) or (H, W, D) uint8 (uint16 above 255 labels), 0 background. A DICOM SEG is
        read with highdicom (``highdicom.seg.segread(io.BytesIO(result.data))``); a .seg.nrrd needs pynrrd."""
        if self.format == "dicom-seg":
            raise ValueError("the result is a DICOM SEG: read it with highdicom (highdicom.seg.segread), or save it "
                             "as .dcm")
        if self.format == "nrrd":
            try:
                import nrrd
            except ImportError:
                raise ValueError("a .seg.nrrd result needs pynrrd to decode: pip install pynrrd") from None
            stream = io.BytesIO(self.data)
            return np.asarray(nrrd.read_data(nrrd.read_header(stream), stream, index_order="F"))
        if self.is_volume:
            return np.asarray(self.nifti.dataobj)
        return decode_2d(self.data, mask=True)

    @property
    def affine(self) -> np.ndarray | None:
        """(4, 4) voxel-to-world matrix of a volume's mask (the query's), None for 2D."""
        return np.asarray(self.nifti.affine) if self.is_volume else None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask file.

        Args:
            path: the file to write. Without an extension the served one is added (.png, .tif, .nii.gz, .dcm
                for a DICOM SEG, .seg.nrrd). 2D masks may be saved as .png, .tif or .bmp (lossless); volumes as
                .nii.gz or .nii, with a JSON sidecar of the label names and colours beside them (mask.json).

        Returns:
            The path written.
        """
        path = Path(path).expanduser()
        served = self.extension
        name = path.name.lower()
        if not path.suffix:
            path = path.with_name(path.name + served)
            payload = self.data
        elif self.format in ("dicom-seg", "nrrd"):
            if not name.endswith(served):
                raise ValueError(f"this result is a {self.format} file: save it as {served}, not {path.name}")
            payload = self.data
        elif self.is_volume:
            if name.endswith(".nii.gz"):
                payload = self.data
            elif name.endswith(".nii"):
                payload = gzip.decompress(self.data)
            else:
                raise ValueError(f"a volume's mask is NIfTI: save it as .nii.gz or .nii, not {path.name}")
        elif name.endswith(served):
            payload = self.data
        elif path.suffix.lower() in _LOSSLESS:
            buf = io.BytesIO()
            Image.fromarray(self.mask).save(buf, format=_LOSSLESS[path.suffix.lower()])
            payload = buf.getvalue()
        else:
            raise ValueError(f"masks are saved losslessly: use .png, .tif or .bmp, not {path.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        if self.is_volume and self.segments:  # NIfTI holds no names: a JSON sidecar beside it (mask.json)
            stem = path.name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem
            sidecar = {"labels": self.segments, "labels_present": self.labels_present}
            path.with_name(stem + ".json").write_text(json.dumps(sidecar, indent=1))
        return path

    def overlay(self, *, slice_index: int | None = None, axis: int = 2, thickness: int | None = None,
                fill: float = 0.0) -> np.ndarray:
        """The query as RGB with each label's contour in a colour.

        Args:
            slice_index: volumes: the slice along ``axis`` to draw; default: the one with most foreground.
            axis: volumes: the slicing axis.
            thickness: contour width in pixels (default grows with the image).
            fill: opacity of a tint inside each region (0: contours only).

        Returns:
            (H, W, 3) uint8; for a volume, one slice in array order (not a viewer's display orientation).
        """
        if self.query is None:
            raise ValueError("this result does not hold its query; use icseg_client.overlay(image, mask)")
        image, mask = decode_upload(self.query), self.mask
        if image.shape[: mask.ndim] != mask.shape:
            raise ValueError(f"the query {image.shape} and the mask {mask.shape} differ in shape")
        if mask.ndim == 3:
            if slice_index is None:
                slice_index = int(np.argmax(np.moveaxis(mask != 0, axis, 0).reshape(mask.shape[axis], -1).sum(1)))
            image, mask = np.take(image, slice_index, axis=axis), np.take(mask, slice_index, axis=axis)
        return draw_overlay(image, mask, self.labels, thickness=thickness, fill=fill)

    def __repr__(self) -> str:
        names = f", label_names={self.label_names}" if self.label_names else ""
        return (f"SegmentResult(shape={self.shape}, labels={self.labels}{names}, media_type={self.media_type!r}, "
                f"timings={self.timings})")


@dataclass(frozen=True)
class Prompt:
    """A support set stored on the service (metadata only; the pixels stay on the server).

    Attributes:
        id: 32 hex digits; pass the Prompt or its id as ``segment(query, prompt_id=...)``.
        labels: the label values it segments.
        support_size: support items S.
        network_size: the side N it was prepared at.
        created_at, expires_at: unix times (``expires_at`` None: never).
        bytes: stored size.
    """

    id: str
    name: str | None
    labels: list[int]
    label_names: dict[int, str]
    support_size: int
    network_size: int
    created_at: float
    expires_at: float | None
    bytes: int

    @classmethod
    def from_json(cls, body: dict) -> Prompt:
        return cls(
            id=body["id"], name=body.get("name"), labels=[int(v) for v in body.get("labels", [])],
            label_names={int(k): v for k, v in (body.get("label_names") or {}).items()},
            support_size=int(body.get("support_size", 0)), network_size=int(body.get("network_size", 0)),
            created_at=float(body.get("created_at", 0.0)), expires_at=body.get("expires_at"),
            bytes=int(body.get("bytes", 0)),
        )


@dataclass(frozen=True)
class Job:
    """A background segmentation (a volume) on the service.

    Attributes:
        status: "queued", "running", "done", "failed" or "cancelled".
        done, total: progress in slices.
        labels: the support set's label values, those the mask can hold (None from an older service).
        error: the service's ``{"code", "message", "field"}`` for a failed job.
        selection: 2D support sets: ``{"select", "support_size", "pool"}``, which items the query uses (from
            the submission on; None for 3D support or an older service).
    """

    id: str
    status: str
    done: int
    total: int
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: dict | None = None
    labels: list[int] | None = None
    volume: dict | None = None  # once done: slices, skipped, tasks, support_slices, skip_margin, cascade
    probs: str | None = None  # once done with probs=True: the path of the probabilities NIfTI
    labels_present: list[int] | None = None  # once done: the label values the mask holds
    label_names: dict | None = None  # once done: every support label's name ("label <v>" if unnamed)
    segments: list[dict] | None = None  # once done: every support label, {"label", "name", "colour"}
    confidence: dict | None = None  # once done: label value -> confidence, and the rest of how sure it is:
    low_confidence: bool | None = None
    low_confidence_labels: list[int] | None = None
    mismatch: dict | None = None
    calibrated: bool | None = None
    warnings: list[str] | None = None
    uncertainty: str | None = None  # once done with uncertainty=True: the path of the uncertainty NIfTI
    selection: dict | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @classmethod
    def from_json(cls, body: dict) -> Job:
        progress = body.get("progress") or {}
        return cls(id=body["id"], status=body["status"], done=int(progress.get("done", 0)),
                   total=int(progress.get("total", 0)), created_at=float(body.get("created_at") or 0.0),
                   started_at=body.get("started_at"), finished_at=body.get("finished_at"), error=body.get("error"),
                   labels=None if body.get("labels") is None else [int(v) for v in body["labels"]],
                   volume=body.get("volume"), probs=body.get("probs"), labels_present=body.get("labels_present"),
                   label_names=body.get("label_names"), segments=body.get("segments"), selection=body.get("selection"),
                   **{key: body.get(key) for key in ("confidence", "low_confidence", "low_confidence_labels",
                                                     "mismatch", "calibrated", "warnings", "uncertainty")})
